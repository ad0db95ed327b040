"""The coordinator's decisions without an actor system: `ReplicaSet` (dispatch by least outstanding
within in-flight credits, the fair queue, fail-over of a dead replica's requests, restart backoff
and isolation) and the version switch (`VersionSwitch`: canary, switch, retire, roll back).

Every time is given explicitly (a settable clock, a fixed wall clock, a scripted canary draw) and
every outcome is asserted exactly: the actions returned, in order, and the state they leave."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from atomr.actors.dispatcher import (
    Action,
    AdoptOn,
    Emit,
    Finish,
    FirstToken,
    Forward,
    Replica,
    Restarted,
    Serve,
    ToLimiter,
    ToManager,
    ToNode,
    ToReplica,
    WakeUp,
)
from atomr.actors.hot_swap import CANARY, DONE, ROLL_BACK, SWITCH, VersionSwitch
from atomr.actors.messages import (
    Cancel,
    DeploymentState,
    Drained,
    PlaceReplica,
    ReplicaPlaced,
    ReplicaProgress,
    ReplicaReady,
    Settle,
    StopReplica,
    SwapEnded,
    WorkItem,
)
from atomr.actors.replica_set import ReplicaSet, is_permanent
from atomr.core.deployment import Deployment, Limits, Rollout, Supervision
from atomr.core.errors import InternalError, NotFoundError, OverloadedError
from atomr.core.status import DeploymentInfo, ReplicaInfo
from atomr.core.tenants import Tenant, hash_key
from atomr.core.types import InferenceRequest, StreamEvent, Usage

CALLER = "caller"  # addresses are opaque to the replica set: strings stand in for them
WALL = 1_000.0  # the wall clock (request deadlines)


class Clock:
    """The replica set's monotonic clock, moved by hand."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def deployment(version: str = "1", **fields: Any) -> Deployment:
    fields.setdefault("limits", Limits(max_inflight_per_replica=2, max_queue=3))
    return Deployment(name="d", model="m", runtime="ort", version=version, **fields)


def slot(i: int, version: str = "1") -> str:
    return f"d-v{version}-r{i}"


def placement(s: str, n: int = 0, agent: str = "agent-a") -> ReplicaPlaced:
    return ReplicaPlaced(s, f"{s}.{n}", "node-a", agent)


def ready_msg(instance: str, inflight: list[tuple[WorkItem, bool]] | None = None, finals: Any = None) -> ReplicaReady:
    s = instance.rpartition(".")[0]
    return ReplicaReady(instance, f"addr-{s}", "node-a", 7, [], inflight=inflight or [], finals=finals or [])


def item(rid: str, tenant: str = "default", **request: Any) -> WorkItem:
    return WorkItem(InferenceRequest(model="d", prompt="x", request_id=rid, tenant=tenant, **request), CALLER)


def final(rid: str, error: Any = None, seq: int = 1, usage: Usage | None = None) -> tuple[str, StreamEvent]:
    return CALLER, StreamEvent(rid, error=error, final=True, seq=seq, usage=usage)


def of(actions: Iterable[Action], kind: type) -> list[Any]:
    return [a for a in actions if isinstance(a, kind)]


def finishes(actions: Iterable[Action]) -> dict[str, tuple[str, str]]:
    """request id -> (outcome, replica) of every Finish."""
    return {a.item.request.request_id: (a.outcome, a.replica) for a in of(actions, Finish)}


def without_reports(actions: Iterable[Action]) -> list[Action]:
    return [a for a in actions if not (isinstance(a, ToManager) and isinstance(a.message, DeploymentState))]


def serving(
    dep: Deployment | None = None, n: int = 2, clock: Clock | None = None, draws: Iterable[float] = ()
) -> ReplicaSet:
    """A replica set whose `n` replicas are ready (instance .0 of each slot)."""
    dep = dep or deployment()
    scripted: Iterator[float] = iter(draws)
    rs = ReplicaSet(dep, clock=clock or Clock(), wall_clock=lambda: WALL, draw=lambda: next(scripted))
    rs.start([placement(slot(i, dep.version)) for i in range(n)])
    for i in range(n):
        rs.ready(ready_msg(f"{slot(i, dep.version)}.0"))
    assert rs.state == "ready"
    return rs


def dispatched(rs: ReplicaSet) -> dict[str, list[str]]:
    """address -> request ids of the Dispatch batches the actor would send now."""
    return {addr: [i.request.request_id for i in items] for addr, items in rs.take_dispatches()}


