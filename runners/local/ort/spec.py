"""The `ort` runtime (ONNX Runtime GenAI) and the `ort-embed` runtime (text-embedding models on
plain ONNX Runtime), described without importing either engine.

Two runtimes, not one: a runtime names one runner class (`RuntimeSpec.runner`, whose
capabilities are read before any model is loaded) and one package, and a generative ORT GenAI
export and an embedding encoder share neither. A model folder says which it is
(`genai_config.json` or `embedding_config.json`), so `model:` alone picks the runtime.
"""

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


class OrtEmbeddingOptions(EngineOptions):
    """`engine:` options of an `ort-embed` deployment (see `atomr.runners.local.ort.embedding`)."""

    max_batch_size: Annotated[int, Field(strict=True, ge=1, le=256)] = 32
    max_batch_inputs: Annotated[int, Field(strict=True, ge=1, le=65_536)] = 2048
    max_wait_ms: Annotated[int, Field(strict=True, ge=0, le=10_000)] = 5
    intra_op_threads: Annotated[int, Field(strict=True, ge=1, le=256)] = 1


def embedding_folder(path: Path) -> Path | None:
    """The folder holding `embedding_config.json`: `path` itself or its `onnx/` subfolder."""
    for candidate in (path, path / "onnx"):
        if (candidate / "embedding_config.json").is_file():
            return candidate
    return None


def _recognise(path: Path) -> bool:
    return (path / "genai_config.json").is_file()


def _model_files(path: Path) -> str | None:
    if ort_folder(path) is not None:
        return None
    if embedding_folder(path) is not None:
        return f"{path} is a text-embedding model: serve it with runtime ort-embed (or name no runtime)"
    return f"{path} holds no genai_config.json (not an ORT GenAI model)"


def _embedding_files(path: Path) -> str | None:
    folder = embedding_folder(path)
    if folder is None:
        return f"{path} holds no embedding_config.json (not an ONNX text-embedding model)"
    missing = [name for name in ("model.onnx", "tokenizer.json") if not (folder / name).is_file()]
    return f"{folder} lacks {', '.join(missing)}" if missing else None


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

EMBEDDING_SPEC = RuntimeSpec(
    name="ort-embed",
    runner="atomr.runners.local.ort.embedding:OrtEmbeddingRunner",
    local=True,
    package="onnxruntime",
    extra="ort",
    builtin=True,
    recognise=lambda path: embedding_folder(path) is not None,
    model_files=_embedding_files,
    options=OrtEmbeddingOptions,
)
