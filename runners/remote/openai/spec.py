"""The `openai` runtime, described without importing its SDK."""

from __future__ import annotations

from atomr.runners.remote.options import RemoteOptions
from atomr.runners.spec import RuntimeSpec

SPEC = RuntimeSpec(
    name="openai",
    runner="atomr.runners.remote.openai.runner:OpenAIRunner",
    local=False,
    package="openai",
    extra="remote",
    prefixes=("openai",),
    options=RemoteOptions,
)
