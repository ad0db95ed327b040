"""Coalescing of runner chunks into fewer, larger stream messages (by token count and time).

The first chunk of a stream leaves at once (time to first token matters); later ones are held
until `max_tokens` tokens are pending or the oldest pending one is `max_delay` seconds old; the
final chunk flushes everything. Chunks of different choices (n > 1) are never merged: a chunk of
another choice first sends what is pending. A deployment with ``limits.coalesce: false`` sends
every chunk as its runner made it (for pass-through streams whose clients want the upstream's
chunking).
"""

from __future__ import annotations

from atomr.core.types import Chunk


class ChunkCoalescer:
    @classmethod
    def for_limits(cls, coalesce: bool, max_tokens: int, max_delay: float) -> ChunkCoalescer:
        """The deployment's coalescer; with `coalesce` off, one that passes every chunk on as it
        came (nothing is ever held: one token and no delay are always reached)."""
        return cls(max_tokens, max_delay) if coalesce else cls(1, 0.0)

    def __init__(self, max_tokens: int, max_delay: float) -> None:
        self.max_tokens = max_tokens
        self.max_delay = max_delay
        self._pending: list[Chunk] = []
        self._pending_tokens = 0
        self._oldest = 0.0
        self._sent_any = False

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def add(self, chunk: Chunk, now: float) -> list[Chunk]:
        """Take a chunk; return the chunks to send now (none, or merged ones)."""
        out: list[Chunk] = []
        if self._pending and self._pending[-1].index != chunk.index:
            out.append(self._merge())
        if not self._pending:
            self._oldest = now
        self._pending.append(chunk)
        self._pending_tokens += chunk.token_count
        if (
            not self._sent_any
            or chunk.finish_reason is not None
            or self._pending_tokens >= self.max_tokens
            or now - self._oldest >= self.max_delay
        ):
            out.append(self._merge())
        return out

    def take(self) -> Chunk | None:
        """Everything pending as one chunk (None when nothing is pending)."""
        if not self._pending:
            return None
        return self._merge()

    def _merge(self) -> Chunk:
        merged = Chunk.merge(self._pending)
        self._pending = []
        self._pending_tokens = 0
        self._sent_any = True
        return merged
