"""The one retry policy of the remote runners (`runners/remote/resilience.py`), on its own: what
is retried, how long it waits (exponential backoff with jitter, at least the provider's
retry-after) and that it never waits past the request's deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from atomr.runners.remote.resilience import CircuitBreaker, RetryPolicy, resilient_stream

from atomr.core.errors import InferenceError, InvalidRequestError, RateLimitedError, UnavailableError
from atomr.core.types import Chunk


class Provider:
    """Streams that fail with the given errors in turn, then answer "ok"; records when each opened."""

    def __init__(self, *failures: InferenceError, fail_after_first_chunk: InferenceError | None = None) -> None:
        self.failures = list(failures)
        self.after_first = fail_after_first_chunk
        self.opened: list[float] = []

    async def open(self) -> AsyncIterator[Chunk]:
        self.opened.append(time.monotonic())
        if self.failures:
            raise self.failures.pop(0)
        yield Chunk("ok", 1)
        if self.after_first is not None:
            raise self.after_first
        yield Chunk("", 0, finish_reason="stop")


async def collect(provider: Provider, policy: RetryPolicy, deadline_in: float | None, into: list[Chunk]) -> None:
    deadline = None if deadline_in is None else time.time() + deadline_in

    def same(exc: BaseException) -> InferenceError:  # the provider raises atomr's errors already
        assert isinstance(exc, InferenceError)
        return exc

    stream = resilient_stream(provider.open, policy=policy, breaker=CircuitBreaker(), deadline=deadline, map_error=same)
    async for chunk in stream:
        into.append(chunk)


def run(provider: Provider, policy: RetryPolicy, deadline_in: float | None = None) -> list[Chunk]:
    chunks: list[Chunk] = []
    asyncio.run(collect(provider, policy, deadline_in, chunks))
    return chunks


def test_backoff_grows_with_jitter_up_to_its_cap() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_initial_s=0.1, backoff_max_s=0.25, jitter_s=0.05)
    provider = Provider(*(UnavailableError("down") for _ in range(3)))
    chunks = run(provider, policy)
    assert [c.text for c in chunks] == ["ok", ""]
    gaps = [b - a for a, b in zip(provider.opened, provider.opened[1:], strict=False)]
    assert len(gaps) == 3
    # tenacity's exponential wait with jitter: initial * 2**n capped at the max, plus up to jitter_s
    for gap, base in zip(gaps, (0.1, 0.2, 0.25), strict=True):
        assert base - 0.01 <= gap <= base + 0.05 + 0.15, gaps


def test_the_providers_retry_after_is_the_least_wait() -> None:
    policy = RetryPolicy(max_attempts=2, backoff_initial_s=0.01, backoff_max_s=0.02, jitter_s=0.0)
    provider = Provider(RateLimitedError("slow down", retry_after=0.4))
    run(provider, policy)
    assert provider.opened[1] - provider.opened[0] >= 0.39


def test_a_retry_after_beyond_the_deadline_fails_at_once() -> None:
    policy = RetryPolicy(max_attempts=4, backoff_initial_s=0.01)
    provider = Provider(RateLimitedError("slow down", retry_after=5.0))
    start = time.monotonic()
    with pytest.raises(RateLimitedError) as caught:
        run(provider, policy, deadline_in=1.0)
    assert time.monotonic() - start < 0.5  # no sleep that could only end past the deadline
    assert len(provider.opened) == 1 and caught.value.retry_after == 5.0


def test_errors_that_a_retry_cannot_fix_are_not_retried() -> None:
    provider = Provider(InvalidRequestError("bad temperature", field="temperature"))
    with pytest.raises(InvalidRequestError):
        run(provider, RetryPolicy(max_attempts=4, backoff_initial_s=0.01))
    assert len(provider.opened) == 1


def test_a_stream_that_fails_after_text_is_not_retried() -> None:
    provider = Provider(fail_after_first_chunk=UnavailableError("connection reset"))
    seen: list[Chunk] = []
    with pytest.raises(UnavailableError):
        asyncio.run(collect(provider, RetryPolicy(max_attempts=4, backoff_initial_s=0.01), None, seen))
    assert [c.text for c in seen] == ["ok"] and len(provider.opened) == 1  # the text was never sent twice
