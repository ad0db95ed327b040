"""The request side of a deployment's replica set: admission, dispatch, fail-over, final answers.

`Dispatcher` is the base of `atomr.actors.replica_set.ReplicaSet` (which adds supervision and the
version switch); like it, it knows nothing of Thespian, sends nothing and reads no clock of its
own. It holds the replicas (`Replica`), the fair queue of waiting requests, the table of
dispatched ones (`InFlight`, one in-flight credit each) and when each was admitted, and turns
its decisions into `Action`s that the `Coordinator` actor carries out in order.

* Dispatch: a request goes to the ready replica (of the version it goes to, see
  `atomr.actors.hot_swap`) with the fewest outstanding while that replica has credits left
  (`max_inflight_per_replica`); otherwise it waits in the bounded fair queue (`overloaded` when
  full), served in fair order as credits free up. Dispatches are batched per replica until the
  actor takes them (`take_dispatches`).
* Fail-over: when a replica is gone, each of its requests gets exactly one final answer: those
  that had not started streaming go back to the front of the queue, the others are answered
  `runner_crashed`. With no live replica left, waiting requests go to the next deployment of the
  `fallbacks` list (`Forward`) or are answered `unavailable`; so does a request that fails
  retryably before its first chunk.
* Every request leaves through one `Finish` (its outcome and latency, for the metrics and the
  one log line), or a `Forward` to a fallback followed by a `Finish` with outcome ``fallback``.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atomr.actors.messages import (
    Address,
    Cancel,
    ReplicaPlaced,
    ReplicaProgress,
    Settle,
    WorkItem,
)
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
    quote,
)
from atomr.core.fair_queue import FairQueue
from atomr.core.runner import PromptLimit
from atomr.core.tenants import Tenant
from atomr.core.types import StreamEvent

if TYPE_CHECKING:
    from atomr.actors.hot_swap import VersionSwitch

LIVE = ("starting", "ready", "restarting")  # replica states that hold, or will hold, a process


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

    def place(self, p: ReplicaPlaced) -> None:
        """Its new incarnation is starting where `p` says (no process known yet)."""
        self.instance, self.node_agent, self.node_id = p.instance, p.node_agent, p.node_id or ""
        self.gpu_ids = list(p.gpu_ids)
        self.address, self.pid = None, 0


@dataclass(slots=True)
class InFlight:
    item: WorkItem
    slot: str
    instance: str  # the replica incarnation it was given to
    started: bool = False


# ---- actions: what the coordinator carries out, in order ----


@dataclass(frozen=True, slots=True)
class ToManager:
    """Send `message` to the deployment manager."""

    message: Any


@dataclass(frozen=True, slots=True)
class ToNode:
    """Send `message` to a node agent."""

    agent: Address
    message: Any


@dataclass(frozen=True, slots=True)
class AdoptOn:
    """Ask node agent `agent` to hand its runner host `instance` over to this coordinator."""

    agent: Address
    instance: str


@dataclass(frozen=True, slots=True)
class ToReplica:
    """Send `message` to a replica's runner host."""

    address: Address
    message: Any


@dataclass(frozen=True, slots=True)
class ToLimiter:
    """Tell the rate limiter what a request really used."""

    settle: Settle


@dataclass(frozen=True, slots=True)
class WakeUp:
    """Wake the coordinator after `delay_s` seconds with `payload` (kind, slot or version)."""

    delay_s: float
    payload: tuple[str, str]


@dataclass(frozen=True, slots=True)
class Finish:
    """A request's end here: record it in `version`'s metrics, log its one line, and send
    `event` (if any) to `reply_to`."""

    item: WorkItem
    event: StreamEvent | None
    replica: str
    outcome: str
    latency_s: float
    version: str  # whose metrics count it
    reply_to: Address


@dataclass(frozen=True, slots=True)
class Emit:
    """Send `event` to `reply_to` (an adopted replica's error final, recorded by the dead coordinator)."""

    reply_to: Address
    event: StreamEvent


@dataclass(frozen=True, slots=True)
class Forward:
    """Send `item` to the gateway: it goes to the next deployment of its fallback list."""

    item: WorkItem


@dataclass(frozen=True, slots=True)
class Restarted:
    """Count a restart of replica `slot` in `version`'s metrics."""

    slot: str
    version: str


@dataclass(frozen=True, slots=True)
class FirstToken:
    """Record a request's time to first token in `version`'s metrics."""

    tenant: str
    slot: str
    ttft_s: float
    version: str


@dataclass(frozen=True, slots=True)
class Serve:
    """`dep` is now the serving version: new metrics are recorded under its version."""

    dep: Deployment


Action = (
    ToManager
    | ToNode
    | AdoptOn
    | ToReplica
    | ToLimiter
    | WakeUp
    | Finish
    | Emit
    | Forward
    | Restarted
    | FirstToken
    | Serve
)


