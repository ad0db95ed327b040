"""Retries and circuit breaking for remote providers, written once and used by every remote runner.

`RetryPolicy` (tenacity underneath) retries only retryable errors, waits at least the provider's
retry-after, else exponential backoff with jitter, and never sleeps past the request's deadline.
A stream is retried only until its first chunk: after text reached the caller, a failure ends the
stream with its error, so no text is ever sent twice.

`CircuitBreaker` guards one provider endpoint of one deployment: closed -> open after
`failure_threshold` consecutive failures -> half-open after `cooldown_s`, letting at most
`half_open_probes` calls through -> closed on a success, open again on a failure. While open,
calls fail fast with `circuit_open` and never reach the provider.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from atomr.core.errors import CircuitOpenError, InferenceError, InferenceTimeoutError, InternalError
from atomr.core.types import Chunk

# Errors that say nothing about the provider's health do not trip the breaker.
NOT_HEALTH_KINDS = frozenset(
    {"invalid_request", "context_length", "content_filtered", "auth", "not_found", "cancelled"}
)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 4
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 8.0
    jitter_s: float = 0.25

    @staticmethod
    def from_options(options: dict[str, Any]) -> RetryPolicy:
        raw = dict(options.get("retry") or {})
        return RetryPolicy(
            **{k: raw[k] for k in ("max_attempts", "backoff_initial_s", "backoff_max_s", "jitter_s") if k in raw}
        )


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 5, cooldown_s: float = 10.0, half_open_probes: int = 1) -> None:
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.half_open_probes = half_open_probes
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.probes = 0

    @staticmethod
    def from_options(options: dict[str, Any]) -> CircuitBreaker:
        raw = dict(options.get("circuit") or {})
        return CircuitBreaker(
            int(raw.get("failure_threshold", 5)),
            float(raw.get("cooldown_s", 10.0)),
            int(raw.get("half_open_probes", 1)),
        )

    def before_call(self) -> None:
        """Raise `circuit_open` unless a call may go to the provider now."""
        if self.state == "open":
            waited = time.monotonic() - self.opened_at
            if waited < self.cooldown_s:
                raise CircuitOpenError(
                    f"circuit open after {self.failures} consecutive failures", retry_after=self.cooldown_s - waited
                )
            self.state, self.probes = "half_open", 0
        if self.state == "half_open":
            if self.probes >= self.half_open_probes:
                raise CircuitOpenError("circuit half-open: a probe call is in progress", retry_after=self.cooldown_s)
            self.probes += 1

    def on_success(self) -> None:
        self.state, self.failures, self.probes = "closed", 0, 0

    def on_failure(self, err: InferenceError) -> None:
        if err.kind in NOT_HEALTH_KINDS or err.kind == "circuit_open":
            if self.state == "half_open":
                self.probes = max(0, self.probes - 1)
            return
        self.failures += 1
        if self.state == "half_open" or self.failures >= self.failure_threshold:
            self.state, self.opened_at = "open", time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        return {"state": self.state, "consecutive_failures": self.failures}


def _wait_for(policy: RetryPolicy, deadline: float | None) -> Callable[[tenacity.RetryCallState], float]:
    exponential = tenacity.wait_exponential_jitter(
        initial=policy.backoff_initial_s, max=policy.backoff_max_s, jitter=policy.jitter_s
    )

    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        delay = exponential(state)
        if isinstance(exc, InferenceError) and exc.retry_after:
            delay = max(delay, exc.retry_after)
        if deadline is not None and time.time() + delay >= deadline:
            raise exc if exc is not None else InferenceTimeoutError("deadline reached")  # no time for another try
        return float(delay)

    return wait


async def resilient_stream(
    open_stream: Callable[[], AsyncIterator[Chunk]],
    *,
    policy: RetryPolicy,
    breaker: CircuitBreaker,
    deadline: float | None,
    map_error: Callable[[BaseException], InferenceError],
) -> AsyncIterator[Chunk]:
    """Chunks of `open_stream()`, retried until the first chunk, within `deadline`, behind `breaker`."""

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - time.time())

    def as_error(exc: BaseException) -> InferenceError:
        if isinstance(exc, InferenceError):
            return exc
        if isinstance(exc, TimeoutError):
            return InferenceTimeoutError("the provider did not answer within the request's deadline")
        try:
            return map_error(exc)
        except Exception as inner:  # noqa: BLE001 - a mapping bug must still give the caller an answer
            return InternalError(f"{type(exc).__name__} (unmapped: {inner})")

    async def attempt() -> tuple[AsyncIterator[Chunk], Chunk | None]:
        breaker.before_call()
        stream = open_stream()
        try:
            async with asyncio.timeout(remaining()):
                return stream, await anext(stream)
        except StopAsyncIteration:
            return stream, None
        except Exception as exc:  # noqa: BLE001 - every failure is mapped to the taxonomy
            err = as_error(exc)
            breaker.on_failure(err)
            await _close(stream)
            raise err from None

    try:
        stream, first = await attempt()
    except InferenceError as first_failure:
        if not _worth_retrying(first_failure):
            raise
        # Only a failed first attempt pays for tenacity: it sees that failure as its own first
        # attempt (so waits, retry-after and the deadline rule apply as to any other).
        failed: InferenceError | None = first_failure
        retrying = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(policy.max_attempts),
            wait=_wait_for(policy, deadline),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, InferenceError) and _worth_retrying(e)),
            reraise=True,
        )
        async for tried in retrying:
            with tried:
                if failed is not None:
                    again: InferenceError = failed
                    failed = None
                    raise again from None
                stream, first = await attempt()
    breaker.on_success()
    if first is None:
        return
    yield first
    try:
        while True:
            try:
                async with asyncio.timeout(remaining()):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except Exception as exc:  # noqa: BLE001 - every failure is mapped to the taxonomy
                broken = as_error(exc)
                breaker.on_failure(broken)
                raise broken from None
            yield chunk
    finally:
        await _close(stream)


def _worth_retrying(err: InferenceError) -> bool:
    return err.retryable and err.kind != "circuit_open"


async def _close(stream: AsyncIterator[Chunk] | None) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        try:
            await aclose()
        except Exception:  # noqa: BLE001 - closing a broken stream may fail again; nothing to add
            pass
