"""The `gemini` runtime, described without importing its SDK."""

from __future__ import annotations

from atomr.runners.remote.options import RemoteOptions
from atomr.runners.spec import RuntimeSpec

SPEC = RuntimeSpec(
    name="gemini",
    runner="atomr.runners.remote.gemini.runner:GeminiRunner",
    local=False,
    package="google.genai",
    extra="remote",
    prefixes=("gemini", "google"),
    options=RemoteOptions,
)
