"""Helpers shared by the local-engine runner tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence

from atomr.core.errors import UnavailableError
from atomr.core.types import Chunk


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
