"""Gateway actor (global name; more can run under other names): where requests enter.

It validates each request, resolves the model name through its copy of the registry, admits
rate-limited deployments against leases from the rate limiter, and forwards requests to their
coordinators, one message per coordinator per batch. Chunks of clients' requests do not come
back through here. A gateway may also serve the OpenAI-compatible HTTP front (`StartHttp`): its
server runs on this actor's sidecar loop and its requests enter through `accept` like any other,
with this gateway as their requester. The front sees the gateway only through its port
(`atomr.http.port`, implemented here by `atomr.actors.http_lane`): requests and cancels in, events
out, and a `RoutingSnapshot` of the names, routes and stats pushed to it whenever they change.

Model names may also be routes or cascades (the registry's `PolicyTable`). A route's deployment
is chosen per request by `atomr.core.routing.Router` from this gateway's copy of the routes and of the
deployments' stats (`RouteStats`, refreshed by the registry), with no extra message; the route's
other deployments become the request's fallbacks. A cascade's requests are run here, with the
gateway as requester of each tier (`atomr.actors.cascade_lane`, which uses the few operations of
its `CascadeHost` interface).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from thespian.actors import WakeupMessage

from atomr.actors.cascade_lane import TICK_S, CascadeLane
from atomr.actors.messages import (
    KEYS_NAME,
    MANAGER_NAME,
    METRICS_NAME,
    RATE_LIMITER_NAME,
    REGISTRY_NAME,
    AcquireLease,
    Address,
    Cancel,
    Events,
    Hello,
    HelloReply,
    KeyTable,
    Lease,
    Lookup,
    MetricsSnapshot,
    PolicyTable,
    ReleaseLease,
    Reply,
    Reserve,
    Reserved,
    RouteStats,
    RouteTable,
    Settle,
    SpendRecords,
    StartHttp,
    Submit,
    Subscribe,
    WatchKeys,
    WorkItem,
)
from atomr.actors.registry import Registry
from atomr.actors.sidecar import SidecarActor
from atomr.core.budgets import Hold
from atomr.core.deployment import Deployment, RateBudget
from atomr.core.errors import (
    ConfigError,
    ErrorInfo,
    InferenceError,
    InferenceTimeoutError,
    NotFoundError,
    RateLimitedError,
    quote,
)
from atomr.core.keys import ApiKey
from atomr.core.policies import Cascade, RoutePolicy
from atomr.core.ratelimit import estimate_prompt_tokens, estimate_tokens
from atomr.core.routes import DeploymentStats, Route
from atomr.core.routing import Router
from atomr.core.spend import SpendBatch, SpendRecord
from atomr.core.types import StreamEvent, Usage
from atomr.http.port import RoutingSnapshot
from atomr.observability.metrics import OrchestrationMetrics, Recorder

if TYPE_CHECKING:
    from atomr.actors.http_lane import HttpLane

LEASE_TTL_S = 1.0  # unused lease parts go back to the limiter after this long


@dataclass(slots=True)
class PendingAdmission:
    """A request waiting for room in one of its rate limits (`limits[stage]`: its key's, then its
    route's)."""

    item: WorkItem
    route: Route
    stage: int
    tokens: int  # its token estimate for this limit (0 when the limit counts requests only)
    limits: tuple[RateBudget, ...]


@dataclass(slots=True)
class LocalLease:
    requests: int = 0
    tokens: int = 0
    asking: bool = False  # an AcquireLease is on its way
    pending: collections.deque[PendingAdmission] = dataclasses.field(default_factory=collections.deque)


class Gateway(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes: dict[str, Route] = {}
        self.registry: Address = None
        self.limiter: Address = None
        self.waiting: dict[str, list[WorkItem]] = {}  # model name -> items awaiting a lookup
        self.leases: dict[str, LocalLease] = {}
        self._out: dict[str, tuple[Address, list[WorkItem]]] = {}
        self.http: HttpLane | None = None  # when this gateway serves the HTTP front
        self._published = RoutingSnapshot()  # what the HTTP front was last told
        self._manager: Address = None
        self._collector: Address = None
        self.route_policies: dict[str, RoutePolicy] = {}
        self.cascades: dict[str, Cascade] = {}
        self.stats: dict[str, DeploymentStats] = {}
        self.router = Router()
        self._orchestration: OrchestrationMetrics | None = None
        self._cascade_lane: CascadeLane | None = None
        self._ticking = False
        self._shipping = False
        # Requests the HTTP front serves in this process once the rate limit admits them:
        # request id -> what to call on the loop with the request's debit
        self._admit_here: dict[str, Callable[[tuple[tuple[str, int], ...]], None]] = {}
        # Runtime keys (`atomr.actors.key_keeper`): the table as last published, runs waiting for
        # a place in their key's budget, the holds to ask for and the spend to report
        self.keys: dict[str, ApiKey] = {}
        self._keys_version: tuple[str, int] | None = None
        self._keeper: Address = None
        self._reserving: dict[tuple[str, str], tuple[WorkItem, Route, Hold]] = {}
        self._holds: list[Hold] = []
        self._spent = SpendBatch()
        self._ticks = 0
        self._watching_keys = False

    def _registry(self) -> Address:
        if self.registry is None:
            self.registry = self.createActor(Registry, globalName=REGISTRY_NAME)
            self.send(self.registry, Subscribe())
        return self.registry

    def _limiter(self) -> Address:
        if self.limiter is None:
            from atomr.actors.rate_limiter import RateLimiter

            self.limiter = self.createActor(RateLimiter, globalName=RATE_LIMITER_NAME)
        return self.limiter

    def receiveMsg_Hello(self, msg: Hello, sender: Address) -> None:
        self._registry()
        self.send(sender, HelloReply(sender))

    def receiveMsg_Submit(self, msg: Submit, sender: Address) -> None:
        self.accept(msg.items)

    def accept(self, items: list[WorkItem]) -> None:
        """Validate, resolve and admit requests (from clients, coordinators or the HTTP front)."""
        for item in items:
            req = item.request
            try:
                req.validate()
            except InferenceError as exc:
                self.emit(item.reply_to, StreamEvent(req.request_id, error=exc.info(), final=True))
                continue
            if self.route_policies or self.cascades:
                cascade = self.cascades.get(req.model)
                if cascade is not None:
                    self.cascade_lane.start(item, cascade)
                    self._tick_soon()
                    continue
                policy = self.route_policies.get(req.model)
                if policy is not None:
                    item = self._choose(item, policy)
                    req = item.request
            route = self.routes.get(req.model)
            if route is None:
                first = req.model not in self.waiting
                self.waiting.setdefault(req.model, []).append(item)
                if first:
                    self.send(self._registry(), Lookup([req.model]))
                continue
            self._admit(item, route)

    def _choose(self, item: WorkItem, policy: RoutePolicy) -> WorkItem:
        """The request sent to the deployment its route's policy picks; the others are its fallbacks."""
        plan = self.router.plan(policy, self.routes, self.stats, item.request)
        if not plan:  # no deployment of the route is known here yet: look up its first one
            return dataclasses.replace(item, request=dataclasses.replace(item.request, model=policy.names[0]))
        self.orchestration.route(policy.name, plan[0])
        chain = (*plan[1:], *(item.fallbacks or ()))
        return dataclasses.replace(
            item, request=dataclasses.replace(item.request, model=plan[0]), fallbacks=chain or item.fallbacks
        )

    def _admit(
        self, item: WorkItem, route: Route, stage: int = 0, limits: tuple[RateBudget, ...] | None = None
    ) -> None:
        """Admit `item` from each of its rate limits in turn (from `stage` on: its runtime key's,
        then its route's), then from its key's budget, if any; then forward it."""
        if limits is None:  # its first admission here
            too_long = route.prompt_limit.too_long(item.request) if route.prompt_limit is not None else None
            if too_long is not None:  # refused here, before it crosses a process
                self._refuse(item, too_long.info())
                return
            limits = self._limits(item, route)
        if stage >= len(limits):
            key = self.keys.get(item.request.key_id) if item.request.key_id is not None else None
            if key is not None and key.admits_centrally:
                self._reserve(item, route, key)
            else:
                self._forward(item, route)
            return
        name, _, tpm, _ = limits[stage]
        req = item.request
        est = estimate_tokens(req.prompt_chars, req.completion_budget) if tpm is not None else 0
        lease = self.leases.setdefault(name, LocalLease())
        lease.pending.append(PendingAdmission(item, route, stage, est, limits))
        self._serve(name, lease)

    def _limits(self, item: WorkItem, route: Route) -> tuple[RateBudget, ...]:
        """The rate limits a request must fit: its runtime key's RPM/TPM, then its route's."""
        key_id = item.request.key_id
        key = self.keys.get(key_id) if key_id is not None else None
        if key is None or (key.rpm is None and key.tpm is None):
            return route.limits
        return (("key:" + key.id, key.rpm, key.tpm, 60.0), *route.limits)

    def _reserve(self, item: WorkItem, route: Route, key: ApiKey) -> None:
        """Ask the key keeper for a place in `key`'s budget (or requests in flight) for this run."""
        req = item.request
        spec = route.spec
        est = 0
        if spec is not None:
            est = spec.cost.nanos(estimate_prompt_tokens(req.prompt_chars), req.completion_budget)
        deadline = req.deadline if req.deadline is not None else time.time() + 600.0
        hold = Hold(req.request_id, route.deployment, key.id, est, deadline)
        self._reserving[(req.request_id, route.deployment)] = (item, route, hold)
        self._holds.append(hold)

    def receiveMsg_Reserved(self, msg: Reserved, sender: Address) -> None:
        for rid, deployment in msg.granted:
            waiting = self._reserving.pop((rid, deployment), None)
            if waiting is not None:
                self._forward(waiting[0], waiting[1])
        for rid, deployment, error in msg.refused:
            waiting = self._reserving.pop((rid, deployment), None)
            if waiting is not None:
                self._refuse(waiting[0], error)

    def _ask_holds_again(self) -> None:
        """Holds asked for and not answered: the key keeper may have died with them. Asking again
        is harmless (a run that holds already is granted again); past its deadline, a request
        waiting for its answer is answered with a timeout."""
        now = time.time()
        for where, (item, _, hold) in list(self._reserving.items()):
            if hold.deadline < now:
                del self._reserving[where]
                self._refuse(item, InferenceTimeoutError("deadline passed waiting for the key's budget").info())
            elif hold not in self._holds:
                self._holds.append(hold)

    def _refuse(self, item: WorkItem, error: ErrorInfo) -> None:
        """Answer `item` with `error` before it ran; it gives back what its rate limits granted it."""
        req = item.request
        self._admit_here.pop(req.request_id, None)
        self.emit(item.reply_to, StreamEvent(req.request_id, error=error, final=True))
        for earlier, tokens in item.debits:
            self._serve(earlier, self._add_to_lease(earlier, 1, tokens))

    def spent(self, records: list[SpendRecord]) -> None:
        """Runs the HTTP front served in this process ended: for the spend log and budgets."""
        for record in records:
            self._spent.add(record)

    def _key_keeper(self) -> Address:
        if self._keeper is None:
            from atomr.actors.key_keeper import KeyKeeper

            self._keeper = self.createActor(KeyKeeper, globalName=KEYS_NAME)
        return self._keeper

    def receiveMsg_KeyTable(self, msg: KeyTable, sender: Address) -> None:
        self._keys_version = msg.version
        self.keys = {k.id: k for k in msg.keys}
        if self.http is not None:
            self.http.keys_changed(msg.keys)

    def _serve(self, key: str, lease: LocalLease) -> None:
        """Admit pending requests while the local lease covers them; ask for more when it does not."""
        while lease.pending:
            w = lease.pending[0]
            if lease.requests < 1 or lease.tokens < w.tokens:
                break
            lease.pending.popleft()
            lease.requests -= 1
            lease.tokens -= w.tokens
            taken = dataclasses.replace(w.item, debits=(*w.item.debits, (key, w.tokens)))
            self._admit(taken, w.route, w.stage + 1, w.limits)
        if lease.pending and not lease.asking:
            w = lease.pending[0]
            _, rpm, tpm, window_s = w.limits[w.stage]
            block = max(1, min(16, (rpm or 160) // 10))
            want_requests = max(len(lease.pending), block) - lease.requests
            want_tokens = max(0, sum(x.tokens for x in lease.pending) - lease.tokens)
            lease.asking = True
            self.send(self._limiter(), AcquireLease(key, rpm, tpm, window_s, max(1, want_requests), want_tokens))

    def _add_to_lease(self, key: str, requests: int, tokens: int) -> LocalLease:
        """Room for `key` here (granted, or given back by a refused request); unused room goes back
        to the limiter `LEASE_TTL_S` after the lease was empty."""
        lease = self.leases.setdefault(key, LocalLease())
        if lease.requests == 0 and lease.tokens == 0:
            self.wakeupAfter(timedelta(seconds=LEASE_TTL_S), payload=("lease", key))
        lease.requests += requests
        lease.tokens += tokens
        return lease

    def receiveMsg_Lease(self, msg: Lease, sender: Address) -> None:
        lease = self.leases.setdefault(msg.key, LocalLease())
        lease.asking = False
        if msg.requests == 0:
            self._refuse_waiting(msg.key, lease, msg.retry_after)
            return
        self._serve(msg.key, self._add_to_lease(msg.key, msg.requests, msg.tokens))

    def _refuse_waiting(self, key: str, lease: LocalLease, retry_after: float) -> None:
        """Nothing left in `key`'s window for anyone: refuse what is waiting here, except requests
        whose caller allows waiting and whose deadline leaves time for it. A refused request gives
        back what its earlier limits had granted it."""
        retry_after = max(0.05, round(retry_after, 3))
        ready_at = time.time() + retry_after
        keep: collections.deque[PendingAdmission] = collections.deque()
        refused: list[PendingAdmission] = []
        for w in lease.pending:
            req = w.item.request
            if req.wait_for_rate_limit and (req.deadline is None or ready_at < req.deadline):
                keep.append(w)
            else:
                refused.append(w)
        lease.pending = keep
        if keep:
            self.wakeupAfter(timedelta(seconds=retry_after), payload=("retry", key))
        for w in refused:
            self._refuse(w.item, RateLimitedError(f"rate limit {key!r} reached", retry_after=retry_after).info())

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Address) -> None:
        kind, key = msg.payload
        if kind == "metrics":
            self.ship_metrics()
            self._send_spent(due=True)
            self._ticks += 1
            if self._watching_keys and self._ticks % 5 == 0:  # a key keeper started again: watch it too
                self._keeper = None  # (looked up again by its name)
                self.send(self._key_keeper(), WatchKeys(self._keys_version))
                self._ask_holds_again()
            self.wakeupAfter(timedelta(seconds=1.0), payload=("metrics", ""))
            return
        if kind == "cascade":
            self._ticking = False
            if self._cascade_lane is not None:
                self._cascade_lane.tick()
            self._tick_soon()
            return
        lease = self.leases.get(key)
        if lease is None:
            return
        if kind == "retry":
            self._serve(key, lease)
            return
        if lease.requests or lease.tokens:
            self.send(self._limiter(), ReleaseLease(key, lease.requests, lease.tokens))
            lease.requests = lease.tokens = 0

    def admit_here(self, item: WorkItem, route: Route, admitted: Callable[[tuple[tuple[str, int], ...]], None]) -> None:
        """Rate-limit admission for a request the HTTP front will serve in this process itself
        (`atomr.http.inline`): once admitted, `admitted(debit)` runs on the loop instead of the
        request going to its coordinator; a refusal reaches the front as the request's error."""
        self._admit_here[item.request.request_id] = admitted
        self._admit(item, route)

    def settle(self, debits: tuple[tuple[str, int], ...], usage: Usage | None) -> None:
        """Tell the rate limiter what a token-limited request served here really used."""
        settle = Settle.of(debits, usage)
        if settle is not None:
            self.send(self._limiter(), settle)

    def _forward(self, item: WorkItem, route: Route) -> None:
        admitted = self._admit_here.pop(item.request.request_id, None) if self._admit_here else None
        if admitted is not None:
            self.sidecar.call_soon(admitted, item.debits)
            return
        box = self._out.setdefault(str(route.coordinator), (route.coordinator, []))
        box[1].append(item)

    def after_drain(self) -> None:
        # Events for this gateway itself (tiers of its cascades, answers for its HTTP front) are
        # handed over here rather than sent to itself; handling them may produce more.
        mine = str(self.myAddress)
        for _ in range(8):
            box = self._outbox.pop(mine, None)
            if box is None:
                break
            self._own_events(box[1])
        if self._out:
            out, self._out = self._out, {}
            for coordinator, items in out.values():
                self.send(coordinator, Submit(items))
        if self._holds:
            holds, self._holds = self._holds, []
            self.send(self._key_keeper(), Reserve(holds))
        self._send_spent()
        super().after_drain()

    def _send_spent(self, due: bool = False) -> None:
        spent = self._spent.take(due)
        if spent:
            self.send(self._key_keeper(), SpendRecords(spent))

    def receiveMsg_PolicyTable(self, msg: PolicyTable, sender: Address) -> None:
        self.route_policies, self.cascades = dict(msg.routes), dict(msg.cascades)
        self._publish(routed=True)
        if not self._shipping:
            self._shipping = True
            self.wakeupAfter(timedelta(seconds=1.0), payload=("metrics", ""))

    def receiveMsg_RouteStats(self, msg: RouteStats, sender: Address) -> None:
        self.stats = msg.stats
        self._publish(stats=True)

    def _publish(self, *, routes: bool = False, routed: bool = False, stats: bool = False) -> None:
        """Push the HTTP front, if this gateway serves one, a new routing snapshot: the parts
        named changed are copied afresh, the others are the last snapshot's."""
        if self.http is None:
            return
        last = self._published
        self._published = RoutingSnapshot(
            routes=MappingProxyType(dict(self.routes)) if routes else last.routes,
            routed=frozenset({*self.route_policies, *self.cascades}) if routed else last.routed,
            stats=MappingProxyType(dict(self.stats)) if stats else last.stats,
        )
        self.http.publish(self._published)

    # ---- what the cascade lane uses (its `CascadeHost` interface) ----

    @property
    def address(self) -> Address:
        """Where the events of requests this gateway makes itself (cascade tiers) come back."""
        return self.myAddress

    def is_cascade(self, name: str) -> bool:
        return name in self.cascades

    def deployment_spec(self, name: str) -> Deployment | None:
        """The deployment a model name stands for (a route's: its first deployment's), if known."""
        route = self.routes.get(name)
        if route is not None:
            return route.spec
        policy = self.route_policies.get(name)
        if policy is not None and policy.deployments:
            return self.deployment_spec(policy.deployments[0].deployment)
        return None

    @property
    def orchestration(self) -> OrchestrationMetrics:
        if self._orchestration is None:
            self._orchestration = OrchestrationMetrics(str(self.myAddress))
        return self._orchestration

    @property
    def cascade_lane(self) -> CascadeLane:
        if self._cascade_lane is None:
            self._cascade_lane = CascadeLane(self, self.orchestration)
        return self._cascade_lane

    def _tick_soon(self) -> None:
        """Keep a periodic check of cascade sessions' timeouts while there are any."""
        if not self._ticking and self._cascade_lane is not None and len(self._cascade_lane):
            self._ticking = True
            self.wakeupAfter(timedelta(seconds=TICK_S), payload=("cascade", ""))

    def _own_events(self, events: list[StreamEvent]) -> None:
        lane = self._cascade_lane
        others = []
        for ev in events:
            if lane is not None and lane.owns(ev.request_id):
                lane.on_event(ev)
            else:
                others.append(ev)
        if others and self.http is not None:
            self.http.deliver(others)

    def receiveMsg_RouteTable(self, msg: RouteTable, sender: Address) -> None:
        replaced = {
            name
            for name, route in msg.routes.items()
            if name in self.routes and self.routes[name].coordinator != route.coordinator
        }
        if msg.full:
            self.routes = dict(msg.routes)
        else:
            self.routes.update(msg.routes)
        self._publish(routes=True)
        if self.http is not None and replaced:  # a coordinator died and was replaced (or redeployed)
            self.http.coordinators_replaced(frozenset(replaced))
        for name in list(self.waiting):
            if not msg.settled and name not in msg.routes:
                continue  # the head is starting, perhaps bringing it back: wait for it (or the deadline)
            items = self.waiting.pop(name)
            if name in self.route_policies or name in self.cascades:
                self.accept(items)  # a route or cascade (its table came just before this answer)
                continue
            route = msg.routes.get(name) or self.routes.get(name)
            for item in items:
                if route is not None:
                    self._admit(item, route)
                else:
                    err = NotFoundError(f"no deployment serves model {quote(name)}", field="model")
                    self.emit(item.reply_to, StreamEvent(item.request.request_id, error=err.info(), final=True))

    def receiveMsg_Cancel(self, msg: Cancel, sender: Address) -> None:
        self.cancel_requests(msg.request_ids, msg.model)

    def cancel_requests(self, request_ids: list[str], model: str) -> None:
        if model in self.cascades:
            self.cascade_lane.cancel(request_ids)
            return
        policy = self.route_policies.get(model)
        if policy is not None:  # which deployment took it is not kept: tell each (few) of them
            for name in policy.names:
                if name in self.routes:
                    self.send(self.routes[name].coordinator, Cancel(request_ids, name))
            return
        route = self.routes.get(model)
        if route is not None:
            self.send(route.coordinator, Cancel(request_ids, model))

    # ---- the HTTP front (atomr.http): its server runs on this actor's sidecar loop ----

    def receiveMsg_StartHttp(self, msg: StartHttp, sender: Address) -> None:
        from atomr.actors.http_lane import HttpLane
        from atomr.core.errors import as_error_info
        from atomr.core.tenants import TenantTable

        if self.http is not None:
            self.send(sender, Reply(False, error=ConfigError("this gateway already serves HTTP").info()))
            return
        self._registry()
        lane = HttpLane(self, msg.settings, TenantTable(list(msg.tenants), msg.runtime_keys), msg.place)
        self.http = lane
        if msg.runtime_keys:
            self._watching_keys = True
            self.send(self._key_keeper(), WatchKeys())
            if self.keys:
                lane.keys_changed(tuple(self.keys.values()))
        self._publish(routes=True, routed=True, stats=True)  # reaches the loop before the server starts

        def started(fut: Any) -> None:
            exc = fut.exception()
            reply = Reply(False, error=as_error_info(exc)) if exc is not None else Reply(True, fut.result())
            if exc is not None:
                self.http = None
            self.sidecar.post(lambda: self.send(sender, reply))

        self.sidecar.spawn(lane.start()).add_done_callback(started)
        if not self._shipping:
            self._shipping = True
            self.wakeupAfter(timedelta(seconds=1.0), payload=("metrics", ""))

    def receiveMsg_Events(self, msg: Events, sender: Address) -> None:
        self._own_events(msg.events)

    def ask_admin(self, kind: str, msg: Any) -> None:
        """Send a status, metrics or keys question; the Reply comes back to receiveMsg_Reply."""
        if kind == "keys":
            self._keeper = None  # looked up by its name for each (rare) admin question: one that
            self.send(self._key_keeper(), msg)  # was started again is asked, not its dead predecessor
        elif kind == "status":
            if self._manager is None:
                from atomr.actors.deployment_manager import DeploymentManager

                self._manager = self.createActor(DeploymentManager, globalName=MANAGER_NAME)
            self.send(self._manager, msg)
        else:
            self.send(self._metrics_collector(), msg)

    def receiveMsg_Reply(self, msg: Reply, sender: Address) -> None:
        if self.http is None:
            return
        kind = "status" if sender == self._manager else "keys" if sender == self._keeper else "metrics"
        self.http.answered(kind, msg)

    def _metrics_collector(self) -> Address:
        if self._collector is None:
            from atomr.actors.metrics_collector import MetricsCollector

            self._collector = self.createActor(MetricsCollector, globalName=METRICS_NAME)
        return self._collector

    def ship_metrics(self) -> None:
        recorders: list[Recorder] = []
        if self.http is not None:
            recorders += self.http.recorders()
        if self._orchestration is not None:
            recorders.append(self._orchestration)
        for recorder in recorders:
            families = recorder.take_snapshot()
            if families is not None:
                self.send(self._metrics_collector(), MetricsSnapshot(recorder.source, families))

    def on_exit(self) -> None:
        if self.http is not None and self._sidecar is not None:
            try:
                self.sidecar.spawn(self.http.stop()).result(timeout=3)
            except Exception:  # noqa: BLE001 - the process is ending anyway
                pass
        super().on_exit()
