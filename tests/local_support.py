"""Helpers shared by the local-engine runner tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from atomr.core.errors import UnavailableError
from atomr.core.types import Chunk

T = TypeVar("T")


class CountsGenerations(Protocol):
    @property
    def active_generations(self) -> int: ...


async def wait_idle(runner: CountsGenerations, timeout: float = 5.0) -> None:
    """Wait until the runner has no generation in progress; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while runner.active_generations and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    assert runner.active_generations == 0


async def keep_trying(
    attempt: Callable[[], Awaitable[T]], enough: Callable[[list[T]], bool], seconds: float
) -> list[T]:
    """Run `attempt` until `enough(results so far)`, or `seconds` have passed; all the results.

    For scenarios that sampling or a starved CPU can miss (a tiny model's sampled answer may end
    on its own before the caller leaves): trying for a while rather than a fixed few times keeps a
    burst of load elsewhere from failing the test. The caller asserts on what came back.
    """
    results: list[T] = []
    deadline = time.monotonic() + seconds
    while not enough(results) and time.monotonic() < deadline:
        results.append(await attempt())
    return results


async def how_streams_ended(
    firsts: Sequence[Chunk | Awaitable[Chunk]], streams: Sequence[AsyncIterator[Chunk]]
) -> list[str]:
    """Read each stream to its end: its finish_reason, "unavailable", or "truncated" (it ended
    without a finish_reason, the one outcome a runner must never give).

    `firsts` holds each stream's first chunk, already read or still to be awaited.
    """
    outcomes = []
    for first, stream in zip(firsts, streams, strict=True):
        try:
            chunks = [first if isinstance(first, Chunk) else await first] + [c async for c in stream]
            outcomes.append(chunks[-1].finish_reason or "truncated")
        except UnavailableError:
            outcomes.append("unavailable")
    return outcomes
