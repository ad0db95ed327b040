"""The `ort` runtime (ONNX Runtime GenAI), described without importing the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from atomr.runners.spec import EngineOptions, RuntimeSpec
from pydantic import Field


class OrtOptions(EngineOptions):
    """`engine:` options of an `ort` deployment (see `atomr.runners.local.ort.runner`)."""

    scheduler: Literal["batch", "engine", "generators"] = "batch"
    max_batch_size: Annotated[int, Field(strict=True, ge=1, le=256)] = 16
    max_wait_ms: Annotated[int, Field(strict=True, ge=0, le=10_000)] = 5
    intra_op_threads: Annotated[int, Field(strict=True, ge=1, le=256)] = 1


def ort_folder(path: Path) -> Path | None:
    """The folder holding `genai_config.json`: `path` itself or its `onnx/` subfolder."""
    for candidate in (path, path / "onnx"):
        if (candidate / "genai_config.json").is_file():
            return candidate
    return None


def _recognise(path: Path) -> bool:
    return (path / "genai_config.json").is_file()


def _model_files(path: Path) -> str | None:
    return None if ort_folder(path) is not None else f"{path} holds no genai_config.json (not an ORT GenAI model)"


SPEC = RuntimeSpec(
    name="ort",
    runner="atomr.runners.local.ort.runner:OrtRunner",
    local=True,
    package="onnxruntime_genai",
    extra="ort",
    builtin=True,
    recognise=_recognise,
    model_files=_model_files,
    options=OrtOptions,
)
