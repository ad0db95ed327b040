"""atomr: one interface for local inference engines and remote LLM APIs, on Thespian actors.

Importing `atomr` is cheap: the values and errors come from `atomr.core`; `Client` (which loads
Thespian and the actor messages) and `load_deployments` (the YAML loader and runtime catalog) are
loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from atomr.core import (
    Chunk,
    Deployment,
    InferenceError,
    InferenceRequest,
    InferenceResult,
    Message,
    SamplingParams,
    Usage,
)
from atomr.core.errors import (
    AuthError,
    CircuitOpenError,
    ConfigError,
    ContextLengthError,
    InferenceTimeoutError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    RunnerCrashedError,
    UnavailableError,
)

if TYPE_CHECKING:
    from atomr.client import Client
    from atomr.config import load_deployments

_LAZY = {"Client": "atomr.client", "load_deployments": "atomr.config"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'atomr' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "AuthError",
    "Chunk",
    "CircuitOpenError",
    "Client",
    "ConfigError",
    "ContextLengthError",
    "Deployment",
    "InferenceError",
    "InferenceRequest",
    "InferenceResult",
    "InferenceTimeoutError",
    "InternalError",
    "InvalidRequestError",
    "Message",
    "NotFoundError",
    "OverloadedError",
    "RateLimitedError",
    "RunnerCrashedError",
    "SamplingParams",
    "UnavailableError",
    "Usage",
    "load_deployments",
]
