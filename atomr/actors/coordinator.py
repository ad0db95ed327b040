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

This actor is the thin part: it receives the messages, owns the timers and the addresses of the
actors it talks to, and carries out what the replica set decides. The decisions live in plain
state machines that know nothing of Thespian: `atomr.actors.replica_set.ReplicaSet` (dispatch,
queueing, fail-over, supervision) and `atomr.actors.hot_swap.VersionSwitch` (the version switch).
Each request's metrics and its one log line are recorded here, when its end is carried out.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, WakeupMessage

from atomr.actors.dispatcher import (
    Action,
    AdoptOn,
    Emit,
    Finish,
    FirstToken,
    Forward,
    Restarted,
    Serve,
    ToLimiter,
    ToManager,
    ToNode,
    ToReplica,
    WakeUp,
)
from atomr.actors.messages import (
    GATEWAY_NAME,
    KEYS_NAME,
    METRICS_NAME,
    RATE_LIMITER_NAME,
    Address,
    AdoptReplica,
    Cancel,
    Dispatch,
    Drain,
    MetricsDrop,
    MetricsSnapshot,
    NodeJoined,
    NodeLost,
    ReplicaExited,
    ReplicaFailed,
    ReplicaPlaced,
    ReplicaProgress,
    ReplicaReady,
    SpendRecords,
    StartCoordinator,
    Submit,
    SwapVersion,
    WorkItem,
)
from atomr.actors.replica_set import ReplicaSet, is_permanent
from atomr.actors.sidecar import SidecarActor
from atomr.core.deployment import Deployment
from atomr.core.spend import SpendBatch
from atomr.observability import tracing
from atomr.observability.metrics import DeploymentMetrics
from atomr.serving.session import record_end

__all__ = ["METRICS_PERIOD_S", "Coordinator", "is_permanent"]

log = structlog.get_logger("atomr.coordinator")

METRICS_PERIOD_S = 1.0


