"""Coordinator actor: one per deployment. Owns the replica set and every request it admitted.

Each replica has a number of in-flight credits (`max_inflight_per_replica`); requests go to the
ready replica with the fewest outstanding, wait in a bounded FIFO queue when all are busy, and are
answered `overloaded` when the queue is full. The coordinator remembers every dispatched request
until its replica reports it finished, so that when a replica dies each of its requests still gets
exactly one final answer: re-dispatched if it had not started streaming, `runner_crashed` if it had.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from thespian.actors import ActorExitRequest

from atomr.actors.messages import (
    Address,
    Cancel,
    DeploymentInfo,
    DeploymentState,
    Dispatch,
    Drain,
    Drained,
    ReplicaExited,
    ReplicaFailed,
    ReplicaInfo,
    ReplicaProgress,
    ReplicaReady,
    StartCoordinator,
    StopReplica,
    Submit,
    WorkItem,
)
from atomr.actors.sidecar import SidecarActor
from atomr.core.deployment import Deployment
from atomr.core.errors import (
    ErrorInfo,
    InferenceError,
    InferenceTimeoutError,
    NotFoundError,
    OverloadedError,
    RunnerCrashedError,
)
from atomr.core.types import StreamEvent

log = structlog.get_logger("atomr.coordinator")


@dataclass(slots=True)
class Replica:
    replica_id: str
    node_agent: Address
    gpu_ids: list[str]
    state: str = "starting"  # starting | ready | failed | exited
    address: Address = None
    node_id: str = ""
    pid: int = 0
    inflight: set[str] = field(default_factory=set)
    error: str | None = None


@dataclass(slots=True)
class InFlight:
    item: WorkItem
    replica_id: str
    started: bool = False


class Coordinator(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dep: Deployment | None = None
        self.manager: Address = None
        self.replicas: dict[str, Replica] = {}
        self.queue: collections.deque[WorkItem] = collections.deque()
        self.inflight: dict[str, InFlight] = {}
        self.state = "deploying"
        self.error: str | None = None
        self._dispatch: dict[str, list[WorkItem]] = {}

    # ---- lifecycle ----

    def receiveMsg_StartCoordinator(self, msg: StartCoordinator, sender: Address) -> None:
        self.dep, self.manager = msg.deployment, msg.manager
        for replica_id, agent, gpus in msg.placements:
            self.replicas[replica_id] = Replica(replica_id, agent, list(gpus))

    def receiveMsg_ReplicaReady(self, msg: ReplicaReady, sender: Address) -> None:
        r = self.replicas.get(msg.replica_id)
        if r is None:
            return
        r.state, r.address, r.node_id, r.pid = "ready", msg.address, msg.node_id, msg.pid
        if self.state == "deploying" and all(x.state == "ready" for x in self.replicas.values()):
            self.state = "ready"
        self._pump()
        self._report()

    def receiveMsg_ReplicaFailed(self, msg: ReplicaFailed, sender: Address) -> None:
        r = self.replicas.get(msg.replica_id)
        if r is None:
            return
        r.state, r.error = "failed", msg.error.message
        if self.state == "deploying":
            self.state, self.error = "failed", f"replica {msg.replica_id} failed to load: {msg.error.message}"
        self._fail_over(r)
        self._stop_replica(r)
        self._report()

    def receiveMsg_ReplicaExited(self, msg: ReplicaExited, sender: Address) -> None:
        r = self.replicas.get(msg.replica_id)
        if r is None:
            return
        was_ready = r.state == "ready"
        r.state = "exited" if r.state != "failed" else r.state
        if was_ready and self.state not in ("draining",):
            log.warning("replica exited", deployment=self._name, replica=r.replica_id)
        self._fail_over(r)
        self._report()
        self._maybe_drained()

    def receiveMsg_Drain(self, msg: Drain, sender: Address) -> None:
        self.state = "draining"
        self._maybe_drained()

    def _maybe_drained(self) -> None:
        if self.state != "draining" or self.inflight or self.queue:
            return
        live = [r for r in self.replicas.values() if r.state in ("ready", "starting")]
        for r in live:
            self._stop_replica(r)
        if all(r.state in ("exited", "failed") for r in self.replicas.values()):
            self.send(self.manager, Drained(self._name))

    def _stop_replica(self, r: Replica) -> None:
        if r.state in ("ready", "starting", "failed"):
            self.send(r.node_agent, StopReplica(r.replica_id))
            if r.state != "failed":
                r.state = "stopping"

    def receiveMsg_ActorExitRequest(self, msg: ActorExitRequest, sender: Address) -> None:
        for rid in list(self.inflight):
            self._answer_error(rid, RunnerCrashedError("deployment stopped").info())
        while self.queue:
            item = self.queue.popleft()
            self.emit(item.reply_to, _error_event(item, NotFoundError(f"deployment {self._name} stopped")))

    # ---- requests ----

    def receiveMsg_Submit(self, msg: Submit, sender: Address) -> None:
        assert self.dep is not None
        if self.state in ("draining", "failed"):
            for item in msg.items:
                gone = NotFoundError(f"model {item.request.model!r} is being removed", field="model")
                self.emit(item.reply_to, _error_event(item, gone))
            return
        limit = self.dep.limits.max_queue
        for item in msg.items:
            if self.queue or not self._assign(item):
                if len(self.queue) >= limit:
                    err = OverloadedError(f"deployment {self._name} is full ({limit} requests queued)", retry_after=1.0)
                    self.emit(item.reply_to, _error_event(item, err))
                else:
                    self.queue.append(item)
        self._pump()

    def receiveMsg_ReplicaProgress(self, msg: ReplicaProgress, sender: Address) -> None:
        r = self.replicas.get(msg.replica_id)
        for rid in msg.started:
            f = self.inflight.get(rid)
            if f is not None:
                f.started = True
        for rid in msg.finished:
            self.inflight.pop(rid, None)
            if r is not None:
                r.inflight.discard(rid)
        self._pump()
        self._maybe_drained()

    def receiveMsg_Cancel(self, msg: Cancel, sender: Address) -> None:
        by_replica: dict[str, list[str]] = {}
        for rid in msg.request_ids:
            f = self.inflight.get(rid)
            if f is not None:
                by_replica.setdefault(f.replica_id, []).append(rid)
        for replica_id, rids in by_replica.items():
            r = self.replicas[replica_id]
            if r.address is not None:
                self.send(r.address, Cancel(rids))
        gone = set(msg.request_ids)
        kept = [i for i in self.queue if i.request.request_id not in gone]
        if len(kept) != len(self.queue):
            self.queue = collections.deque(kept)

    def _assign(self, item: WorkItem) -> bool:
        """Give `item` to the least-loaded ready replica with a free credit, if any."""
        assert self.dep is not None
        cap = self.dep.limits.max_inflight_per_replica
        best: Replica | None = None
        for r in self.replicas.values():
            if r.state == "ready" and len(r.inflight) < cap and (best is None or len(r.inflight) < len(best.inflight)):
                best = r
        if best is None:
            return False
        rid = item.request.request_id
        if item.request.deadline is not None and time.time() > item.request.deadline:
            self.emit(item.reply_to, _error_event(item, InferenceTimeoutError("deadline passed in queue")))
            return True
        best.inflight.add(rid)
        self.inflight[rid] = InFlight(item, best.replica_id)
        self._dispatch.setdefault(best.replica_id, []).append(item)
        return True

    def _pump(self) -> None:
        while self.queue and self._assign(self.queue[0]):
            self.queue.popleft()

    def _fail_over(self, r: Replica) -> None:
        """Answer or re-dispatch every request that was on replica `r`."""
        pending = [self.inflight.pop(rid) for rid in list(r.inflight) if rid in self.inflight]
        r.inflight.clear()
        self._dispatch.pop(r.replica_id, None)
        for f in pending:
            if f.started:
                err = RunnerCrashedError(f"replica {r.replica_id} of {self._name} died while streaming")
                self.emit(f.item.reply_to, _error_event(f.item, err))
            else:
                self.queue.appendleft(f.item)
        if not any(x.state in ("ready", "starting") for x in self.replicas.values()):
            while self.queue:
                item = self.queue.popleft()
                self.emit(item.reply_to, _error_event(item, RunnerCrashedError(f"no live replica of {self._name}")))
        self._pump()

    def _answer_error(self, rid: str, info: ErrorInfo) -> None:
        f = self.inflight.pop(rid, None)
        if f is not None:
            self.emit(f.item.reply_to, StreamEvent(rid, error=info, final=True, deployment=self._name))

    def after_drain(self) -> None:
        if self._dispatch:
            batches, self._dispatch = self._dispatch, {}
            for replica_id, items in batches.items():
                self.send(self.replicas[replica_id].address, Dispatch(items))
        super().after_drain()

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
                ReplicaInfo(r.replica_id, r.node_id, r.state, r.pid, r.gpu_ids, len(r.inflight), r.error)
                for r in self.replicas.values()
            ],
            queued=len(self.queue),
            aliases=list(self.dep.aliases),
            error=self.error,
        )

    def _report(self) -> None:
        if self.manager is not None and self.dep is not None:
            self.send(self.manager, DeploymentState(self.info()))


def _error_event(item: WorkItem, err: InferenceError) -> StreamEvent:
    return StreamEvent(item.request.request_id, error=err.info(), final=True)