# ---- dispatch ----


def test_least_outstanding_within_credits_then_queue_then_overloaded() -> None:
    rs = serving()  # 2 replicas, 2 credits each, queue of 3
    out = rs.submit([item(r) for r in "abcdefgh"])
    # Fewest outstanding first (the first slot among equals), never past a replica's credits.
    assert dispatched(rs) == {"addr-d-v1-r0": ["a", "c"], "addr-d-v1-r1": ["b", "d"]}
    assert [rid for rid in "efg" if rid in rs.queue] == ["e", "f", "g"]
    # The queue is full: the last one is answered at once.
    assert finishes(out) == {"h": ("overloaded", "")}
    (h,) = of(out, Finish)
    assert h.event.error.kind == "overloaded" and h.reply_to == CALLER and h.latency_s == 0.0
    assert {s: sorted(r.inflight) for s, r in rs.replicas.items()} == {slot(0): ["a", "c"], slot(1): ["b", "d"]}


def test_a_freed_credit_serves_the_queue_and_each_request_ends_once() -> None:
    clock = Clock()
    rs = serving(clock=clock)
    rs.submit([item(r) for r in "abcde"])
    rs.take_dispatches()
    clock.now = 100.5
    out = rs.progress(ReplicaProgress(f"{slot(1)}.0", ["b"], [final("b", usage=Usage(3, 4))]))
    assert of(out, FirstToken) == [FirstToken("default", slot(1), 0.5, "1")]
    (done,) = of(out, Finish)
    assert (done.outcome, done.replica, done.latency_s, done.version) == ("ok", slot(1), 0.5, "1")
    assert done.event.usage == Usage(3, 4)
    assert dispatched(rs) == {"addr-d-v1-r1": ["e"]}  # r1 had the free credit
    assert "b" not in rs.inflight and len(rs.queue) == 0
    # A second final for the same request (or one from another instance) changes nothing.
    assert of(rs.progress(ReplicaProgress(f"{slot(1)}.0", [], [final("b")])), Finish) == []
    assert rs.progress(ReplicaProgress(f"{slot(1)}.9", [], [final("e")])) == []


def test_a_duplicate_request_is_refused_and_a_resent_copy_ignored() -> None:
    rs = serving()
    rs.submit([item("a")])
    out = rs.submit([item("a")])
    assert finishes(out) == {"a": ("invalid_request", "")}
    copy = WorkItem(item("a").request, CALLER, resent=True)
    assert of(rs.submit([copy]), Finish) == []
    assert list(rs.inflight) == ["a"]


def test_deadline_passed_before_admission_is_answered_timeout() -> None:
    rs = serving()
    out = rs.submit([item("late", deadline=WALL - 1), item("ok", deadline=WALL + 60)])
    assert finishes(out) == {"late": ("timeout", "")}
    assert dispatched(rs) == {"addr-d-v1-r0": ["ok"]}


def test_cancel_tells_the_replica_and_drops_the_waiting() -> None:
    rs = serving(n=1)
    rs.submit([item(r) for r in "abc"])  # a, b on the replica; c waits
    out = rs.cancel(["a", "c", "zzz"])
    assert of(out, ToReplica) == [ToReplica("addr-d-v1-r0", Cancel(["a"]))]
    assert finishes(out) == {"c": ("cancelled", "")}
    assert "a" in rs.inflight  # until its replica reports its end


def test_tenant_quota_keeps_its_requests_waiting() -> None:
    dep = deployment()
    rs = ReplicaSet(
        dep, [Tenant(name="t", key_sha256=hash_key("k"), max_concurrency=1)], clock=Clock(), wall_clock=lambda: WALL
    )
    rs.start([placement(slot(0))])
    rs.ready(ready_msg(f"{slot(0)}.0"))
    rs.submit([item("t1", tenant="t"), item("t2", tenant="t"), item("u1", tenant="u")])
    assert dispatched(rs) == {"addr-d-v1-r0": ["t1", "u1"]}
    assert "t2" in rs.queue


def test_settles_token_debits_with_the_real_usage() -> None:
    rs = serving(n=1)
    debited = WorkItem(item("a").request, CALLER, debits=(("key", 50),))
    rs.submit([debited])
    out = rs.progress(ReplicaProgress(f"{slot(0)}.0", [], [final("a", usage=Usage(10, 5))]))
    assert of(out, ToLimiter) == [ToLimiter(Settle((("key", 50),), 15))]


# ---- fail-over ----