class Coordinator(SidecarActor):
    defer_flush = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rs: ReplicaSet | None = None  # made at StartCoordinator
        self.manager: Address = None
        self._gateway: Address = None
        self._limiter: Address = None
        self._collector: Address = None
        self._keeper: Address = None
        self._spent = SpendBatch()  # runs that ended, for the key keeper
        self.metrics: DeploymentMetrics | None = None  # the serving version's
        self.metrics_by_version: dict[str, DeploymentMetrics] = {}
        # Requests that came before StartCoordinator. A replacement coordinator's route is
        # published while the manager's StartCoordinator may still wait for the new process to
        # report in, so a gateway's Submit can overtake it; they are served once it arrives.
        self._early: list[tuple[Any, Address]] = []
        self._spans = tracing.request_spans()  # each request's span, admission to end (None: tracing off)

    @property
    def replica_set(self) -> ReplicaSet:
        assert self.rs is not None, "no StartCoordinator yet"
        return self.rs

    # ---- messages in ----

    def receiveMsg_StartCoordinator(self, msg: StartCoordinator, sender: Address) -> None:
        self.manager = msg.manager
        self.rs = ReplicaSet(msg.deployment, msg.tenants)
        self._use_metrics(msg.deployment)
        self.wakeupAfter(timedelta(seconds=METRICS_PERIOD_S), payload=("metrics", ""))
        self._carry_out(self.rs.start(msg.placements, adopt=msg.adopt, previous=msg.previous))
        early, self._early = self._early, []
        for early_msg, early_sender in early:
            getattr(self, f"receiveMsg_{type(early_msg).__name__}")(early_msg, early_sender)

    def receiveMsg_ReplicaReady(self, msg: ReplicaReady, sender: Address) -> None:
        self._carry_out(self.replica_set.ready(msg))

    def receiveMsg_ReplicaFailed(self, msg: ReplicaFailed, sender: Address) -> None:
        self._carry_out(self.replica_set.failed(msg.replica_id, msg.error))

    def receiveMsg_ReplicaExited(self, msg: ReplicaExited, sender: Address) -> None:
        self._carry_out(self.replica_set.exited(msg.replica_id))

    def receiveMsg_NodeLost(self, msg: NodeLost, sender: Address) -> None:
        self._carry_out(self.replica_set.node_lost(msg.node_id, msg.instances))

    def receiveMsg_ReplicaPlaced(self, msg: ReplicaPlaced, sender: Address) -> None:
        self._carry_out(self.replica_set.placed(msg))

    def receiveMsg_NodeJoined(self, msg: NodeJoined, sender: Address) -> None:
        self._carry_out(self.replica_set.node_joined(msg.node_id))

    def receiveMsg_Drain(self, msg: Drain, sender: Address) -> None:
        self._carry_out(self.replica_set.drain())

    def receiveMsg_SwapVersion(self, msg: SwapVersion, sender: Address) -> None:
        self._carry_out(self.replica_set.swap(msg.deployment, msg.placements))

    def receiveMsg_Submit(self, msg: Submit, sender: Address) -> None:
        if self.rs is None:
            self._early.append((msg, sender))
            return
        rs = self.rs
        self._gateway = sender  # requests come from gateways: fallbacks go back through a live one
        items = msg.items if self._spans is None else self._spans.begin(msg.items, rs.dep.name)
        self._carry_out(rs.submit(items))

    def receiveMsg_ReplicaProgress(self, msg: ReplicaProgress, sender: Address) -> None:
        self._carry_out(self.replica_set.progress(msg))

    def receiveMsg_Cancel(self, msg: Cancel, sender: Address) -> None:
        if self.rs is None:
            self._early.append((msg, sender))
            return
        self._carry_out(self.replica_set.cancel(msg.request_ids))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Address) -> None:
        kind, arg = msg.payload
        rs = self.replica_set
        if kind == "metrics":
            self._ship_metrics()
            self._carry_out(rs.refresh())  # queue depth and in-flight counts in status stay fresh
            self._keeper = None  # looked up again by its name: a key keeper started again is found
            self._send_spent(due=True)
            self.wakeupAfter(timedelta(seconds=METRICS_PERIOD_S), payload=("metrics", ""))
        elif kind in ("switch-timeout", "switch-canary"):
            self._carry_out(rs.switch_timer(kind, arg))
        elif kind == "restart":
            self._carry_out(rs.restart_due(arg))

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Address) -> None:
        if self.rs is not None:
            self._carry_out(self.rs.stop_all())
        for m in self.metrics_by_version.values():
            self.send(self._metrics_collector(), MetricsDrop(m.source))

    # ---- what the replica set decided ----

    def _carry_out(self, actions: Iterable[Action]) -> None:
        """Perform the replica set's actions, in order."""
        for a in actions:
            match a:
                case Finish():
                    self._finish(a)
                case ToManager(message):
                    self.send(self.manager, message)
                case ToNode(agent, message):
                    self.send(agent, message)
                case ToReplica(address, message):
                    self.send(address, message)
                case AdoptOn(agent, instance):
                    self.send(agent, AdoptReplica(instance, self.myAddress))  # answered by ReplicaReady
                case WakeUp(delay_s, payload):
                    self.wakeupAfter(timedelta(seconds=delay_s), payload=payload)
                case Emit(reply_to, event):
                    self.emit(reply_to, event)
                case Forward(item):
                    self._forward(item)
                case ToLimiter(settle):
                    self.send(self._rate_limiter(), settle)
                case Restarted(slot, version):
                    if (m := self._metrics(version)) is not None:
                        m.restarted(slot)
                case FirstToken(tenant, slot, ttft_s, version):
                    if (m := self._metrics(version)) is not None:
                        m.first_token(tenant, slot, ttft_s)
                case Serve(dep):
                    self._use_metrics(dep)

    def after_drain(self) -> None:
        if self.rs is not None:
            for address, items in self.rs.take_dispatches():
                self.send(address, Dispatch(items))
        self._send_spent()
        super().after_drain()

    def _send_spent(self, due: bool = False) -> None:
        spent = self._spent.take(due)
        if spent:
            self.send(self._key_keeper(), SpendRecords(spent))

    def _finish(self, a: Finish) -> None:
        """A request's end here: record it, log its one line, and send its final event (if any)."""
        usage = a.event.usage if a.event is not None else None
        cost = self.rs.dep.cost if self.rs is not None else None
        m = self._metrics(a.version)
        self._spent.add(record_end(m, a.item.request, self._name, a.replica, a.outcome, a.latency_s, usage, cost))
        if self._spans is not None:
            self._spans.end(a.item.request, a.outcome, a.replica, usage)
        if a.event is not None:
            self.emit(a.reply_to, a.event)

    def _forward(self, item: WorkItem) -> None:
        """Send `item` through a gateway to the next deployment of its fallback list."""
        if self._gateway is None:
            from atomr.actors.gateway import Gateway

            self._gateway = self.createActor(Gateway, globalName=GATEWAY_NAME)
        req = item.request
        log.info("request to fallback", deployment=self._name, fallback=req.model, request=req.request_id)
        self.send(self._gateway, Submit([item]))

    def _key_keeper(self) -> Address:
        if self._keeper is None:
            from atomr.actors.key_keeper import KeyKeeper

            self._keeper = self.createActor(KeyKeeper, globalName=KEYS_NAME)
        return self._keeper

    def _rate_limiter(self) -> Address:
        if self._limiter is None:
            from atomr.actors.rate_limiter import RateLimiter

            self._limiter = self.createActor(RateLimiter, globalName=RATE_LIMITER_NAME)
        return self._limiter

    # ---- metrics ----

    def _metrics_collector(self) -> Address:
        if self._collector is None:
            from atomr.actors.metrics_collector import MetricsCollector

            self._collector = self.createActor(MetricsCollector, globalName=METRICS_NAME)
        return self._collector

    def _ship_metrics(self) -> None:
        rs = self.replica_set
        for version, m in self.metrics_by_version.items():
            m.replicas(
                len(rs.queue) if m is self.metrics else 0,
                [
                    (r.slot, r.state == "ready", len(r.inflight), (r.health.get("circuit") or {}).get("state"))
                    for r in rs.replicas.values()
                    if r.version == version
                ],
            )
            families = m.take_snapshot()
            if families is not None:
                self.send(self._metrics_collector(), MetricsSnapshot(m.source, families))

    def _metrics(self, version: str) -> DeploymentMetrics | None:
        """The metrics of `version` (the replica set names the version whose metrics count an event)."""
        return self.metrics_by_version.get(version, self.metrics)

    def _use_metrics(self, dep: Deployment) -> None:
        m = self.metrics_by_version.get(dep.version)
        if m is None:
            m = self.metrics_by_version[dep.version] = DeploymentMetrics(dep.name, dep.version, dep.runtime)
        self.metrics = m

    # ---- reporting ----

    @property
    def _name(self) -> str:
        return self.rs.dep.name if self.rs is not None else "?"
