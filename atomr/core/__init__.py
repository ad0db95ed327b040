"""Core of atomr: values, errors, the runner protocol and the pure policies.

Deployments, requests, chunks, results and usage; the `InferenceError` taxonomy; the
`ModelRunner` interface; and the decisions that need no process: routing choice (`routing`),
the cascade rule (`cascade`), the fair queue (`fair_queue`), rate-limit arithmetic
(`ratelimit`), tenants (`tenants`), routes and cascades as values (`policies`).

May import: nothing of atomr outside `atomr.core`. No I/O, no Thespian, no engine names.
"""

from atomr.core.deployment import Deployment, Limits, Placement
from atomr.core.errors import ErrorInfo, InferenceError
from atomr.core.runner import ModelRunner, RunnerCapabilities
from atomr.core.types import (
    Chunk,
    InferenceRequest,
    InferenceResult,
    Message,
    SamplingParams,
    TokenLogprob,
    Usage,
)

__all__ = [
    "Chunk",
    "Deployment",
    "ErrorInfo",
    "InferenceError",
    "InferenceRequest",
    "InferenceResult",
    "Limits",
    "Message",
    "ModelRunner",
    "Placement",
    "RunnerCapabilities",
    "SamplingParams",
    "TokenLogprob",
    "Usage",
]
