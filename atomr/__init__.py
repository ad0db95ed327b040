"""atomr: one interface for local inference engines and remote LLM APIs, on Thespian actors."""

from atomr.client import Client
from atomr.core import (
    Chunk,
    Deployment,
    InferenceError,
    InferenceRequest,
    InferenceResult,
    Message,
    SamplingParams,
    Usage,
    load_deployments,
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