def test_dead_replica_requests_redispatched_or_answered_runner_crashed() -> None:
    rs = serving(deployment(limits=Limits(max_inflight_per_replica=3, max_queue=3)))
    rs.submit([item(r) for r in "abc"])  # a, c -> r0; b -> r1
    assert dispatched(rs) == {"addr-d-v1-r0": ["a", "c"], "addr-d-v1-r1": ["b"]}
    rs.progress(ReplicaProgress(f"{slot(0)}.0", ["a"], []))  # a is streaming, c is not
    out = rs.exited(f"{slot(0)}.0")
    # a had sent chunks: it cannot run again and is answered; c had not: it moves to r1.
    assert finishes(out) == {"a": ("runner_crashed", slot(0))}
    (crashed,) = of(out, Finish)
    assert crashed.event.error.message == f"replica {slot(0)}.0 of d died while streaming"
    assert dispatched(rs) == {"addr-d-v1-r1": ["c"]}
    assert {rid: f.slot for rid, f in rs.inflight.items()} == {"b": slot(1), "c": slot(1)}
    # The replica restarts after its backoff; r1 keeps the deployment ready meanwhile.
    assert of(out, Restarted) == [Restarted(slot(0), "1")]
    assert of(out, WakeUp) == [WakeUp(0.1, ("restart", slot(0)))]
    assert rs.replicas[slot(0)].state == "restarting" and rs.state == "ready"
    # Late news from the dead instance is ignored: its requests were answered or moved.
    assert rs.progress(ReplicaProgress(f"{slot(0)}.0", [], [final("a"), final("c")])) == []


def test_requests_not_yet_sent_to_a_dead_replica_go_elsewhere() -> None:
    rs = serving()
    rs.submit([item("a"), item("b")])  # batched for r0 and r1, not sent yet
    rs.exited(f"{slot(0)}.0")
    assert dispatched(rs) == {"addr-d-v1-r1": ["b", "a"]}


def test_no_live_replica_sends_waiting_requests_to_the_fallback() -> None:
    dep = deployment(fallbacks=("backup",), supervision=Supervision(restart=False))
    rs = serving(dep, n=1)
    rs.submit([item(r) for r in "abcd"])  # a, b on r0; c, d wait
    rs.progress(ReplicaProgress(f"{slot(0)}.0", ["a"], []))
    out = rs.exited(f"{slot(0)}.0")
    assert rs.replicas[slot(0)].state == "isolated"
    # a had streamed: runner_crashed; b, c and d had not: they move to the fallback deployment.
    assert finishes(out) == {
        "a": ("runner_crashed", slot(0)),
        "b": ("fallback", ""),
        "c": ("fallback", ""),
        "d": ("fallback", ""),
    }
    assert [(f.item.request.request_id, f.item.request.model) for f in of(out, Forward)] == [
        ("b", "backup"),
        ("c", "backup"),
        ("d", "backup"),
    ]
    assert rs.state == "degraded" and not rs.inflight and len(rs.queue) == 0


def test_no_live_replica_and_no_fallback_answers_unavailable() -> None:
    rs = serving(deployment(supervision=Supervision(restart=False)), n=1)
    rs.submit([item(r) for r in "abc"])
    out = rs.exited(f"{slot(0)}.0")
    assert finishes(out) == {"a": ("unavailable", ""), "b": ("unavailable", ""), "c": ("unavailable", "")}


def test_retryable_failure_before_the_first_chunk_goes_to_the_fallback() -> None:
    rs = serving(deployment(fallbacks=("backup",)), n=1)
    rs.submit([item("a"), item("b")])
    busy = OverloadedError("busy").info()
    out = rs.progress(ReplicaProgress(f"{slot(0)}.0", [], [final("a", busy, seq=0), final("b", busy, seq=2)]))
    assert [f.item.request.request_id for f in of(out, Forward)] == ["a"]
    assert finishes(out) == {"a": ("fallback", slot(0)), "b": ("overloaded", slot(0))}


# ---- supervision ----


