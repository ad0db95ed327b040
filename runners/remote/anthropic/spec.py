"""The `anthropic` runtime, described without importing its SDK."""

from __future__ import annotations

from atomr.runners.remote.options import RemoteOptions
from atomr.runners.spec import RuntimeSpec

SPEC = RuntimeSpec(
    name="anthropic",
    runner="atomr.runners.remote.anthropic.runner:AnthropicRunner",
    local=False,
    package="anthropic",
    extra="remote",
    prefixes=("anthropic",),
    options=RemoteOptions,
)
