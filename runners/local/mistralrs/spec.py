"""The `mistralrs` runtime, described without importing mistral.rs.

It reads the same Hugging Face folders as vLLM, so it is never inferred from a folder: name it
with `runtime: mistralrs`.
"""

from __future__ import annotations

from typing import Literal

from atomr.runners.spec import EngineOptions, RuntimeSpec
from pydantic import Field


class MistralRsOptions(EngineOptions):
    """`engine:` options of a `mistralrs` deployment (see `atomr.runners.local.mistralrs.runner`)."""

    arch: str | None = Field(None, min_length=1)  # a mistral.rs architecture name, checked at load
    dtype: Literal["auto", "f32", "f16", "bf16"] = "auto"


SPEC = RuntimeSpec(
    name="mistralrs",
    runner="atomr.runners.local.mistralrs.runner:MistralRsRunner",
    local=True,
    package="mistralrs",
    extra="mistralrs",
    options=MistralRsOptions,
)