def test_restart_backoff_doubles_then_isolates_past_the_intensity() -> None:
    clock = Clock()
    sup = Supervision(backoff_initial_s=0.5, backoff_max_s=10.0, max_restarts=2, window_s=10.0)
    rs = serving(deployment(supervision=sup), n=1, clock=clock)
    s = slot(0)
    for n, backoff in [(1, 0.5), (2, 1.0)]:
        clock.now += 1
        out = rs.exited(f"{s}.{n - 1}")
        assert of(out, WakeUp) == [WakeUp(backoff, ("restart", s))]
        assert rs.replicas[s].state == "restarting" and rs.replicas[s].restarts == n
        assert rs.restart_due(s) == [ToManager(PlaceReplica(rs.dep, s, f"{s}.{n}"))]
        assert rs.placed(placement(s, n, agent="agent-b")) == []
        assert rs.replicas[s].state == "starting" and rs.replicas[s].node_agent == "agent-b"
        rs.ready(ready_msg(f"{s}.{n}"))
    clock.now += 1  # a third death within 10 s of the first restart
    out = rs.exited(f"{s}.2")
    assert of(out, WakeUp) == [] and of(out, Restarted) == []
    r = rs.replicas[s]
    assert (r.state, r.restarts) == ("isolated", 2)
    assert r.error == "2 restarts within 10 s; last failure: its process exited"
    assert rs.state == "degraded"
    assert rs.restart_due(s) == []  # a stale timer does nothing


def test_restarts_older_than_the_window_do_not_count() -> None:
    clock = Clock()
    sup = Supervision(backoff_initial_s=0.5, max_restarts=1, window_s=10.0)
    rs = serving(deployment(supervision=sup), n=1, clock=clock)
    s = slot(0)
    rs.exited(f"{s}.0")
    rs.restart_due(s)
    rs.placed(placement(s, 1))
    rs.ready(ready_msg(f"{s}.1"))
    clock.now += 10.5  # the first restart left the window
    out = rs.exited(f"{s}.1")
    assert of(out, WakeUp) == [WakeUp(0.5, ("restart", s))]
    assert rs.replicas[s].restarts == 2


def test_permanent_load_failure_is_isolated_at_once() -> None:
    rs = ReplicaSet(deployment(), clock=Clock(), wall_clock=lambda: WALL)
    rs.start([placement(slot(0))])
    err = NotFoundError("model file missing: m/model.onnx").info()
    assert is_permanent(err)
    out = rs.failed(f"{slot(0)}.0", err)
    assert out[0] == ToNode("agent-a", StopReplica(f"{slot(0)}.0"))  # its process is still alive
    assert of(out, WakeUp) == [] and of(out, Restarted) == []
    assert rs.replicas[slot(0)].state == "isolated"
    assert (rs.state, rs.error) == ("failed", "no replica could start: model file missing: m/model.onnx")
    # A failed deployment refuses new requests.
    assert finishes(rs.submit([item("a")])) == {"a": ("not_found", "")}


def test_transient_load_failure_is_restarted() -> None:
    rs = ReplicaSet(deployment(), clock=Clock(), wall_clock=lambda: WALL)
    rs.start([placement(slot(0))])
    err = InternalError("engine hiccup").info()
    assert not is_permanent(err)
    out = rs.failed(f"{slot(0)}.0", err)
    assert without_reports(out) == [
        ToNode("agent-a", StopReplica(f"{slot(0)}.0")),
        Restarted(slot(0), "1"),
        WakeUp(0.1, ("restart", slot(0))),
    ]
    assert (rs.replicas[slot(0)].state, rs.replicas[slot(0)].error) == ("restarting", "engine hiccup")


def test_a_replica_no_node_can_host_waits_for_a_node_to_join() -> None:
    rs = serving(n=2)
    rs.exited(f"{slot(0)}.0")
    rs.restart_due(slot(0))
    rs.placed(ReplicaPlaced(slot(0), f"{slot(0)}.1", None, reason="no free GPU"))
    r = rs.replicas[slot(0)]
    assert (r.state, r.unplaced, r.error) == ("isolated", True, "no node can host it: no free GPU")
    out = rs.node_joined("node-b")
    assert of(out, WakeUp) == [WakeUp(0.01, ("restart", slot(0)))]
    assert (r.state, r.unplaced) == ("restarting", False)


def test_drain_stops_replicas_once_their_requests_end() -> None:
    rs = serving(n=2)
    rs.submit([item("a")])
    out = rs.drain()
    assert of(out, ToNode) == [] and rs.state == "draining"
    out = rs.progress(ReplicaProgress(f"{slot(0)}.0", [], [final("a")]))
    assert of(out, ToNode) == [
        ToNode("agent-a", StopReplica(f"{slot(0)}.0")),
        ToNode("agent-a", StopReplica(f"{slot(1)}.0")),
    ]
    assert ToManager(Drained("d")) not in rs.exited(f"{slot(0)}.0")
    assert ToManager(Drained("d")) in rs.exited(f"{slot(1)}.0")
    assert all(r.state == "exited" for r in rs.replicas.values())


