"""The batch collector: batch size, wait window, keys, cancellation while waiting, close."""

from __future__ import annotations

import threading
import time

import pytest
from atomr.runners.common.batching import BatchCollector


def test_full_batch_starts_at_once_and_keeps_order() -> None:
    c: BatchCollector[int] = BatchCollector(4, max_wait_s=10)
    for i in range(6):
        c.submit(i)
    assert c.next_batch() == [0, 1, 2, 3]
    assert len(c) == 2


def test_lone_item_does_not_wait_but_contended_items_do() -> None:
    # a window long enough that "no wait" and "waited" stay apart on a busy machine
    c: BatchCollector[int] = BatchCollector(4, max_wait_s=0.5)
    c.submit(1)
    t = time.monotonic()
    assert c.next_batch() == [1]  # nothing else was seen: no wait
    assert time.monotonic() - t < 0.25
    c.submit(2)  # arrives while batch [1] "runs": concurrency seen
    t = time.monotonic()
    assert c.next_batch() == [2]  # waits the window for company, none comes
    assert 0.45 < time.monotonic() - t < 2.0


def test_waiting_batch_collects_late_arrivals_up_to_the_window() -> None:
    c: BatchCollector[int] = BatchCollector(8, max_wait_s=0.3)
    c.submit(0)
    c.submit(1)
    assert c.next_batch() == [0, 1]  # both were there (no contention seen before: no wait)
    c.submit(2)  # the last batch had two: the next one waits for company
    threading.Timer(0.05, c.submit, args=(3,)).start()
    assert c.next_batch() == [2, 3]


def test_only_items_with_the_same_key_share_a_batch() -> None:
    c: BatchCollector[tuple[str, int]] = BatchCollector(4, max_wait_s=0, key=lambda it: it[0])
    for item in [("a", 1), ("b", 2), ("a", 3), ("b", 4)]:
        c.submit(item)
    assert c.next_batch() == [("a", 1), ("a", 3)]
    assert c.next_batch() == [("b", 2), ("b", 4)]


def test_dropped_items_are_never_handed_out() -> None:
    c: BatchCollector[int] = BatchCollector(4, max_wait_s=0)
    for i in range(4):
        c.submit(i)
    dropped: list[int] = []

    def drop(item: int) -> bool:
        if item % 2:
            dropped.append(item)
            return True
        return False

    assert c.next_batch(drop) == [0, 2]
    assert dropped == [1, 3]


def test_close_returns_waiting_items_and_ends_the_worker() -> None:
    c: BatchCollector[int] = BatchCollector(4, max_wait_s=10)
    got: list[list[int] | None] = []
    worker = threading.Thread(target=lambda: got.append(c.next_batch()))
    c.submit(7)
    c.submit(8)
    c.next_batch()  # contended now: the next batch would wait 10 s
    c.submit(9)
    worker.start()
    time.sleep(0.05)
    assert c.close() == [9]
    worker.join(timeout=2)
    assert got == [None]
    with pytest.raises(RuntimeError):
        c.submit(1)


def test_bad_settings() -> None:
    with pytest.raises(ValueError):
        BatchCollector(0, 0.0)
    with pytest.raises(ValueError):
        BatchCollector(1, -1.0)
