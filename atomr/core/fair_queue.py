"""A fair scheduling queue: where a coordinator's requests wait until a replica can take them.

Pure bookkeeping, like `atomr.core.ratelimit`: no actors, no I/O, and no clock beyond the `now`
it is given (or the `clock` it was built with). Items are anything (`FairQueue[T]`); a key
function gives each item's ``(tenant, priority, deadline, item_id)``: its tenant's name, its
priority class (higher first), its absolute `time.time()` deadline or None, and an id unique
among the items held.

Scheduling rules, in the order they apply:

1. Deadlines. An item whose deadline has passed (``now > deadline``) is never handed out by
   `pop`. `pop` and `take_expired` set such items aside; `take_expired` hands them to the caller,
   which answers them with a timeout. Until taken they are still held: counted by ``len``,
   listed by iteration and `depth_by_tenant`, returned by `remove` and `drain`.
2. Strict priority classes. `pop` serves the highest class holding an item of a tenant below
   its concurrency quota; nothing of a lower class leaves while such an item waits.
3. Deficit round robin (DRR) within a class. Each tenant has a FIFO lane per class, and lanes
   with items take turns. At the start of its turn a lane's deficit grows by its quantum,
   ``weight / unit`` where ``unit`` is the smallest weight known (configured, or `default_weight`
   for tenants without one), so every quantum is >= 1 and the lightest tenant gets one request
   per round. A pop costs 1 (requests, not tokens); a lane serves while its deficit lasts, then
   goes to the back. Under contention served shares follow the weights (3:1 weights give exactly
   3:1 per round). A lane that empties forgets its deficit: idle tenants save up no credit.
4. Concurrency quotas. The queue counts requests in flight per tenant: `pop` counts the item it
   returns, `started` counts one dispatched without the queue (see `can_start`), and the caller
   calls `finished(tenant)` exactly once when such a request ends for any reason (answered,
   failed, cancelled, or put back with `push_front`). A tenant with `max_inflight` requests in
   flight is skipped: its items wait and its lanes keep their place and their turn; others are
   served. `pop` returns None when nothing is eligible.

Admission: `push` raises `OverloadedError` (with `retry_after`) when the item's tenant already
holds `max_per_tenant` items (only that tenant is refused), or when the queue holds `capacity`.
`push_front` is for work that was admitted already and comes back (its replica died before it
started): it is never refused, and goes ahead of its tenant's lane in its class.

Conservation: every item pushed leaves exactly once, through `pop`, `take_expired`, `remove`
(cancellation) or `drain` (shutdown, or moving everything to a fallback).

Costs: `push`, `push_front` and `remove` (per id) are O(log n) for items with a deadline (a heap)
and O(1) otherwise; `pop` is O(#classes + #tenants skipped for their quota), plus O(log n) per
item it sets aside as expired.
"""

from __future__ import annotations

import bisect
import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, NamedTuple, TypeVar

from atomr.core.errors import OverloadedError

T = TypeVar("T")

# Float slack for deficits: weights like 0.1 add up to 0.9999... where 1 is meant.
_EPS = 1e-9
# The deadline heap keeps records of items that left another way; rebuild it past this slack.
_HEAP_SLACK = 64


class ItemKey(NamedTuple):
    """What the queue needs to know about an item (a key function may return a plain tuple)."""

    tenant: str
    priority: int
    deadline: float | None
    item_id: str


@dataclass(slots=True, eq=False)
class _Entry(Generic[T]):
    item: T
    tenant: str
    priority: int
    deadline: float | None
    item_id: str
    seq: int  # tells a heap record of this entry from one of an earlier entry with the same id
    expired: bool = False


class _Lane(Generic[T]):
    """One tenant's FIFO within one priority class, with its DRR deficit."""

    __slots__ = ("deficit", "entries")

    def __init__(self) -> None:
        self.entries: OrderedDict[str, _Entry[T]] = OrderedDict()
        self.deficit = 0.0