def test_adopting_a_dead_coordinators_replicas() -> None:
    before = DeploymentInfo(
        "d", "m", "ort", "1", "ready", [ReplicaInfo(slot(0), "node-a", "ready"), ReplicaInfo(slot(1), "", "isolated")]
    )
    rs = ReplicaSet(deployment(), clock=Clock(), wall_clock=lambda: WALL)
    out = rs.start([placement(slot(0)), ReplicaPlaced(slot(1), f"{slot(1)}.0", None)], adopt=True, previous=before)
    assert of(out, AdoptOn) == [AdoptOn("agent-a", f"{slot(0)}.0")]
    assert rs.state == "degraded" and rs.replicas[slot(1)].state == "isolated"
    # The adopted runner host reports a request in progress and an error final of the dead one's.
    busy = StreamEvent("gone", error=OverloadedError("busy").info(), final=True)
    out = rs.ready(ready_msg(f"{slot(0)}.0", inflight=[(item("a"), True)], finals=[(item("gone"), busy)]))
    assert rs.inflight["a"].started and rs.replicas[slot(0)].inflight == {"a"}
    assert of(out, Emit) == [Emit(CALLER, busy)]  # no fallback: its caller gets it (again)


# ---- version switch ----


def new_version(rs: ReplicaSet, **rollout: Any) -> Deployment:
    dep2 = deployment("2", rollout=Rollout(**rollout)) if rollout else deployment("2")
    out = rs.swap(dep2, [placement(slot(0, "2"), agent="agent-b")])
    assert of(out, WakeUp) == [WakeUp(600.0, ("switch-timeout", "2"))]
    return dep2


def test_switch_moves_traffic_then_retires_the_old_replicas() -> None:
    rs = serving(n=1)
    rs.submit([item("a")])  # on the old version
    dep2 = new_version(rs)
    assert rs.info().swap == "starting version 2: 0/1 replicas ready"
    rs.submit([item("b")])  # the new version is not ready: the old one serves
    assert dispatched(rs) == {"addr-d-v1-r0": ["a", "b"]}
    out = rs.ready(ready_msg(f"{slot(0, '2')}.0"))
    # Traffic moves at once (no canary); the old replica is busy, so it is not stopped yet.
    assert of(out, Serve) == [Serve(dep2)] and of(out, ToNode) == []
    assert rs.dep.version == "2" and rs.switch is not None and rs.switch.phase == "draining"
    rs.submit([item("c")])
    assert dispatched(rs) == {"addr-d-v2-r0": ["c"]}
    # The old replica's last requests end: it is stopped; its exit ends the switch.
    rs.progress(ReplicaProgress(f"{slot(0)}.0", [], [final("a")]))
    out = rs.progress(ReplicaProgress(f"{slot(0)}.0", [], [final("b")]))
    assert of(out, ToNode) == [ToNode("agent-a", StopReplica(f"{slot(0)}.0"))]
    assert rs.info().swap == "serving version 2; version 1 draining (1 replica(s) left)"
    out = rs.exited(f"{slot(0)}.0")
    (ended,) = [a.message for a in of(out, ToManager) if isinstance(a.message, SwapEnded)]
    assert (ended.name, ended.version, ended.ok, ended.reason, ended.released_slots) == ("d", "2", True, "", [slot(0)])
    assert list(rs.replicas) == [slot(0, "2")] and rs.switch is None and rs.state == "ready"
    assert ended.info is not None and ended.info.version == "2" and ended.info.swap is None


def test_canary_share_then_all_traffic() -> None:
    rs = serving(n=1, draws=[0.05, 0.5, 0.09])
    new_version(rs, canary_share=0.1, canary_s=30.0)
    out = rs.ready(ready_msg(f"{slot(0, '2')}.0"))
    assert of(out, WakeUp) == [WakeUp(30.0, ("switch-canary", "2"))] and of(out, Serve) == []
    assert rs.info().swap == "canary: 10% of new requests to version 2"
    rs.submit([item("a"), item("b"), item("c")])  # draws 0.05 and 0.09 fall in the 10 % share
    assert dispatched(rs) == {"addr-d-v2-r0": ["a", "c"], "addr-d-v1-r0": ["b"]}
    assert rs.switch_timer("switch-canary", "3") == []  # another switch's timer
    out = rs.switch_timer("switch-canary", "2")
    assert [a.dep.version for a in of(out, Serve)] == ["2"]
    assert of(out, ToNode) == []  # the old replica still serves b
    rs.submit([item("d")])  # the new replica is full (a, c): d waits, the old one takes no more
    assert dispatched(rs) == {} and "d" in rs.queue
    rs.progress(ReplicaProgress(f"{slot(0, '2')}.0", [], [final("a")]))
    assert dispatched(rs) == {"addr-d-v2-r0": ["d"]}


