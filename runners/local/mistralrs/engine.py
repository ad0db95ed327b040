"""The mistral.rs engine: importing it, opening a `mistralrs.Runner` on a checkpoint folder, and
its errors (load and request failures) as atomr's InferenceErrors, without the Rust backtrace.

`mistralrs` is imported by `import_mistralrs`, never when this module is imported.
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

from atomr.core.errors import (
    ConfigError,
    ContextLengthError,
    InferenceError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
)
from atomr.core.types import InferenceRequest

MODEL_NAME = "default"  # mistral.rs ignores the request's model name with one model loaded
_BACKTRACE = re.compile(r"\n\s*0: ")


def import_mistralrs() -> Any:
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    try:
        return importlib.import_module("mistralrs")
    except ImportError as exc:
        raise InternalError(
            f"the mistralrs runtime needs the mistralrs package (pip install 'atomr[mistralrs]'): {exc}"
        ) from None


def _engine_message(exc: BaseException) -> str:
    """mistral.rs's error text without the Rust backtrace it appends."""
    text = str(exc).strip() or type(exc).__name__
    return _BACKTRACE.split(text, maxsplit=1)[0].strip()


def load_error(exc: BaseException, folder: Path) -> InferenceError:
    if isinstance(exc, InferenceError):
        return exc
    message = _engine_message(exc)
    if "was not found" in message or "does not exist" in message:
        return NotFoundError(f"mistral.rs could not load {folder}: {message}", field="model")
    return InternalError(f"mistral.rs could not load {folder}: {message}")


def open_runner(mr: Any, folder: Path, arch: str | None, dtype: str) -> Any:
    """A `mistralrs.Runner` for the checkpoint in `folder` (local files only, no hub token)."""
    architecture = None
    if arch is not None:  # pyo3 enums: look members up by name (case-insensitive)
        by_name = {name.lower(): name for name in dir(mr.Architecture) if not name.startswith("_")}
        name = by_name.get(arch.lower())
        if name is None:
            raise ConfigError(
                f"engine.arch {arch!r} is not a mistral.rs architecture; known: {', '.join(sorted(by_name))}",
                field="engine.arch",
            )
        architecture = getattr(mr.Architecture, name)
    model_dtype = getattr(mr.ModelDType, {"auto": "Auto", "f32": "F32", "f16": "F16", "bf16": "BF16"}[dtype])
    which = mr.Which.Plain(model_id=str(folder), arch=architecture, dtype=model_dtype)
    try:
        return mr.Runner(which=which, token_source="none")
    except BaseException as exc:  # noqa: BLE001 - Rust panics arrive as BaseException
        raise load_error(exc, folder) from None


def request_error(
    exc: BaseException, request: InferenceRequest, context_length: int, grammar_field: str | None = None
) -> InferenceError:
    """An engine exception raised while serving `request`, as an InferenceError (`grammar_field`:
    the request field its grammar came from, named when mistral.rs refuses the grammar)."""
    if isinstance(exc, InferenceError):
        return exc
    message = _engine_message(exc)
    if grammar_field is not None and "Invalid grammar" in message:
        return InvalidRequestError(f"mistral.rs cannot compile it: {message}", field=grammar_field)
    if "sequence length is greater than" in message:  # mistral.rs refusing a prompt longer than the context
        return ContextLengthError(
            f"the prompt is longer than the model's context length of {context_length} ({message})",
            field="messages" if request.messages is not None else "prompt",
            details={"context_length": context_length},
        )
    return InternalError(f"mistral.rs failed: {message}")