class Dispatcher:
    """The replicas of one deployment and the requests admitted to them (see the module doc)."""

    def __init__(
        self,
        dep: Deployment,
        tenants: Sequence[Tenant] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        draw: Callable[[], float] = random.random,
    ) -> None:
        self.dep = dep
        self.replicas: dict[str, Replica] = {}
        self.queue: FairQueue[WorkItem] = new_queue(dep, tenants, wall_clock)
        self.inflight: dict[str, InFlight] = {}
        self.arrived: dict[str, float] = {}  # request id -> when it was admitted here (clock)
        self.state = "deploying"  # deploying | ready | degraded | failed | draining
        self.error: str | None = None
        self.switch: VersionSwitch | None = None
        self.reported_load: tuple[Any, ...] = ()  # load() when the manager was last told
        self.clock, self.wall_clock, self.draw = clock, wall_clock, draw
        self._dispatch: dict[str, list[WorkItem]] = {}
        self._metered = {dep.version}  # versions with metrics of their own (the ones served so far)
        self._out: list[Action] = []
        self.prompt_limits: dict[str, PromptLimit] = {}  # version -> what its runners reported

    @property
    def name(self) -> str:
        return self.dep.name

    def _take(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def by_instance(self, instance: str) -> Replica | None:
        """The replica whose current incarnation is `instance` (None: unknown or stale)."""
        slot = instance.rpartition(".")[0]
        r = self.replicas.get(slot)
        return r if r is not None and r.instance == instance else None

    def take_dispatches(self) -> list[tuple[Address, list[WorkItem]]]:
        """The requests assigned since the last call, batched per replica address."""
        batches, self._dispatch = self._dispatch, {}
        return [(self.replicas[slot].address, items) for slot, items in batches.items()]

    # ---- requests ----

    def submit(self, items: Iterable[WorkItem]) -> list[Action]:
        """Admit requests: straight to a replica with a free credit, else into the fair queue."""
        items = list(items)
        now = self.clock()
        for item in items:
            self.arrived.setdefault(item.request.request_id, now)
        if self.state in ("draining", "failed"):
            for item in items:
                gone = NotFoundError(f"model {quote(item.request.model)} is being removed", field="model")
                self._finish(item, error_event(item, gone))
            return self._take()
        for item in items:
            req = item.request
            if req.deadline is not None and self.wall_clock() > req.deadline:
                self._finish(item, error_event(item, InferenceTimeoutError("deadline passed before admission")))
                continue
            if req.request_id in self.inflight or req.request_id in self.queue:
                if item.resent:  # its caller asked again, unsure it arrived: it is in hand already
                    continue
                dup = InvalidRequestError(f"request {req.request_id} is already being served", field="request_id")
                self._finish(item, error_event(item, dup))
                continue
            # Straight to a replica when nothing waits and the tenant is under its quota.
            if not len(self.queue) and self.queue.can_start(req.tenant) and self._assign(item):
                self.queue.started(req.tenant)
                continue
            try:
                self.queue.push(item)
            except OverloadedError as err:
                self._finish(item, error_event(item, err))
        self._pump()
        return self._take()

    def cancel(self, request_ids: list[str]) -> list[Action]:
        """Callers gone: tell the replicas serving these requests; drop the waiting ones."""
        by_replica: dict[str, list[str]] = {}
        for rid in request_ids:
            f = self.inflight.get(rid)
            if f is not None:
                by_replica.setdefault(f.slot, []).append(rid)
        for slot, rids in by_replica.items():
            r = self.replicas[slot]
            if r.address is not None:
                self._out.append(ToReplica(r.address, Cancel(rids)))
        for item in self.queue.remove(request_ids):  # waiting ones: the caller is gone
            self._finish(item, None, outcome="cancelled")
        return self._take()

    def _record_progress(self, r: Replica, msg: ReplicaProgress) -> None:
        """Requests of replica `r` that started streaming, and its final answers."""
        now = self.clock()
        for rid in msg.started:
            f = self.inflight.get(rid)
            if f is not None and f.instance == msg.replica_id:
                f.started = True
                t0 = self.arrived.get(rid)
                if t0 is not None:
                    self._out.append(FirstToken(f.item.request.tenant, r.slot, now - t0, self._metrics_version(r.slot)))
        for reply_to, event in msg.finals:
            f = self.inflight.get(event.request_id)
            if f is not None and f.instance == msg.replica_id:
                del self.inflight[event.request_id]
                r.inflight.discard(event.request_id)
                self.queue.finished(f.item.request.tenant)
                settle = Settle.of(f.item.debits, event.usage)
                if settle is not None:
                    self._out.append(ToLimiter(settle))
                if _retryable(event) and event.seq == 0 and self._forward(f.item):
                    self._finish(f.item, None, replica=r.slot, outcome="fallback")
                    continue  # nothing reached the caller yet: the fallback answers instead
                self._finish(f.item, event, replica=r.slot, reply_to=reply_to)

    def _take_over(
        self, r: Replica, inflight: list[tuple[WorkItem, bool]], finals: list[tuple[WorkItem, StreamEvent]]
    ) -> None:
        """An adopted replica's requests in progress become ours; its recent errors reach their callers.

        Those errors went to the dead coordinator and may have been lost with it; each is handled
        as it would have been (a fallback, else the caller), and a caller that already had it
        drops the copy.
        """
        now = self.clock()
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
                self._out.append(Emit(item.reply_to, event))

    def _assign(self, item: WorkItem, best: Replica | None = None) -> bool:
        """Give `item` to the least-loaded ready replica with a free credit, if any."""
        best = best or self.least_loaded(self._target_version()) or self.least_loaded(self.dep.version)
        if best is None:
            return False
        rid = item.request.request_id
        best.inflight.add(rid)
        self.inflight[rid] = InFlight(item, best.slot, best.instance)
        self._dispatch.setdefault(best.slot, []).append(item)
        return True

    def least_loaded(self, version: str) -> Replica | None:
        """The ready replica of `version` with the fewest outstanding and a free credit (the
        first such in slot order among equals), or None."""
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
        sw = self.switch
        return sw.target_version(self.dep.version, self.draw) if sw is not None else self.dep.version

    def _pump(self) -> None:
        """Serve waiting requests in fair order while a replica has a free credit."""
        while len(self.queue):
            best = self.least_loaded(self._target_version()) or self.least_loaded(self.dep.version)
            if best is None:
                break
            item = self.queue.pop()
            if item is None:  # every waiting tenant is at its concurrency quota
                break
            self._assign(item, best)
        for expired in self.queue.take_expired():  # dropped before they reach an engine
            self._finish(expired, error_event(expired, InferenceTimeoutError("deadline passed in queue")))
        if len(self.queue) and not any(r.state in LIVE for r in self.replicas.values()):
            self._elsewhere(self.queue.drain())

    def _elsewhere(self, items: list[WorkItem]) -> None:
        """No replica is alive: hand requests to the fallback deployment, or answer unavailable."""
        for item in items:
            if not self._forward(item):
                err = UnavailableError(f"deployment {self.name} has no live replica", retry_after=1.0)
                self._finish(item, error_event(item, err))
            else:
                self._finish(item, None, outcome="fallback")

    def _forward(self, item: WorkItem, resent: bool = False) -> bool:
        """Send `item` to the next deployment of its fallback list; False when there is none."""
        onward = item.onward(self.dep.fallbacks)
        if onward is None:
            return False
        self._out.append(Forward(dataclasses.replace(onward, resent=resent)))
        return True

    def _fail_over(self, r: Replica) -> None:
        """Answer or re-queue every request that was on replica `r`."""
        pending = [self.inflight.pop(rid) for rid in list(r.inflight) if rid in self.inflight]
        r.inflight.clear()
        self._dispatch.pop(r.slot, None)
        for f in reversed(pending):
            self.queue.finished(f.item.request.tenant)
            if f.started:
                err = RunnerCrashedError(f"replica {r.instance} of {self.name} died while streaming")
                self._finish(f.item, error_event(f.item, err), replica=r.slot)
            else:
                self.queue.push_front(f.item)
        self._pump()

    def _answer(self, rid: str, info: ErrorInfo) -> None:
        f = self.inflight.pop(rid, None)
        if f is not None:
            self.queue.finished(f.item.request.tenant)
            self._finish(f.item, StreamEvent(rid, error=info, final=True, deployment=self.name), replica=f.slot)

    def _finish(
        self,
        item: WorkItem,
        event: StreamEvent | None,
        *,
        replica: str = "",
        outcome: str | None = None,
        reply_to: Address = None,
    ) -> None:
        """A request's end here: its latency and outcome, and its final event (if any)."""
        t0 = self.arrived.pop(item.request.request_id, None)
        latency = self.clock() - t0 if t0 is not None else 0.0
        if outcome is None:
            outcome = "ok" if event is None or event.error is None else event.error.kind
        to = reply_to if reply_to is not None else item.reply_to
        self._out.append(Finish(item, event, replica, outcome, latency, self._metrics_version(replica), to))

    def _metrics_version(self, slot: str) -> str:
        """Whose metrics count what happens on `slot`: its version's once that version was served,
        else (a new version still starting, or no such replica) the serving version's."""
        r = self.replicas.get(slot)
        return r.version if r is not None and r.version in self._metered else self.dep.version


def new_queue(
    dep: Deployment, tenants: Sequence[Tenant], clock: Callable[[], float] = time.time
) -> FairQueue[WorkItem]:
    """The waiting room: priority classes, then weighted fair shares, within tenant quotas."""
    limits = dep.limits
    return FairQueue(
        _queue_key,
        capacity=limits.max_queue,
        max_per_tenant=limits.max_queue_per_tenant,
        weights={t.name: t.weight for t in tenants},
        max_inflight={t.name: t.max_concurrency for t in tenants},
        name=f"deployment {dep.name}",
        clock=clock,
    )


def _queue_key(item: WorkItem) -> tuple[str, int, float | None, str]:
    req = item.request
    return req.tenant, req.priority, req.deadline, req.request_id


def _retryable(event: StreamEvent) -> bool:
    return event.error is not None and event.error.retryable


def error_event(item: WorkItem, err: InferenceError) -> StreamEvent:
    """`err` as the final event of `item`."""
    return StreamEvent(item.request.request_id, error=err.info(), final=True)
