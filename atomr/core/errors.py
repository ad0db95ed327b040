"""The InferenceError taxonomy: every failure a caller can see, as one exception family.

Each kind says whether a retry can help and which HTTP status it maps to. Errors cross process
boundaries as plain `ErrorInfo` values (pickle-safe, no tracebacks) and are rebuilt into the
matching exception class on the caller's side with `InferenceError.from_info`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """Wire form of an error: what went wrong, where, and whether to retry."""

    kind: str
    message: str
    field: str | None = None
    retry_after: float | None = None
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def retryable(self) -> bool:
        """Whether another attempt (elsewhere, or later) may succeed."""
        cls = ERROR_CLASSES.get(self.kind)
        return cls is not None and cls.retryable


class InferenceError(Exception):
    """Base of every error atomr reports to a caller."""

    kind: ClassVar[str] = "internal"
    retryable: ClassVar[bool] = False
    http_status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        retry_after: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after = retry_after
        self.details = dict(details or {})

    def __str__(self) -> str:
        where = f" (field: {self.field})" if self.field else ""
        return f"{self.kind}: {self.message}{where}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.info(),))

    def info(self) -> ErrorInfo:
        return ErrorInfo(self.kind, self.message, self.field, self.retry_after, self.details)

    @staticmethod
    def from_info(info: ErrorInfo) -> InferenceError:
        cls = ERROR_CLASSES.get(info.kind, InternalError)
        return cls(info.message, field=info.field, retry_after=info.retry_after, details=info.details)


QUOTE_CHARS = 64  # what an error message quotes of a value the caller sent, at most


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """`value` as an error message quotes it: its repr, cut to `limit` characters (a caller's
    500 KB model name is not sent back whole)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _rebuild(info: ErrorInfo) -> InferenceError:
    return InferenceError.from_info(info)


class RateLimitedError(InferenceError):
    kind = "rate_limited"
    retryable = True
    http_status = 429


class BudgetExceededError(InferenceError):
    """The caller's key has spent its money budget for the period (``retry_after``: until it
    resets; None for a budget that never does). Not retried elsewhere: every deployment would
    charge the same key."""

    kind = "budget_exceeded"
    http_status = 429


class InferenceTimeoutError(InferenceError):
    kind = "timeout"
    retryable = True
    http_status = 504


class OverloadedError(InferenceError):
    kind = "overloaded"
    retryable = True
    http_status = 503


class UnavailableError(InferenceError):
    kind = "unavailable"
    retryable = True
    http_status = 503


class CircuitOpenError(InferenceError):
    kind = "circuit_open"
    retryable = True
    http_status = 503


class InvalidRequestError(InferenceError):
    kind = "invalid_request"
    http_status = 400


class ContextLengthError(InferenceError):
    kind = "context_length"
    http_status = 400


class AuthError(InferenceError):
    kind = "auth"
    http_status = 401


class PermissionDeniedError(InferenceError):
    """The caller is known but may not do this (a tenant asking for a model it is not allowed)."""

    kind = "permission_denied"
    http_status = 403


class ContentFilteredError(InferenceError):
    kind = "content_filtered"
    http_status = 400


class NotFoundError(InferenceError):
    kind = "not_found"
    http_status = 404


class RunnerCrashedError(InferenceError):
    kind = "runner_crashed"
    retryable = True
    http_status = 502


class CancelledRequestError(InferenceError):
    kind = "cancelled"
    http_status = 499


class InternalError(InferenceError):
    kind = "internal"
    http_status = 500


class ConfigError(InferenceError):
    """A deployment description that cannot be used (file, field and reason in the message)."""

    kind = "config"
    http_status = 400


ERROR_CLASSES: dict[str, type[InferenceError]] = {
    cls.kind: cls
    for cls in (
        RateLimitedError,
        BudgetExceededError,
        InferenceTimeoutError,
        OverloadedError,
        UnavailableError,
        CircuitOpenError,
        InvalidRequestError,
        ContextLengthError,
        AuthError,
        PermissionDeniedError,
        ContentFilteredError,
        NotFoundError,
        RunnerCrashedError,
        CancelledRequestError,
        InternalError,
        ConfigError,
    )
}


# How engines word running out of memory when they raise no typed error (ORT and ORT GenAI raise a
# plain RuntimeError: "Failed to allocate memory for requested buffer", "CUDA failure 2: out of
# memory"; CUDA drivers: CUDA_ERROR_OUT_OF_MEMORY, cudaErrorMemoryAllocation).
OUT_OF_MEMORY_TEXTS = ("out of memory", "outofmemory", "out_of_memory", "failed to allocate memory", "memoryallocation")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` reports memory exhaustion: MemoryError (pybind11 turns C++ std::bad_alloc into
    it), a class named like torch's ``OutOfMemoryError``, or an engine's out-of-memory wording."""
    if isinstance(exc, MemoryError) or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return says_out_of_memory(str(exc))


def says_out_of_memory(text: str) -> bool:
    """Whether an error message is an engine's out-of-memory wording."""
    text = text.lower()
    return any(t in text for t in OUT_OF_MEMORY_TEXTS)


def as_error_info(exc: BaseException) -> ErrorInfo:
    """Wire form of any exception; unknown exceptions become `internal` with their text.

    Running out of memory is marked (``details["out_of_memory"]``), so that supervision can tell
    it apart even when the message (a bare MemoryError's is often empty) does not say so."""
    if isinstance(exc, InferenceError):
        return exc.info()
    if is_out_of_memory(exc):
        return ErrorInfo("internal", f"out of memory: {type(exc).__name__}: {exc}", details={"out_of_memory": True})
    return ErrorInfo("internal", f"{type(exc).__name__}: {exc}")
