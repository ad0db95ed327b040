"""Provider HTTP failures -> the InferenceError taxonomy, in one table every remote runner uses.

Each provider module only extracts (status, message, retry-after) from its SDK's exception and
calls `error_for_status`; the API key is removed from every message before it can reach a log,
an error or a status page.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from atomr.core.errors import (
    AuthError,
    ContentFilteredError,
    ContextLengthError,
    InferenceError,
    InferenceTimeoutError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    UnavailableError,
)

_CONTEXT_WORDS = re.compile(r"context length|context window|maximum context|too many tokens|prompt is too long", re.I)
_FILTER_WORDS = re.compile(r"content (management )?policy|content filter|safety", re.I)

STATUS_TABLE: dict[int, type[InferenceError]] = {
    400: InvalidRequestError,
    401: AuthError,
    403: AuthError,
    404: NotFoundError,
    408: InferenceTimeoutError,
    409: UnavailableError,
    413: ContextLengthError,
    422: InvalidRequestError,
    429: RateLimitedError,
    500: UnavailableError,
    502: UnavailableError,
    503: UnavailableError,
    504: InferenceTimeoutError,
    529: OverloadedError,  # Anthropic: overloaded
}


def redact(text: str, secrets: Iterable[str | None]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


def parse_retry_after(value: str | float | int | None) -> float | None:
    """Seconds from a Retry-After / retry-after-ms header value (None when absent or unreadable)."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def error_for_status(
    status: int | None,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
    secrets: Iterable[str | None] = (),
) -> InferenceError:
    """The taxonomy error for an HTTP status from `provider` (None: the connection failed)."""
    text = redact(message, secrets)
    if status is None:
        return UnavailableError(f"{provider}: connection failed: {text}")
    if status in (400, 413, 422) and _CONTEXT_WORDS.search(text):
        cls: type[InferenceError] = ContextLengthError
    elif status == 400 and _FILTER_WORDS.search(text):
        cls = ContentFilteredError
    else:
        cls = STATUS_TABLE.get(status) or (UnavailableError if status >= 500 else InvalidRequestError)
    return cls(f"{provider} returned {status}: {text}", retry_after=retry_after, details={"status": status})
