"""What the three ORT schedulers share: a request's `Job`, the `Channel` that carries its chunks
from a worker thread to the asyncio side, and its text side (`Decoding`: detokenizer, stop
sequences, logprobs, counts; it builds the chunks).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from dataclasses import dataclass
from typing import Any

from atomr.runners.common.stops import StopMatcher
from atomr.runners.common.structured import Guidance
from atomr.runners.local.ort.model import OrtModel, log_softmax_at

from atomr.core.types import Chunk, InferenceRequest, TokenLogprob, Usage


class Channel:
    """Worker thread -> asyncio consumer, waking the loop only when the consumer waits."""

    __slots__ = ("_items", "_lock", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # loop closed: nobody is listening any more
                pass

    async def get_all(self) -> list[Any]:
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
                waiter = self._loop.create_future()
                self._waiter = waiter
            await waiter


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


END = object()


class Decoding:
    """One request's text side: detokenizer, stop matcher, logprobs, counts; emits the chunks.
    (Tool calls are read from these chunks by the runner: `structured.with_tool_calls`.)"""

    __slots__ = ("channel", "finished", "generated", "logprobs", "max_tokens", "n_prompt", "stops", "stream")

    def __init__(self, m: OrtModel, request: InferenceRequest, n_prompt: int, channel: Channel) -> None:
        self.channel = channel
        self.stream = m.tokenizer.create_stream()
        self.stops = StopMatcher(request.params.stop)
        self.logprobs = request.params.logprobs
        self.max_tokens = request.params.max_new_tokens
        self.n_prompt = n_prompt
        self.generated = 0
        self.finished = False

    def token(self, token: int, logits: Any = None) -> bool:
        """Emit one generated (non-EOS) token; True when a stop sequence ended the text."""
        self.generated += 1
        piece = self.stream.decode(token)
        lps = (TokenLogprob(piece, log_softmax_at(logits, token)),) if logits is not None else None
        text, stopped = self.stops.feed(piece)
        if stopped:
            self.finished = True
            self.channel.put(Chunk(text, 1, lps, "stop", Usage(self.n_prompt, self.generated)))
            return True
        self.channel.put(Chunk(text, 1, lps))
        return False

    def finish(self, reason: str) -> None:
        """Emit the last chunk: held-back text, finish_reason and usage."""
        if self.finished:
            return
        self.finished = True
        self.channel.put(
            Chunk(self.stops.flush(), 0, () if self.logprobs else None, reason, Usage(self.n_prompt, self.generated))
        )


@dataclass(slots=True, eq=False)
class Job:
    request: InferenceRequest
    channel: Channel
    cancel: threading.Event
    ids: list[int]
    decoding: Decoding
    og_request: Any = None
    turn_id: int = 0
    guidance: Guidance | None = None
