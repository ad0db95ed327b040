"""The `litellm` runtime, described without importing its SDK."""

from __future__ import annotations

from atomr.runners.remote.options import RemoteOptions
from atomr.runners.spec import RuntimeSpec

SPEC = RuntimeSpec(
    name="litellm",
    runner="atomr.runners.remote.litellm.runner:LiteLLMRunner",
    local=False,
    package="litellm",
    extra="remote",
    prefixes=("litellm",),
    options=RemoteOptions,
)
