"""Dynamic batching: collect requests into batches for engines that do not batch by themselves.

An engine worker thread calls `BatchCollector.next_batch()`; it blocks until a request is waiting,
then keeps collecting until `max_batch_size` requests are in hand or `max_wait_s` has passed since
the first one arrived, and returns them as one batch. Only requests with the same batch key (for
example the same sampling settings, which a batched generator shares across its rows) go into one
batch; the others wait, in arrival order, for the next one. The collector knows nothing of the
engine: it moves items between threads and decides when a batch is full enough.

The wait is the price of batching, so it is paid only where batching is likely: when the last
batch had more than one request, or when requests arrived while it ran. A lone caller (nothing else
in flight) starts at once; under concurrent load a request waits at most `max_wait_s` for others
to join it, and a batch that fills up starts at once.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")


class BatchCollector(Generic[T]):
    """Thread-safe queue that hands out batches of up to `max_batch_size` items with one key."""

    def __init__(self, max_batch_size: int, max_wait_s: float, key: Callable[[T], Hashable] = lambda _: None) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self._key = key
        self._items: collections.deque[tuple[float, T]] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running = False  # a batch handed out is being run by the worker
        self._contended = False  # concurrency seen: last batch had several items, or items came meanwhile

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def submit(self, item: T) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch collector is closed")
            self._items.append((time.monotonic(), item))
            if self._running:
                self._contended = True
            self._cond.notify()

    def wake(self) -> None:
        """Wake a waiting `next_batch` (e.g. after an item was cancelled) without adding anything."""
        with self._cond:
            self._cond.notify()

    def close(self) -> list[T]:
        """Stop handing out batches; returns the items still waiting (to be answered by the caller)."""
        with self._cond:
            self._closed = True
            left = [item for _, item in self._items]
            self._items.clear()
            self._cond.notify_all()
            return left

    def next_batch(self, drop: Callable[[T], bool] = lambda _: False) -> list[T] | None:
        """Block until a batch is ready; None once closed.

        `drop(item)` is asked once of every waiting item before a batch is formed; items it returns
        True for (cancelled while waiting, already answered by `drop`) are removed, never handed out.
        """
        with self._cond:
            self._running = False
            wait_s, self._contended = (self.max_wait_s if self._contended else 0.0), False
            while True:
                self._remove(drop)
                if self._closed:
                    return None
                if not self._items:
                    self._cond.wait()
                    continue
                first_at, first = self._items[0]
                key = self._key(first)
                matching = sum(1 for _, it in self._items if self._key(it) == key)
                remaining = first_at + wait_s - time.monotonic()
                if matching >= self.max_batch_size or remaining <= 0:
                    batch = self._take(key)
                    self._running = True
                    self._contended = len(batch) > 1 or bool(self._items)
                    return batch
                self._cond.wait(timeout=remaining)

    def _remove(self, drop: Callable[[T], bool]) -> None:
        kept = [(t, it) for t, it in self._items if not drop(it)]
        if len(kept) != len(self._items):
            self._items.clear()
            self._items.extend(kept)

    def _take(self, key: Hashable) -> list[T]:
        batch: list[T] = []
        rest: list[tuple[float, T]] = []
        for entry in self._items:
            if len(batch) < self.max_batch_size and self._key(entry[1]) == key:
                batch.append(entry[1])
            else:
                rest.append(entry)
        self._items.clear()
        self._items.extend(rest)
        return batch
