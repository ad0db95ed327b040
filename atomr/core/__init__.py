"""Core values of atomr: deployments, requests, chunks, results, errors and the runner interface.

Pure values with no actors and no I/O beyond reading a YAML file.
"""

from atomr.core.deployment import Deployment, Limits, Placement, load_deployments
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
    "load_deployments",
]