def test_new_version_failing_to_load_is_rolled_back() -> None:
    rs = serving(n=1, draws=[0.0])
    new_version(rs)
    out = rs.failed(f"{slot(0, '2')}.0", InternalError("CUDA error: boom").info())
    assert out[0] == ToNode("agent-b", StopReplica(f"{slot(0, '2')}.0"))
    (ended,) = [a.message for a in of(out, ToManager) if isinstance(a.message, SwapEnded)]
    assert (ended.version, ended.ok, ended.released_slots) == ("2", False, [slot(0, "2")])
    assert ended.reason == f"replica {slot(0, '2')}.0 failed to load: CUDA error: boom"
    assert list(rs.replicas) == [slot(0)] and rs.switch is None and rs.dep.version == "1"
    assert rs.state == "ready"


def test_canary_requests_go_back_to_the_old_version_when_the_new_one_dies() -> None:
    rs = serving(n=1, draws=[0.0, 0.0, 0.9])
    new_version(rs, canary_share=0.5, canary_s=30.0)
    rs.ready(ready_msg(f"{slot(0, '2')}.0"))
    rs.submit([item("a"), item("b")])  # both drawn into the canary
    assert dispatched(rs) == {"addr-d-v2-r0": ["a", "b"]}
    rs.progress(ReplicaProgress(f"{slot(0, '2')}.0", ["a"], []))
    out = rs.exited(f"{slot(0, '2')}.0")
    assert finishes(out) == {"a": ("runner_crashed", slot(0, "2"))}
    assert dispatched(rs) == {"addr-d-v1-r0": ["b"]}
    (ended,) = [a.message for a in of(out, ToManager) if isinstance(a.message, SwapEnded)]
    assert (
        not ended.ok
        and ended.reason == f"replica {slot(0, '2')}.0 died while the new version started: its process exited"
    )


def test_new_version_not_ready_in_time_is_rolled_back() -> None:
    rs = serving(n=1)
    new_version(rs)
    assert rs.switch_timer("switch-timeout", "9") == []
    out = rs.switch_timer("switch-timeout", "2")
    assert ToNode("agent-b", StopReplica(f"{slot(0, '2')}.0")) in out
    (ended,) = [a.message for a in of(out, ToManager) if isinstance(a.message, SwapEnded)]
    assert (ended.ok, ended.reason) == (False, "the new replicas were not ready within 600 s")
    assert rs.switch is None and list(rs.replicas) == [slot(0)]


def rep(version: str, state: str, inflight: int = 0) -> Replica:
    return Replica(f"d-v{version}-r0", version, state=state, inflight={f"q{i}" for i in range(inflight)})


def test_version_switch_decisions() -> None:
    sw = VersionSwitch(deployment("2", rollout=Rollout(canary_share=0.25, canary_s=5.0)), "1")
    old, new = rep("1", "ready"), rep("2", "starting")
    assert sw.is_new(new) and not sw.retiring(old)
    assert sw.next_step([old, new]) is None
    new.state = "ready"
    assert sw.next_step([old, new]) == CANARY
    assert sw.begin_canary() == 5.0 and sw.phase == "canary"
    assert sw.target_version("1", lambda: 0.2) == "2" and sw.target_version("1", lambda: 0.25) == "1"
    assert sw.on_timer("switch-timeout", "2") is None and sw.on_timer("switch-canary", "2") == SWITCH
    busy, idle, gone = rep("1", "ready", inflight=1), rep("1", "ready"), rep("1", "isolated")
    assert sw.begin_draining([busy, idle, gone, new]) == [idle]
    assert gone.state == "exited" and sw.retiring(busy) and not sw.is_new(new)
    assert sw.next_step([busy, idle, gone, new]) is None
    busy.state = idle.state = "exited"
    assert sw.next_step([busy, idle, gone, new]) == DONE
    starting = VersionSwitch(deployment("2"), "1")
    assert starting.next_step([rep("2", "ready")]) == SWITCH
    assert starting.on_timer("switch-timeout", "2") == ROLL_BACK
    assert starting.target_version("1", lambda: pytest.fail("no draw outside the canary")) == "1"
