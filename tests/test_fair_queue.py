"""FairQueue: priority classes, weighted DRR shares, quotas, caps, deadlines, and conservation."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from atomr.core.errors import OverloadedError
from atomr.core.fair_queue import FairQueue, ItemKey


@dataclass(frozen=True)
class Item:
    id: str
    tenant: str = "a"
    priority: int = 0
    deadline: float | None = None


def key(item: Item) -> ItemKey:
    return ItemKey(item.tenant, item.priority, item.deadline, item.id)


def make(**kw: object) -> FairQueue[Item]:
    kw.setdefault("capacity", 100_000)
    return FairQueue(key, **kw)  # type: ignore[arg-type]


def items(tenant: str, n: int, priority: int = 0, start: int = 0) -> list[Item]:
    return [Item(f"{tenant}{i}", tenant, priority) for i in range(start, start + n)]


def pop_all(q: FairQueue[Item], finish: bool = True) -> list[Item]:
    out = []
    while (it := q.pop(now=0.0)) is not None:
        out.append(it)
        if finish:
            q.finished(it.tenant)
    return out


def test_fifo_within_a_tenant() -> None:
    q = make()
    for it in items("a", 50):
        q.push(it)
    assert [it.id for it in pop_all(q)] == [f"a{i}" for i in range(50)]
    assert len(q) == 0 and q.pop(now=0.0) is None


def test_strict_priority_classes() -> None:
    q = make(weights={"low": 100.0})
    for it in items("low", 5, priority=0):
        q.push(it)
    for it in items("mid", 3, priority=1):
        q.push(it)
    for it in items("high", 2, priority=9):
        q.push(it)
    got = [(it.tenant, it.priority) for it in pop_all(q)]
    assert got == [("high", 9)] * 2 + [("mid", 1)] * 3 + [("low", 0)] * 5
    # a higher item arriving late still goes before the lower ones waiting
    for it in items("low", 3):
        q.push(it)
    assert q.pop(now=0.0) == Item("low0", "low")
    q.push(Item("urgent", "low", 5))
    assert q.pop(now=0.0) == Item("urgent", "low", 5)


def backlogged_shares(weights: dict[str, float], tenants: list[str], pops: int) -> Counter[str]:
    q = make(weights=weights)
    for t in tenants:
        for it in items(t, pops):  # every tenant stays backlogged for all the pops
            q.push(it)
    served: Counter[str] = Counter()
    for _ in range(pops):
        got = q.pop(now=0.0)
        assert got is not None
        q.finished(got.tenant)
        served[got.tenant] += 1
    return served


def test_drr_equal_weights_share_equally() -> None:
    served = backlogged_shares({}, ["a", "b"], 4000)
    assert served == {"a": 2000, "b": 2000}


def test_drr_shares_follow_weights() -> None:
    assert backlogged_shares({"a": 3.0, "b": 1.0}, ["a", "b"], 4000) == {"a": 3000, "b": 1000}
    # unknown tenants weigh 1.0; fractional weights carry their deficit across rounds
    assert backlogged_shares({"a": 2.0}, ["a", "stranger"], 3000) == {"a": 2000, "stranger": 1000}
    assert backlogged_shares({"a": 1.5, "b": 0.5, "c": 1.0}, ["a", "b", "c"], 3000) == {
        "a": 1500,
        "b": 500,
        "c": 1000,
    }
    served = backlogged_shares({"a": 0.3, "b": 0.7}, ["a", "b"], 4000)
    assert abs(served["a"] / 4000 - 0.3) < 0.01


def test_drr_shares_hold_over_short_windows() -> None:
    """3:1 is 3:1 in every window of one round, not only on average (quantum 3 and 1)."""
    q = make(weights={"a": 3.0})
    for t in "ab":
        for it in items(t, 100):
            q.push(it)
    order = "".join(it.tenant for it in pop_all(q)[:40])
    assert order == "aaab" * 10


def test_a_small_tenant_is_not_stuck_behind_a_flood() -> None:
    def positions(flood: int) -> list[int]:
        q = make()
        for it in items("big", flood):
            q.push(it)
        for it in items("small", 20):
            q.push(it)
        return [i for i, it in enumerate(pop_all(q)) if it.tenant == "small"]

    small = positions(1000)
    assert len(small) == 20 and max(small) < 41
    assert positions(100) == positions(1000) == positions(10_000)  # its wait ignores the flood size


def test_quota_skips_a_tenant_at_its_limit_and_resumes_on_finished() -> None:
    q = make(max_inflight={"a": 2})
    for t in "ab":
        for it in items(t, 5):
            q.push(it)
    got = []
    while (popped := q.pop(now=0.0)) is not None:
        got.append(popped.id)
        if popped.tenant == "b":
            q.finished("b")
    # a takes its 2 slots, then only b is served; a's items keep waiting, in order
    assert got == ["a0", "b0", "a1", "b1", "b2", "b3", "b4"]
    assert q.inflight("a") == 2 and not q.can_start("a") and q.depth_by_tenant() == {"a": 3}
    q.finished("a")
    assert q.can_start("a")
    assert q.pop(now=0.0) == Item("a2")
    assert q.pop(now=0.0) is None
    q.finished("a")
    q.finished("a")
    assert [it.id for it in pop_all(q)] == ["a3", "a4"]
    with pytest.raises(ValueError):
        q.finished("a")


def test_quota_blocked_high_class_lets_a_lower_class_through() -> None:
    q = make(default_max_inflight=1)
    q.push(Item("h0", "vip", 5))
    q.push(Item("h1", "vip", 5))
    q.push(Item("l0", "crowd", 0))
    assert q.pop(now=0.0) == Item("h0", "vip", 5)
    assert q.pop(now=0.0) == Item("l0", "crowd", 0)  # vip is at its quota: the lower class goes
    assert q.pop(now=0.0) is None
    q.push(Item("l1", "crowd", 0))
    q.finished("vip")
    assert q.pop(now=0.0) == Item("h1", "vip", 5)  # strict priority again once vip may start


def test_started_counts_work_dispatched_without_the_queue() -> None:
    q = make(max_inflight={"a": 1})
    assert q.can_start("a")
    q.started("a")
    q.push(Item("a0"))
    assert not q.can_start("a") and q.pop(now=0.0) is None
    q.finished("a")
    assert q.pop(now=0.0) == Item("a0")


def test_total_capacity_refuses_with_retry_after() -> None:
    q = make(capacity=3, retry_after=2.5, name="deployment tiny")
    for it in items("a", 2) + items("b", 1):
        q.push(it)
    with pytest.raises(OverloadedError) as err:
        q.push(Item("c0", "c"))
    assert err.value.retry_after == 2.5 and "deployment tiny is full (3 requests queued)" in err.value.message
    assert len(q) == 3 and "c0" not in q
    assert q.pop(now=0.0) is not None
    q.push(Item("c0", "c"))  # room again
    assert len(q) == 3


def test_a_tenant_cap_refuses_only_that_tenant() -> None:
    q = make(capacity=10, max_per_tenant=4)
    for it in items("flood", 4):
        q.push(it)
    with pytest.raises(OverloadedError) as err:
        q.push(Item("flood4", "flood"))
    assert err.value.retry_after == 1.0 and "'flood'" in err.value.message
    for it in items("other", 4):
        q.push(it)  # others still get in
    assert q.depth_by_tenant() == {"flood": 4, "other": 4}


def test_capacity_zero_refuses_everything() -> None:
    q = make(capacity=0)
    with pytest.raises(OverloadedError):
        q.push(Item("a0"))


def test_push_front_goes_ahead_of_its_lane_and_ignores_caps() -> None:
    q = make(capacity=3, max_per_tenant=2)
    q.push(Item("a0"))
    q.push(Item("a1"))
    first = q.pop(now=0.0)
    assert first == Item("a0")
    q.push(Item("a2"))
    q.push(Item("b0", "b"))
    assert len(q) == 3
    q.finished("a")  # its replica died before it started: back to the front
    q.push_front(first)
    assert len(q) == 4 and q.depth_by_tenant() == {"a": 3, "b": 1}
    assert [it.id for it in pop_all(q) if it.tenant == "a"] == ["a0", "a1", "a2"]


def test_deadlines_expire_and_are_never_popped() -> None:
    now = [100.0]
    q = make(clock=lambda: now[0])
    q.push(Item("late", "a", deadline=105.0))
    q.push(Item("later", "a", deadline=200.0))
    q.push(Item("never", "b"))
    q.push(Item("early", "b", priority=3, deadline=101.0))
    assert q.next_deadline() == 101.0
    now[0] = 110.0
    got = q.pop()
    assert got == Item("later", "a", deadline=200.0)  # expired ones skipped, even the higher class
    assert len(q) == 3 and "late" in q and "early" in q  # held until taken
    assert {it.id for it in q} == {"late", "early", "never"}
    assert q.pop() == Item("never", "b")
    assert q.pop() is None
    assert {it.id for it in q.take_expired()} == {"late", "early"}
    assert len(q) == 0 and q.take_expired() == [] and q.next_deadline() is None


def test_take_expired_alone_sweeps_and_keeps_the_rest() -> None:
    q = make()
    q.push(Item("x", deadline=5.0))
    q.push(Item("y", deadline=5.0))
    q.push(Item("z", deadline=50.0))
    assert q.take_expired(now=5.0) == []  # not passed yet at exactly the deadline
    assert sorted(it.id for it in q.take_expired(now=6.0)) == ["x", "y"]
    assert q.next_deadline() == 50.0
    assert q.pop(now=6.0) == Item("z", deadline=50.0)


def test_deadline_bookkeeping_survives_many_departures() -> None:
    q = make()
    for i in range(1000):
        q.push(Item(f"r{i}", f"t{i % 7}", deadline=1000.0 + i))
    q.remove(f"r{i}" for i in range(0, 1000, 2))  # all even ones
    for _ in range(300):
        got = q.pop(now=0.0)
        assert got is not None
        q.finished(got.tenant)
    left = sorted(it.deadline for it in q if it.deadline is not None)
    assert len(left) == len(q) == 200 and q.next_deadline() == left[0]
    expired = q.take_expired(now=left[100])
    assert sorted(it.deadline for it in expired if it.deadline is not None) == left[:100]
    assert len(q) == 100 and q.next_deadline() == left[100]


def test_remove_takes_out_waiting_and_expired_items() -> None:
    q = make()
    for it in items("a", 5):
        q.push(it)
    q.push(Item("b0", "b", deadline=1.0))
    q.push(Item("b1", "b"))
    q.take_expired(now=0.0)
    assert q.pop(now=2.0) == Item("a0")  # b0 is set aside now
    removed = q.remove(["a2", "b0", "missing", "a4"])
    assert [it.id for it in removed] == ["a2", "b0", "a4"]
    assert q.remove(["a2"]) == []
    assert q.depth_by_tenant() == {"a": 2, "b": 1}
    assert q.take_expired(now=2.0) == []
    assert [it.id for it in pop_all(q)] == ["b1", "a1", "a3"]
    q.push(Item("a2"))  # a removed id may be used again
    assert q.pop(now=0.0) == Item("a2")


def test_drain_returns_everything_and_leaves_a_usable_queue() -> None:
    q = make()
    pushed = items("a", 3) + items("b", 2, priority=2) + [Item("old", "c", deadline=1.0)]
    for it in pushed:
        q.push(it)
    assert q.pop(now=5.0) == Item("b0", "b", 2)  # "old" is set aside as expired
    drained = q.drain()
    assert sorted(it.id for it in drained) == sorted(it.id for it in pushed if it.id != "b0")
    assert drained[0].id == "old" and [it.id for it in drained[1:]] == ["b1", "a0", "a1", "a2"]
    assert len(q) == 0 and list(q) == [] and q.depth_by_tenant() == {} and q.next_deadline() is None
    assert q.inflight("b") == 1  # still out
    q.push(Item("a0"))
    assert q.pop(now=0.0) == Item("a0")


def test_duplicate_ids_and_bad_settings_are_refused() -> None:
    q = make()
    q.push(Item("x"))
    with pytest.raises(ValueError):
        q.push(Item("x", "b"))
    with pytest.raises(ValueError):
        q.push_front(Item("x"))
    with pytest.raises(ValueError):
        make(weights={"a": 0.0})
    with pytest.raises(ValueError):
        make(max_inflight={"a": 0})
    with pytest.raises(ValueError):
        make(capacity=-1)


def test_thousands_of_items_and_tenants_stay_cheap() -> None:
    q = make(default_max_inflight=5)
    t0 = time.perf_counter()
    for i in range(20_000):
        q.push(Item(f"r{i}", f"t{i % 500}", i % 3, deadline=1e9 + i if i % 2 else None))
    q.remove(f"r{i}" for i in range(0, 20_000, 7))
    served = 0
    while (it := q.pop(now=0.0)) is not None:
        served += 1
        q.finished(it.tenant)
    assert served + len(q) == 20_000 - len(range(0, 20_000, 7)) and len(q) == 0
    assert time.perf_counter() - t0 < 10.0  # O(n) per operation would take minutes


# ---- conservation, against a model, over random operation sequences ----

TENANTS = ("a", "b", "c")


class FairQueueMachine(RuleBasedStateMachine):
    """Every pushed item leaves exactly once (pop, take_expired, remove, drain), and each pop is
    a legal choice: not expired, tenant under quota, highest eligible class, head of its lane."""

    @initialize(capacity=st.sampled_from([3, 8, 20, 0]), per_tenant=st.none() | st.integers(1, 6))
    def start(self, capacity: int, per_tenant: int | None) -> None:
        self.now = 0.0
        self.quota = {"a": 2, "b": 1}
        self.q: FairQueue[Item] = FairQueue(
            key,
            capacity=capacity,
            max_per_tenant=per_tenant,
            weights={"a": 2.0, "c": 0.5},
            max_inflight=self.quota,
            clock=lambda: self.now,
        )
        self.capacity, self.per_tenant = capacity, per_tenant
        self.n = 0
        self.held: dict[str, Item] = {}  # model: what the queue holds
        self.lanes: dict[tuple[int, str], list[str]] = {}  # model: FIFO per (class, tenant)
        self.expired: set[str] = set()  # model: set aside as expired
        self.out: dict[str, list[Item]] = {t: [] for t in TENANTS}  # popped, not finished
        self.pushes: Counter[str] = Counter()
        self.exits: Counter[str] = Counter()

    def _enter(self, it: Item, front: bool) -> None:
        self.held[it.id] = it
        lane = self.lanes.setdefault((it.priority, it.tenant), [])
        lane.insert(0, it.id) if front else lane.append(it.id)
        self.pushes[it.id] += 1

    def _leave(self, item_id: str) -> None:
        assert item_id in self.held, f"{item_id} left but was not held"
        it = self.held.pop(item_id)
        if item_id in self.expired:
            self.expired.discard(item_id)
        else:
            self.lanes[(it.priority, it.tenant)].remove(item_id)
        self.exits[item_id] += 1

    def _sweep(self, now: float) -> None:
        for item_id, it in self.held.items():
            if item_id not in self.expired and it.deadline is not None and now > it.deadline:
                self.expired.add(item_id)
                self.lanes[(it.priority, it.tenant)].remove(item_id)

    @rule(
        batch=st.lists(
            st.tuples(st.sampled_from(TENANTS), st.integers(0, 1), st.none() | st.integers(0, 5)),
            min_size=1,
            max_size=6,
        )
    )
    def push(self, batch: list[tuple[str, int, int | None]]) -> None:
        for tenant, priority, ttl in batch:
            self._push_one(tenant, priority, ttl)

    def _push_one(self, tenant: str, priority: int, ttl: int | None) -> None:
        self.n += 1
        it = Item(f"i{self.n}", tenant, priority, None if ttl is None else self.now + ttl)
        mine = sum(1 for h in self.held.values() if h.tenant == tenant)
        full = len(self.held) >= self.capacity or (self.per_tenant is not None and mine >= self.per_tenant)
        if full:
            with pytest.raises(OverloadedError):
                self.q.push(it)
        else:
            self.q.push(it)
            self._enter(it, front=False)

    @precondition(lambda self: any(self.out.values()))
    @rule(data=st.data())
    def requeue(self, data: st.DataObject) -> None:
        tenant = data.draw(st.sampled_from([t for t in TENANTS if self.out[t]]))
        it = self.out[tenant].pop()
        self.q.finished(tenant)
        self.q.push_front(it)
        self._enter(it, front=True)

    @precondition(lambda self: any(self.out.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        tenant = data.draw(st.sampled_from([t for t in TENANTS if self.out[t]]))
        self.out[tenant].pop(0)
        self.q.finished(tenant)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(times=st.integers(1, 3))
    def pop(self, times: int) -> None:
        for _ in range(times):
            self._pop_one()

    def _pop_one(self) -> None:
        self._sweep(self.now)
        got = self.q.pop()

        def eligible(it: Item) -> bool:
            return it.id not in self.expired and len(self.out[it.tenant]) < self.quota.get(it.tenant, 10**9)

        candidates = [it for it in self.held.values() if eligible(it)]
        if got is None:
            assert candidates == []
            return
        assert got in candidates
        assert got.deadline is None or got.deadline >= self.now
        assert got.priority == max(it.priority for it in candidates)
        assert self.lanes[(got.priority, got.tenant)][0] == got.id
        self._leave(got.id)
        self.out[got.tenant].append(got)

    @rule()
    def take_expired(self) -> None:
        self._sweep(self.now)
        got = self.q.take_expired()
        assert {it.id for it in got} == self.expired
        for it in got:
            assert it.deadline is not None and it.deadline < self.now
            self._leave(it.id)

    @precondition(lambda self: self.n > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from([f"i{k}" for k in range(1, self.n + 1)]), max_size=4))
        got = self.q.remove(ids)
        expect = list(dict.fromkeys(i for i in ids if i in self.held))
        assert [it.id for it in got] == expect
        for item_id in expect:
            self._leave(item_id)

    @rule()
    def drain(self) -> None:
        got = self.q.drain()
        assert sorted(it.id for it in got) == sorted(self.held)
        for it in got:
            self._leave(it.id)

    @invariant()
    def matches_the_model(self) -> None:
        assert len(self.q) == len(self.held)
        listed = list(self.q)
        assert sorted(it.id for it in listed) == sorted(self.held)
        for (priority, tenant), lane in self.lanes.items():  # each lane in FIFO order (push_front first)
            assert [
                it.id for it in listed if (it.priority, it.tenant) == (priority, tenant) and it.id not in self.expired
            ] == lane
        assert self.q.depth_by_tenant() == dict(Counter(it.tenant for it in self.held.values()))
        for t in TENANTS:
            assert self.q.inflight(t) == len(self.out[t])
        waiting = [it.deadline for it in self.held.values() if it.id not in self.expired and it.deadline is not None]
        assert self.q.next_deadline() == (min(waiting) if waiting else None)

    def teardown(self) -> None:
        if not hasattr(self, "q"):
            return
        for it in self.q.drain():
            self._leave(it.id)
        assert self.exits == self.pushes  # every item came out exactly once per time it went in


TestFairQueueConservation = FairQueueMachine.TestCase
TestFairQueueConservation.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
