"""Coordinator actor: one per deployment. Owns the replica set and every request it admitted.

Requests go to the ready replica with the fewest outstanding while it has in-flight credits left
(`max_inflight_per_replica`), wait in a bounded fair queue (`atomr.core.fair_queue`: priority
classes, then tenants by weight, within tenant quotas) when all are busy, and are answered
`overloaded` when the queue is full. Every dispatched request is remembered until its replica
reports it finished, so that when a replica dies each request still gets exactly one final
answer: re-dispatched if it had not started streaming, `runner_crashed` if it had.

Supervision follows the deployment's policy: a replica that dies or fails to load is started
again (through the manager, which picks a live node) after an exponential backoff; past the
restart intensity (N restarts within T seconds), or at once for failures a restart cannot fix
(missing files, bad config, out of memory), it is isolated and the deployment is degraded; one
isolated because no node had room is placed again when a node joins. With
no replica left alive, or when a request fails retryably before its first chunk, it goes to the
next deployment in the `fallbacks` list; the caller never sees the switch.

A new version of the deployment (hot swap) starts its replicas beside the serving ones, takes a
canary share of new requests if configured, then all of them while the old replicas drain and
stop; if it fails to start it is rolled back and the old version never stops serving.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, WakeupMessage

from atomr.actors.messages import (
    GATEWAY_NAME,
    METRICS_NAME,
    RATE_LIMITER_NAME,
    Address,
    AdoptReplica,
    Cancel,
    DeploymentState,
    Dispatch,
    Drain,
    Drained,
    MetricsDrop,
    MetricsSnapshot,
    NodeJoined,
    NodeLost,
    PlaceReplica,
    ReplicaExited,
    ReplicaFailed,
    ReplicaPlaced,
    ReplicaProgress,
    ReplicaReady,
    Settle,
    StartCoordinator,
    StopReplica,
    Submit,
    SwapEnded,
    SwapVersion,
    WorkItem,
)
from atomr.actors.sidecar import SidecarActor
from atomr.core.deployment import Deployment
from atomr.core.errors import (
    ErrorInfo,
    InferenceError,
    InferenceTimeoutError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    RunnerCrashedError,
    UnavailableError,
    says_out_of_memory,
)
from atomr.core.fair_queue import FairQueue
from atomr.core.status import DeploymentInfo, ReplicaInfo
from atomr.core.tenants import Tenant
from atomr.core.types import StreamEvent
from atomr.observability.metrics import DeploymentMetrics
from atomr.serving.session import record_end

log = structlog.get_logger("atomr.coordinator")

# Load failures that a restart cannot fix: the replica is isolated at once.
PERMANENT_KINDS = frozenset({"config", "not_found", "invalid_request", "auth"})
METRICS_PERIOD_S = 1.0
LIVE = ("starting", "ready", "restarting")
NO_NODE = "no node can host it"  # how an isolated replica that waits for a node begins its error


def is_permanent(err: ErrorInfo) -> bool:
    """Whether a load failure is one a restart cannot fix (isolate at once): missing files, bad
    configuration, refused credentials, out of memory."""
    return err.kind in PERMANENT_KINDS or bool(err.details.get("out_of_memory")) or says_out_of_memory(err.message)


@dataclass(slots=True)
class Replica:
    slot: str  # stable name of the replica ("name-v1-r0")
    version: str = ""  # the deployment version it runs
    instance: str = ""  # current incarnation ("name-v1-r0.2"); messages about others are stale
    node_agent: Address = None
    node_id: str = ""
    gpu_ids: list[str] = field(default_factory=list)
    state: str = "starting"  # starting | ready | restarting | stopping | exited | isolated
    address: Address = None
    pid: int = 0
    visible_devices: str | None = None
    inflight: set[str] = field(default_factory=set)
    error: str | None = None
    restart_times: collections.deque[float] = field(default_factory=collections.deque)
    restarts: int = 0
    health: dict[str, Any] = field(default_factory=dict)
    unplaced: bool = False  # isolated because no node could host it: placed again when a node joins


@dataclass(slots=True)
class InFlight:
    item: WorkItem
    slot: str
    instance: str  # the replica incarnation it was given to
    started: bool = False


@dataclass(slots=True)
class Switch:
    """A version switch in course: the new version's replicas start beside the serving ones, then
    take a canary share of new requests (if configured), then all of them while the old drain."""

    dep: Deployment
    old_version: str
    phase: str = "starting"  # starting | canary | draining


class Coordinator(SidecarActor):
    defer_flush = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dep: Deployment | None = None
        self.manager: Address = None
        self.replicas: dict[str, Replica] = {}
        self.queue: FairQueue[WorkItem] = FairQueue(_queue_key, capacity=0)  # sized at StartCoordinator
        self.inflight: dict[str, InFlight] = {}
        self.state = "deploying"
        self.error: str | None = None
        self._dispatch: dict[str, list[WorkItem]] = {}
        self._gateway: Address = None
        self._limiter: Address = None
        self._collector: Address = None
        self.metrics: DeploymentMetrics | None = None
        self.metrics_by_version: dict[str, DeploymentMetrics] = {}
        self.arrived: dict[str, float] = {}  # request id -> when it was admitted here (monotonic)
        self.switch: Switch | None = None
        self._reported_load: tuple[Any, ...] = ()

    # ---- replica lifecycle ----

    def receiveMsg_StartCoordinator(self, msg: StartCoordinator, sender: Address) -> None:
        self.dep, self.manager = msg.deployment, msg.manager
        self.queue = self._new_queue(self.dep, msg.tenants)
        self._use_metrics(self.dep)
        self.wakeupAfter(timedelta(seconds=METRICS_PERIOD_S), payload=("metrics", ""))
        before = {ri.replica_id: ri for ri in (msg.previous.replicas if msg.previous is not None else [])}
        if msg.adopt and msg.previous is not None and msg.previous.state in ("ready", "degraded"):
            self.state = msg.previous.state  # serving: requests wait for the adopted replicas
        for p in msg.placements:
            r = Replica(p.slot, self.dep.version)
            self.replicas[p.slot] = r
            self._placed(r, p)
            if msg.adopt:
                self._adopt(r, p, before.get(p.slot))
        if msg.adopt:
            log.warning("coordinator replaced: adopting replicas", deployment=self._name, replicas=len(self.replicas))
            self._changed()

    def _adopt(self, r: Replica, p: ReplicaPlaced, before: ReplicaInfo | None) -> None:
        """Take over a replica of the coordinator this one replaces (its runner host lives on)."""
        if before is not None:
            r.restarts, r.error = before.restarts, before.error
            if before.state == "isolated":
                r.state, r.unplaced = "isolated", (before.error or "").startswith(NO_NODE)
                return
        if p.node_agent is None:  # it was waiting for a node: place it now
            r.state = "restarting"
            self.wakeupAfter(timedelta(seconds=0.01), payload=("restart", r.slot))
            return
        self.send(p.node_agent, AdoptReplica(p.instance, self.myAddress))  # answered by ReplicaReady

    def _placed(self, r: Replica, p: ReplicaPlaced) -> None:
        r.instance, r.node_agent, r.node_id, r.gpu_ids = p.instance, p.node_agent, p.node_id or "", list(p.gpu_ids)
        r.address, r.pid = None, 0

    def _by_instance(self, instance: str) -> Replica | None:
        slot = instance.rpartition(".")[0]
        r = self.replicas.get(slot)
        return r if r is not None and r.instance == instance else None

    def receiveMsg_ReplicaReady(self, msg: ReplicaReady, sender: Address) -> None:
        r = self._by_instance(msg.replica_id)
        if r is None:
            return
        r.address, r.node_id, r.pid, r.visible_devices = msg.address, msg.node_id, msg.pid, msg.visible_devices
        self._take_over(r, msg.inflight, msg.finals)
        if r.state == "stopping" or self.state == "draining" or self._retiring(r):
            self._stop(r)
            return
        r.state, r.error = "ready", None
        log.info("replica ready", deployment=self._name, replica=r.instance, node=r.node_id, pid=r.pid)
        if self._is_new(r):
            self._switch_progress()
        self._changed()

    def _take_over(
        self, r: Replica, inflight: list[tuple[WorkItem, bool]], finals: list[tuple[WorkItem, StreamEvent]]
    ) -> None:
        """An adopted replica's requests in progress become ours; its recent errors reach their callers.

        Those errors went to the dead coordinator and may have been lost with it; each is handled
        as it would have been (a fallback, else the caller), and a caller that already had it
        drops the copy.
        """
        now = time.monotonic()
        for item, started in inflight:
            rid = item.request.request_id
            if rid in self.inflight:
                continue
            self.queue.remove([rid])  # a copy its caller sent again: the replica has it already
            r.inflight.add(rid)
            self.inflight[rid] = InFlight(item, r.slot, r.instance, started)
            self.arrived.setdefault(rid, now)
            self.queue.started(item.request.tenant)
        for item, event in finals:
            rid = item.request.request_id
            if rid in self.inflight or rid in self.queue:
                continue  # sent again meanwhile, and being served
            if not (_retryable(event) and event.seq == 0 and self._forward(item, resent=True)):
                self.emit(item.reply_to, event)

    def receiveMsg_ReplicaFailed(self, msg: ReplicaFailed, sender: Address) -> None:
        r = self._by_instance(msg.replica_id)
        if r is None:
            return
        log.warning("replica failed to load", deployment=self._name, replica=r.instance, error=msg.error.message)
        # The runner host process is still alive: stop it, and do not count its exit again.
        self.send(r.node_agent, StopReplica(r.instance))
        if self._is_new(r):
            r.state = "exited"
            self._roll_back(f"replica {r.instance} failed to load: {msg.error.message}")
            return
        if is_permanent(msg.error):
            self._isolate(r, msg.error.message)
        else:
            self._restart_later(r, msg.error.message)

    def receiveMsg_ReplicaExited(self, msg: ReplicaExited, sender: Address) -> None:
        r = self._by_instance(msg.replica_id)
        if r is None:
            return
        self._replica_gone(r, "its process exited")

    def receiveMsg_NodeLost(self, msg: NodeLost, sender: Address) -> None:
        for instance in msg.instances:
            r = self._by_instance(instance)
            if r is not None:
                self._replica_gone(r, f"node {msg.node_id} was lost")

    def _replica_gone(self, r: Replica, why: str) -> None:
        if r.state in ("restarting", "isolated", "exited"):
            return  # this instance's end was already handled (it failed to load, or was replaced)
        if self._is_new(r):
            r.state, r.address = "exited", None
            self._fail_over(r)
            self._roll_back(f"replica {r.instance} died while the new version started: {why}")
            return
        stopping = r.state == "stopping" or self.state == "draining" or self._retiring(r)
        # Not ready any more before its requests are re-queued, so none goes back to it.
        r.state, r.address = ("exited" if stopping else "restarting"), None
        self._fail_over(r)
        if stopping:
            self._maybe_drained()
            self._switch_progress()
        else:
            log.warning("replica died", deployment=self._name, replica=r.instance, why=why)
            self._restart_later(r, why)
        self._changed()

    def _restart_later(self, r: Replica, reason: str) -> None:
        assert self.dep is not None
        sup = self.dep.supervision
        if not sup.restart or self.state == "draining":
            self._isolate(r, reason)
            return
        now = time.monotonic()
        while r.restart_times and now - r.restart_times[0] > sup.window_s:
            r.restart_times.popleft()
        if len(r.restart_times) >= sup.max_restarts:
            self._isolate(r, f"{len(r.restart_times)} restarts within {sup.window_s:g} s; last failure: {reason}")
            return
        r.restart_times.append(now)
        r.restarts += 1
        m = self._metrics_for(r.slot)
        if m is not None:
            m.restarted(r.slot)
        r.state, r.error, r.address = "restarting", reason, None
        self.wakeupAfter(timedelta(seconds=sup.backoff(len(r.restart_times))), payload=("restart", r.slot))
        self._changed()

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Address) -> None:
        kind, slot = msg.payload
        if kind == "metrics":
            self._ship_metrics()
            if self._load() != self._reported_load:  # queue depth and in-flight counts in status stay fresh
                self._report()
            self.wakeupAfter(timedelta(seconds=METRICS_PERIOD_S), payload=("metrics", ""))
            return
        if kind in ("switch-timeout", "switch-canary"):
            sw = self.switch
            if sw is None or sw.dep.version != slot:
                return
            if kind == "switch-timeout" and sw.phase == "starting":
                self._roll_back(f"the new replicas were not ready within {sw.dep.rollout.ready_timeout_s:g} s")
            elif kind == "switch-canary" and sw.phase == "canary":
                self._switch_traffic()
            return
        r = self.replicas.get(slot)
        if kind != "restart" or r is None or r.state != "restarting" or self.state == "draining":
            return
        assert self.dep is not None
        n = int(r.instance.rpartition(".")[2]) + 1
        self.send(self.manager, PlaceReplica(self.dep, slot, f"{slot}.{n}"))

    def receiveMsg_ReplicaPlaced(self, msg: ReplicaPlaced, sender: Address) -> None:
        r = self.replicas.get(msg.slot)
        if r is None or r.state != "restarting":
            return
        if msg.node_id is None:
            self._isolate(r, f"{NO_NODE}: {msg.reason}")
            r.unplaced = True
            return
        self._placed(r, msg)
        r.state = "starting"
        log.info("replica restarting", deployment=self._name, replica=r.instance, node=r.node_id)

    def receiveMsg_NodeJoined(self, msg: NodeJoined, sender: Address) -> None:
        """A new node may have room for the replicas that no node could host: place them again."""
        if self.state == "draining":
            return
        for r in self.replicas.values():
            if r.state == "isolated" and r.unplaced and not self._is_new(r) and not self._retiring(r):
                log.info("node joined: placing replica again", deployment=self._name, replica=r.slot, node=msg.node_id)
                r.state, r.unplaced = "restarting", False
                self.wakeupAfter(timedelta(seconds=0.01), payload=("restart", r.slot))
        self._changed()

    def _isolate(self, r: Replica, reason: str) -> None:
        log.error("replica isolated", deployment=self._name, replica=r.instance, reason=reason)
        r.state, r.error, r.address, r.unplaced = "isolated", reason, None, False
        self._fail_over(r)
        self._changed()

    def _stop(self, r: Replica) -> None:
        if r.state in LIVE and r.node_agent is not None:
            self.send(r.node_agent, StopReplica(r.instance))
            r.state = "stopping"

    def receiveMsg_Drain(self, msg: Drain, sender: Address) -> None:
        self.state = "draining"
        for r in self.replicas.values():
            if r.state == "restarting":
                r.state = "exited"
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.state != "draining" or self.inflight or len(self.queue):
            return
        for r in self.replicas.values():
            self._stop(r)
        if all(r.state in ("exited", "isolated") for r in self.replicas.values()):
            self.send(self.manager, Drained(self._name))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Address) -> None:
        for rid in list(self.inflight):
            self._answer(rid, RunnerCrashedError("deployment stopped").info())
        for item in self.queue.drain():
            self._finish(item, _error_event(item, NotFoundError(f"deployment {self._name} stopped")))
        for m in self.metrics_by_version.values():
            self.send(self._metrics_collector(), MetricsDrop(m.source))

    def _changed(self) -> None:
        """Recompute the deployment state, serve what waits, and tell the manager."""
        before = self.state
        if self.state not in ("draining", "failed"):
            states = [r.state for r in self.replicas.values()]
            settled = all(s in ("ready", "isolated") for s in states)
            if self.state == "deploying" and not settled:
                pass
            elif "ready" in states:
                self.state = "degraded" if "isolated" in states else "ready"
            elif any(s in LIVE for s in states):
                self.state = "degraded"
            elif self.dep is not None and self.dep.fallbacks:
                self.state = "degraded"
            else:
                self.state = "failed" if before == "deploying" else "degraded"
                errors = [r.error for r in self.replicas.values() if r.error]
                self.error = f"no replica could start: {errors[0]}" if errors else "no replica could start"
        self._pump()
        self._report()

    # ---- requests ----

    def receiveMsg_Submit(self, msg: Submit, sender: Address) -> None:
        assert self.dep is not None
        self._gateway = sender  # requests come from gateways: fallbacks go back through a live one
        now = time.monotonic()
        for item in msg.items:
            self.arrived.setdefault(item.request.request_id, now)
        if self.state in ("draining", "failed"):
            for item in msg.items:
                gone = NotFoundError(f"model {item.request.model!r} is being removed", field="model")
                self._finish(item, _error_event(item, gone))
            return
        for item in msg.items:
            req = item.request
            if req.deadline is not None and time.time() > req.deadline:
                self._finish(item, _error_event(item, InferenceTimeoutError("deadline passed before admission")))
                continue
            if req.request_id in self.inflight or req.request_id in self.queue:
                if item.resent:  # its caller asked again, unsure it arrived: it is in hand already
                    continue
                dup = InvalidRequestError(f"request {req.request_id} is already being served", field="request_id")
                self._finish(item, _error_event(item, dup))
                continue
            # Straight to a replica when nothing waits and the tenant is under its quota.
            if not len(self.queue) and self.queue.can_start(req.tenant) and self._assign(item):
                self.queue.started(req.tenant)
                continue
            try:
                self.queue.push(item)
            except OverloadedError as err:
                self._finish(item, _error_event(item, err))
        self._pump()

    def receiveMsg_ReplicaProgress(self, msg: ReplicaProgress, sender: Address) -> None:
        r = self._by_instance(msg.replica_id)
        if r is None:
            return  # from an instance already given up on: its requests were answered or moved
        if msg.health is not None:
            r.health = msg.health
            self._report()
        now = time.monotonic()
        for rid in msg.started:
            f = self.inflight.get(rid)
            if f is not None and f.instance == msg.replica_id:
                f.started = True
                t0 = self.arrived.get(rid)
                m = self._metrics_for(r.slot)
                if t0 is not None and m is not None:
                    m.first_token(f.item.request.tenant, r.slot, now - t0)
        for reply_to, event in msg.finals:
            f = self.inflight.get(event.request_id)
            if f is not None and f.instance == msg.replica_id:
                del self.inflight[event.request_id]
                r.inflight.discard(event.request_id)
                self.queue.finished(f.item.request.tenant)
                self._settle(f.item, event)
                if _retryable(event) and event.seq == 0 and self._forward(f.item):
                    self._finish(f.item, None, replica=r.slot, outcome="fallback")
                    continue  # nothing reached the caller yet: the fallback answers instead
                self._finish(f.item, event, replica=r.slot, reply_to=reply_to)
        if self._retiring(r) and not r.inflight:
            self._stop(r)
        self._pump()
        self._maybe_drained()

    def receiveMsg_Cancel(self, msg: Cancel, sender: Address) -> None:
        by_replica: dict[str, list[str]] = {}
        for rid in msg.request_ids:
            f = self.inflight.get(rid)
            if f is not None:
                by_replica.setdefault(f.slot, []).append(rid)
        for slot, rids in by_replica.items():
            r = self.replicas[slot]
            if r.address is not None:
                self.send(r.address, Cancel(rids))
        for item in self.queue.remove(msg.request_ids):  # waiting ones: the caller is gone
            self._finish(item, None, outcome="cancelled")

    def _assign(self, item: WorkItem, best: Replica | None = None) -> bool:
        """Give `item` to the least-loaded ready replica with a free credit, if any."""
        assert self.dep is not None
        best = best or self._least_loaded(self._target_version()) or self._least_loaded(self.dep.version)
        if best is None:
            return False
        rid = item.request.request_id
        best.inflight.add(rid)
        self.inflight[rid] = InFlight(item, best.slot, best.instance)
        self._dispatch.setdefault(best.slot, []).append(item)
        return True

    def _least_loaded(self, version: str) -> Replica | None:
        assert self.dep is not None
        cap = self.dep.limits.max_inflight_per_replica
        best: Replica | None = None
        for r in self.replicas.values():
            if (
                r.version == version
                and r.state == "ready"
                and len(r.inflight) < cap
                and (best is None or len(r.inflight) < len(best.inflight))
            ):
                best = r
        return best

    def _target_version(self) -> str:
        """The version a new request goes to: the serving one, or during a canary the new one by share."""
        assert self.dep is not None
        sw = self.switch
        if sw is not None and sw.phase == "canary" and random.random() < sw.dep.rollout.canary_share:
            return sw.dep.version
        return self.dep.version

    def _pump(self) -> None:
        """Serve waiting requests in fair order while a replica has a free credit."""
        assert self.dep is not None
        while len(self.queue):
            best = self._least_loaded(self._target_version()) or self._least_loaded(self.dep.version)
            if best is None:
                break
            item = self.queue.pop()
            if item is None:  # every waiting tenant is at its concurrency quota
                break
            self._assign(item, best)
        for expired in self.queue.take_expired():  # dropped before they reach an engine
            self._finish(expired, _error_event(expired, InferenceTimeoutError("deadline passed in queue")))
        if len(self.queue) and not any(r.state in LIVE for r in self.replicas.values()):
            self._elsewhere(self.queue.drain())

    def _elsewhere(self, items: list[WorkItem]) -> None:
        """No replica is alive: hand requests to the fallback deployment, or answer unavailable."""
        for item in items:
            if not self._forward(item):
                err = UnavailableError(f"deployment {self._name} has no live replica", retry_after=1.0)
                self._finish(item, _error_event(item, err))
            else:
                self._finish(item, None, outcome="fallback")

    def _forward(self, item: WorkItem, resent: bool = False) -> bool:
        """Send `item` to the next deployment of its fallback list; False when there is none."""
        assert self.dep is not None
        onward = item.onward(self.dep.fallbacks)
        if onward is None:
            return False
        if self._gateway is None:
            from atomr.actors.gateway import Gateway

            self._gateway = self.createActor(Gateway, globalName=GATEWAY_NAME)
        req = onward.request
        log.info("request to fallback", deployment=self._name, fallback=req.model, request=req.request_id)
        self.send(self._gateway, Submit([dataclasses.replace(onward, resent=resent)]))
        return True

    def _settle(self, item: WorkItem, event: StreamEvent) -> None:
        """Tell the rate limiter what a token-limited request really used."""
        settle = Settle.of(item.debits, event.usage)
        if settle is None:
            return
        if self._limiter is None:
            from atomr.actors.rate_limiter import RateLimiter

            self._limiter = self.createActor(RateLimiter, globalName=RATE_LIMITER_NAME)
        self.send(self._limiter, settle)

    def _fail_over(self, r: Replica) -> None:
        """Answer or re-queue every request that was on replica `r`."""
        pending = [self.inflight.pop(rid) for rid in list(r.inflight) if rid in self.inflight]
        r.inflight.clear()
        self._dispatch.pop(r.slot, None)
        for f in reversed(pending):
            if f.started:
                self.queue.finished(f.item.request.tenant)
                err = RunnerCrashedError(f"replica {r.instance} of {self._name} died while streaming")
                self._finish(f.item, _error_event(f.item, err), replica=r.slot)
            else:
                self.queue.finished(f.item.request.tenant)
                self.queue.push_front(f.item)
        self._pump()

    def _answer(self, rid: str, info: ErrorInfo) -> None:
        f = self.inflight.pop(rid, None)
        if f is not None:
            self.queue.finished(f.item.request.tenant)
            self._finish(f.item, StreamEvent(rid, error=info, final=True, deployment=self._name), replica=f.slot)

    def after_drain(self) -> None:
        if self._dispatch:
            batches, self._dispatch = self._dispatch, {}
            for slot, items in batches.items():
                self.send(self.replicas[slot].address, Dispatch(items))
        super().after_drain()

    def _finish(
        self,
        item: WorkItem,
        event: StreamEvent | None,
        *,
        replica: str = "",
        outcome: str | None = None,
        reply_to: Address = None,
    ) -> None:
        """A request's end here: record it, log its one line, and send its final event (if any)."""
        req = item.request
        t0 = self.arrived.pop(req.request_id, None)
        latency = time.monotonic() - t0 if t0 is not None else 0.0
        if outcome is None:
            outcome = "ok" if event is None or event.error is None else event.error.kind
        usage = event.usage if event is not None else None
        record_end(self._metrics_for(replica), req, self._name, replica, outcome, latency, usage)
        if event is not None:
            self.emit(reply_to if reply_to is not None else item.reply_to, event)

    def _metrics_collector(self) -> Address:
        if self._collector is None:
            from atomr.actors.metrics_collector import MetricsCollector

            self._collector = self.createActor(MetricsCollector, globalName=METRICS_NAME)
        return self._collector

    def _ship_metrics(self) -> None:
        for version, m in self.metrics_by_version.items():
            m.replicas(
                len(self.queue) if m is self.metrics else 0,
                [
                    (r.slot, r.state == "ready", len(r.inflight), (r.health.get("circuit") or {}).get("state"))
                    for r in self.replicas.values()
                    if r.version == version
                ],
            )
            families = m.take_snapshot()
            if families is not None:
                self.send(self._metrics_collector(), MetricsSnapshot(m.source, families))

    # ---- version switch (hot swap) ----

    def receiveMsg_SwapVersion(self, msg: SwapVersion, sender: Address) -> None:
        assert self.dep is not None
        new = msg.deployment
        self.switch = Switch(new, self.dep.version)
        for p in msg.placements:
            r = Replica(p.slot, new.version)
            self.replicas[p.slot] = r
            self._placed(r, p)
        log.info("version switch", deployment=self._name, old=self.dep.version, new=new.version)
        self.wakeupAfter(timedelta(seconds=new.rollout.ready_timeout_s), payload=("switch-timeout", new.version))
        self._report()

    def _is_new(self, r: Replica) -> bool:
        """A replica of the version being started (before traffic moved to it)."""
        sw = self.switch
        return sw is not None and sw.phase in ("starting", "canary") and r.version == sw.dep.version

    def _retiring(self, r: Replica) -> bool:
        """A replica of the old version after traffic moved to the new one."""
        sw = self.switch
        return sw is not None and sw.phase == "draining" and r.version == sw.old_version

    def _switch_progress(self) -> None:
        sw = self.switch
        if sw is None:
            return
        if sw.phase == "starting":
            new = [r for r in self.replicas.values() if r.version == sw.dep.version]
            if new and all(r.state == "ready" for r in new):
                rollout = sw.dep.rollout
                if rollout.canary_share > 0 and rollout.canary_s > 0:
                    sw.phase = "canary"
                    log.info("canary", deployment=self._name, version=sw.dep.version, share=rollout.canary_share)
                    self.wakeupAfter(timedelta(seconds=rollout.canary_s), payload=("switch-canary", sw.dep.version))
                    self._report()
                else:
                    self._switch_traffic()
        elif sw.phase == "draining":
            old = [r for r in self.replicas.values() if r.version == sw.old_version]
            if all(r.state in ("exited", "isolated") for r in old):
                for r in old:
                    del self.replicas[r.slot]
                self.switch = None
                log.info("version switch done", deployment=self._name, version=sw.dep.version)
                self._changed()
                released = [r.slot for r in old]
                self.send(self.manager, SwapEnded(self._name, sw.dep.version, True, "", released, self.info()))

    def _switch_traffic(self) -> None:
        """Every new request now goes to the new version; the old replicas stop once idle."""
        sw = self.switch
        assert sw is not None
        sw.phase = "draining"
        self.dep = sw.dep
        self._use_metrics(sw.dep)
        log.info("traffic switched", deployment=self._name, version=sw.dep.version)
        for r in list(self.replicas.values()):
            if r.version == sw.old_version:
                if r.state in LIVE and not r.inflight:
                    self._stop(r)
                elif r.state not in LIVE and r.state != "stopping":
                    r.state = "exited"
        self._pump()
        self._switch_progress()
        self._report()

    def _roll_back(self, reason: str) -> None:
        """The new version failed before taking all traffic: stop it; the old one keeps serving."""
        sw = self.switch
        if sw is None:
            return
        log.error("version switch rolled back", deployment=self._name, version=sw.dep.version, reason=reason)
        gone = [r for r in self.replicas.values() if r.version == sw.dep.version]
        for r in gone:
            self._stop(r)
            self._fail_over(r)  # canary requests that had not started go back to the old version
            del self.replicas[r.slot]
        self.switch = None
        self._changed()
        released = [r.slot for r in gone]
        self.send(self.manager, SwapEnded(self._name, sw.dep.version, False, reason, released, self.info()))

    def _new_queue(self, dep: Deployment, tenants: list[Tenant]) -> FairQueue[WorkItem]:
        """The waiting room: priority classes, then weighted fair shares, within tenant quotas."""
        limits = dep.limits
        return FairQueue(
            _queue_key,
            capacity=limits.max_queue,
            max_per_tenant=limits.max_queue_per_tenant,
            weights={t.name: t.weight for t in tenants},
            max_inflight={t.name: t.max_concurrency for t in tenants},
            name=f"deployment {dep.name}",
        )

    def _use_metrics(self, dep: Deployment) -> None:
        m = self.metrics_by_version.get(dep.version)
        if m is None:
            m = self.metrics_by_version[dep.version] = DeploymentMetrics(dep.name, dep.version, dep.runtime)
        self.metrics = m

    def _metrics_for(self, slot: str) -> DeploymentMetrics | None:
        r = self.replicas.get(slot)
        return self.metrics_by_version.get(r.version, self.metrics) if r is not None else self.metrics

    # ---- reporting ----

    @property
    def _name(self) -> str:
        return self.dep.name if self.dep is not None else "?"

    def info(self) -> DeploymentInfo:
        assert self.dep is not None
        return DeploymentInfo(
            name=self.dep.name,
            model=self.dep.model,
            runtime=self.dep.runtime,
            version=self.dep.version,
            state=self.state,
            replicas=[
                ReplicaInfo(
                    r.slot,
                    r.node_id,
                    r.state,
                    r.pid,
                    list(r.gpu_ids),
                    len(r.inflight),
                    r.error,
                    r.restarts,
                    visible_devices=r.visible_devices,
                    health=dict(r.health),
                )
                for r in self.replicas.values()
            ],
            queued=len(self.queue),
            aliases=list(self.dep.aliases),
            error=self.error,
            swap=self._switch_text(),
            coordinator_pid=os.getpid(),
        )

    def _switch_text(self) -> str | None:
        sw = self.switch
        if sw is None:
            return None
        new = [r for r in self.replicas.values() if r.version == sw.dep.version]
        if sw.phase == "starting":
            ready = sum(1 for r in new if r.state == "ready")
            return f"starting version {sw.dep.version}: {ready}/{len(new)} replicas ready"
        if sw.phase == "canary":
            return f"canary: {sw.dep.rollout.canary_share:.0%} of new requests to version {sw.dep.version}"
        left = sum(1 for r in self.replicas.values() if r.version == sw.old_version and r.state not in ("exited",))
        return f"serving version {sw.dep.version}; version {sw.old_version} draining ({left} replica(s) left)"

    def _load(self) -> tuple[Any, ...]:
        return len(self.queue), tuple(len(r.inflight) for r in self.replicas.values())

    def _report(self) -> None:
        if self.manager is not None and self.dep is not None:
            self._reported_load = self._load()  # what the manager now shows
            self.send(self.manager, DeploymentState(self.info()))


def _queue_key(item: WorkItem) -> tuple[str, int, float | None, str]:
    req = item.request
    return req.tenant, req.priority, req.deadline, req.request_id


def _retryable(event: StreamEvent) -> bool:
    return event.error is not None and event.error.retryable


def _error_event(item: WorkItem, err: InferenceError) -> StreamEvent:
    return StreamEvent(item.request.request_id, error=err.info(), final=True)
