"""The `tensorrt` runtime (TensorRT-LLM), described without importing it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, Literal

from atomr.runners.spec import EngineOptions, RuntimeSpec
from pydantic import Field, field_validator

PositiveInt = Annotated[int, Field(strict=True, ge=1)]


class TensorRTOptions(EngineOptions):
    """`engine:` options of a `tensorrt` deployment (see `atomr.runners.local.tensorrt.runner`)."""

    backend: Literal["auto", "pytorch", "tensorrt"] = "auto"
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    max_seq_len: PositiveInt | None = None
    max_batch_size: PositiveInt | None = None
    max_num_tokens: PositiveInt | None = None
    tensor_parallel_size: PositiveInt = 1
    kv_cache_free_gpu_memory_fraction: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    gather_generation_logits: Annotated[bool, Field(strict=True)] = False

    @field_validator("kv_cache_free_gpu_memory_fraction", mode="before")
    @classmethod
    def _a_number(cls, v: Any) -> Any:
        if isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)):
            raise ValueError("must be a number in (0, 1]")
        return v

    def llm_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `LLM(...)` besides model and backend (KV cache config excluded)."""
        kwargs: dict[str, Any] = {"dtype": self.dtype, "tensor_parallel_size": self.tensor_parallel_size}
        for name in ("max_seq_len", "max_batch_size", "max_num_tokens"):
            if getattr(self, name) is not None:
                kwargs[name] = getattr(self, name)
        if self.gather_generation_logits:
            kwargs["gather_generation_logits"] = True
        return kwargs


def is_trt_engine_dir(folder: Path) -> bool:
    """Whether `folder` holds a built TensorRT-LLM engine (rather than a Hugging Face checkpoint)."""
    if any(folder.glob("*.engine")):
        return True
    try:
        return "build_config" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


SPEC = RuntimeSpec(
    name="tensorrt",
    runner="atomr.runners.local.tensorrt.runner:TensorRTRunner",
    local=True,
    package="tensorrt_llm",
    extra="tensorrt",
    recognise=is_trt_engine_dir,
    options=TensorRTOptions,
    hint="pip install 'atomr[tensorrt]' on a machine with an NVIDIA GPU",
)