class FairQueue(Generic[T]):
    """Waiting items, served by priority class, then weighted fair share, within tenant quotas.

    `key` gives an item's ``(tenant, priority, deadline, item_id)`` (an `ItemKey` or a tuple).
    `capacity` bounds the items held (`push_front` excepted); `max_per_tenant` bounds one
    tenant's. `weights` and `max_inflight` are per tenant name; tenants not named get
    `default_weight` and `default_max_inflight` (None: no quota). `name` starts the message of
    the `OverloadedError` a full queue raises.
    """

    def __init__(
        self,
        key: Callable[[T], tuple[str, int, float | None, str]],
        *,
        capacity: int,
        max_per_tenant: int | None = None,
        weights: Mapping[str, float] | None = None,
        default_weight: float = 1.0,
        max_inflight: Mapping[str, int] | None = None,
        default_max_inflight: int | None = None,
        retry_after: float = 1.0,
        name: str = "queue",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        if max_per_tenant is not None and max_per_tenant < 0:
            raise ValueError(f"max_per_tenant must be >= 0, got {max_per_tenant}")
        weights = dict(weights or {})
        for tenant, w in [*weights.items(), ("default_weight", default_weight)]:
            if not (isinstance(w, int | float) and math.isfinite(w) and w > 0):
                raise ValueError(f"weight of {tenant!r} must be a finite number > 0, got {w!r}")
        quotas = dict(max_inflight or {})
        for tenant, n in [*quotas.items(), ("default_max_inflight", default_max_inflight)]:
            if n is not None and n < 1:
                raise ValueError(f"max_inflight of {tenant!r} must be >= 1, got {n}")
        self._key = key
        self.capacity = capacity
        self.max_per_tenant = max_per_tenant
        self.retry_after = retry_after
        self.name = name
        self._clock = clock
        self._weights = weights
        self._default_weight = float(default_weight)
        self._unit = min([self._default_weight, *weights.values()])
        self._quotas = quotas
        self._default_quota = default_max_inflight

        self._entries: dict[str, _Entry[T]] = {}  # every item held, waiting or expired
        self._expired: dict[str, _Entry[T]] = {}  # set aside, until take_expired
        self._held: dict[str, int] = {}  # tenant -> items held
        self._classes: dict[int, OrderedDict[str, _Lane[T]]] = {}  # priority -> lanes in turn order
        self._prios: list[int] = []  # priorities in _classes, ascending
        self._heap: list[tuple[float, int, str]] = []  # (deadline, seq, item_id) of waiting items
        self._heap_live = 0  # waiting items with a deadline (the rest of the heap is stale)
        self._inflight: dict[str, int] = {}
        self._seq = 0

    # ---- admission ----

    def push(self, item: T) -> None:
        """Queue `item` at the back of its tenant's lane.

        Raises `OverloadedError` when the tenant holds `max_per_tenant` items or the queue holds
        `capacity`; `ValueError` when an item with the same id is held already.
        """
        tenant, priority, deadline, item_id = self._key(item)
        self._check_new(item_id)
        held = self._held.get(tenant, 0)
        if self.max_per_tenant is not None and held >= self.max_per_tenant:
            raise OverloadedError(
                f"{self.name} holds {held} requests of tenant {tenant!r} (its limit)", retry_after=self.retry_after
            )
        if len(self._entries) >= self.capacity:
            raise OverloadedError(
                f"{self.name} is full ({self.capacity} requests queued)", retry_after=self.retry_after
            )
        self._add(item, tenant, priority, deadline, item_id, front=False)

    def push_front(self, item: T) -> None:
        """Put back admitted work (its replica died before starting it) ahead of its tenant's lane.

        Never refused for capacity: the request was admitted once already. Call
        `finished(tenant)` for it too if it had been popped (it is no longer in flight).
        """
        tenant, priority, deadline, item_id = self._key(item)
        self._check_new(item_id)
        self._add(item, tenant, priority, deadline, item_id, front=True)

    def _check_new(self, item_id: str) -> None:
        if item_id in self._entries:
            raise ValueError(f"an item with id {item_id!r} is queued already")

    def _add(self, item: T, tenant: str, priority: int, deadline: float | None, item_id: str, front: bool) -> None:
        self._seq += 1
        entry = _Entry(item, tenant, priority, deadline, item_id, self._seq)
        lanes = self._classes.get(priority)
        if lanes is None:
            lanes = self._classes[priority] = OrderedDict()
            bisect.insort(self._prios, priority)
        lane = lanes.get(tenant)
        if lane is None:
            lane = lanes[tenant] = _Lane()
        lane.entries[item_id] = entry
        if front:
            lane.entries.move_to_end(item_id, last=False)
        self._entries[item_id] = entry
        self._held[tenant] = self._held.get(tenant, 0) + 1
        if deadline is not None:
            heapq.heappush(self._heap, (deadline, entry.seq, item_id))
            self._heap_live += 1

    # ---- service ----

    def pop(self, now: float | None = None) -> T | None:
        """The next item to serve, counted as in flight for its tenant; None if none is eligible.

        Items whose deadline passed before `now` (default: the clock) are set aside for
        `take_expired` instead.
        """
        self._expire(self._clock() if now is None else now)
        for priority in reversed(self._prios):
            lanes = self._classes[priority]
            tenant = next((t for t in lanes if self.can_start(t)), None)
            if tenant is None:
                continue
            lane = lanes[tenant]
            if lane.deficit < 1 - _EPS:  # its turn starts
                lane.deficit += self._quantum(tenant)
            lane.deficit -= 1
            _, entry = lane.entries.popitem(last=False)
            if not lane.entries:
                self._drop_lane(lanes, priority, tenant)
            elif lane.deficit < 1 - _EPS:  # its turn is over
                lanes.move_to_end(tenant)
            self._forget(entry)
            if entry.deadline is not None:
                self._heap_live -= 1
                self._maybe_compact()
            self._inflight[tenant] = self._inflight.get(tenant, 0) + 1
            return entry.item
        return None

    def take_expired(self, now: float | None = None) -> list[T]:
        """Every held item whose deadline passed before `now` (default: the clock); they leave."""
        self._expire(self._clock() if now is None else now)
        out = [e.item for e in self._expired.values()]
        for entry in self._expired.values():
            self._forget(entry)
        self._expired.clear()
        return out

    def next_deadline(self) -> float | None:
        """The earliest deadline of a waiting item (when `take_expired` next has work), or None."""
        while self._heap and not self._live_record(self._heap[0]):
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def remove(self, item_ids: Iterable[str]) -> list[T]:
        """Take out the held items with these ids (cancellation); unknown ids are ignored."""
        out = []
        for item_id in item_ids:
            entry = self._entries.get(item_id)
            if entry is None:
                continue
            if entry.expired:
                del self._expired[item_id]
            else:
                self._unlink(entry)
            self._forget(entry)
            out.append(entry.item)
        self._maybe_compact()
        return out

    def drain(self) -> list[T]:
        """Every held item (expired ones not yet taken included); the queue is left empty.

        In-flight counts are kept: those requests are still out. Call `take_expired` first to
        answer the expired ones differently.
        """
        out = list(self)
        self._entries.clear()
        self._expired.clear()
        self._held.clear()
        self._classes.clear()
        self._prios.clear()
        self._heap.clear()
        self._heap_live = 0
        return out

    # ---- quotas ----

    def can_start(self, tenant: str) -> bool:
        """Whether `tenant` is below its concurrency quota."""
        limit = self._quotas.get(tenant, self._default_quota)
        return limit is None or self._inflight.get(tenant, 0) < limit

    def started(self, tenant: str) -> None:
        """Count a request of `tenant` dispatched without going through the queue.

        For a caller's fast path: when a replica is free and `pop` returns None, nothing
        eligible waits, so an arriving request whose tenant `can_start` may go straight out.
        """
        self._inflight[tenant] = self._inflight.get(tenant, 0) + 1

    def finished(self, tenant: str) -> None:
        """A request of `tenant` counted by `pop` or `started` is no longer in flight."""
        n = self._inflight.get(tenant, 0)
        if n <= 0:
            raise ValueError(f"tenant {tenant!r} has no request in flight")
        if n == 1:
            del self._inflight[tenant]
        else:
            self._inflight[tenant] = n - 1

    def inflight(self, tenant: str) -> int:
        return self._inflight.get(tenant, 0)

    # ---- inspection ----

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._entries

    def __iter__(self) -> Iterator[T]:
        """Every held item: expired ones not yet taken, then the waiting ones by class (highest
        first), lane (turn order) and position. Do not change the queue while iterating."""
        for entry in self._expired.values():
            yield entry.item
        for priority in reversed(self._prios):
            for lane in self._classes[priority].values():
                for entry in lane.entries.values():
                    yield entry.item

    def depth_by_tenant(self) -> dict[str, int]:
        """Items held per tenant (for metrics)."""
        return dict(self._held)

    # ---- internals ----

    def _quantum(self, tenant: str) -> float:
        return self._weights.get(tenant, self._default_weight) / self._unit

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            record = heapq.heappop(heap)
            if not self._live_record(record):
                continue
            entry = self._entries[record[2]]
            self._unlink(entry)
            entry.expired = True
            self._expired[entry.item_id] = entry

    def _live_record(self, record: tuple[float, int, str]) -> bool:
        entry = self._entries.get(record[2])
        return entry is not None and entry.seq == record[1] and not entry.expired

    def _unlink(self, entry: _Entry[T]) -> None:
        """Take a waiting entry out of its lane (it stays in _entries)."""
        lanes = self._classes[entry.priority]
        lane = lanes[entry.tenant]
        del lane.entries[entry.item_id]
        if not lane.entries:
            self._drop_lane(lanes, entry.priority, entry.tenant)
        if entry.deadline is not None:
            self._heap_live -= 1

    def _drop_lane(self, lanes: OrderedDict[str, _Lane[T]], priority: int, tenant: str) -> None:
        del lanes[tenant]
        if not lanes:
            del self._classes[priority]
            self._prios.pop(bisect.bisect_left(self._prios, priority))

    def _forget(self, entry: _Entry[T]) -> None:
        del self._entries[entry.item_id]
        n = self._held[entry.tenant] - 1
        if n:
            self._held[entry.tenant] = n
        else:
            del self._held[entry.tenant]

    def _maybe_compact(self) -> None:
        # Records of items that left by pop or remove stay in the heap; drop them in one pass
        # once they outnumber the live ones, which keeps the heap O(live) at amortized O(1).
        if len(self._heap) > 2 * self._heap_live + _HEAP_SLACK:
            self._heap = [
                (e.deadline, e.seq, e.item_id)
                for e in self._entries.values()
                if e.deadline is not None and not e.expired
            ]
            heapq.heapify(self._heap)
