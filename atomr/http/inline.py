"""Remote-API deployments served inside the gateway that runs the HTTP front.

A remote deployment's runner is an SDK client, not an engine. For a request that arrives on this
process's HTTP front, the hops to a replica process and back (gateway actor, coordinator, runner
host, and the answer's way home) cost more than the provider call itself on a fast backend. So
the gateway keeps its own runner for each deployment marked `serve_in_gateway` (on by default for
remote runtimes without placement constraints) and runs such requests on its loop: HTTP in,
runner, HTTP out, no actor message. Only requests of this front are served here: their caller is
connected to this very process, so if it dies they see their connection drop (a `Client`'s
requests keep the coordinator's guarantees).

A request is served here when all of these hold, else it takes the usual path through the
gateway actor and the deployment's coordinator, which also takes the overflow:
- its model names the deployment (or an alias), not a route or a cascade;
- the runner here has loaded the version the route names and has a free slot
  (`limits.max_inflight_per_replica` per gateway);
- the coordinator reports nothing waiting in its queue (its fair order is not jumped).

A rate-limited deployment's request is admitted by the gateway from its lease, exactly as
on the other path (one hand-over to the actor thread and back, no message), and its token debit
is settled with the limiter when it ends.

What is the same on both paths: validation, tenant checks and quotas (the front's), the runner
and its retries and circuit breaker (`run_session`), fallbacks on a retryable failure before the
first chunk (handed to the gateway through the port, `GatewayPort.fallback`), metrics (the
deployment's own families, replica label `gateway-<pid>`, added up with the coordinator's by the
collector) and the one log line per request (`record_end`). A new version named by the route gets
a new runner; the old one is unloaded once its requests end.

The gateway's routing reaches this module only as the `RoutingSnapshot` of the port
(`atomr.http.port`), which the front hands over.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from atomr.core.deployment import Deployment
from atomr.core.routes import Route
from atomr.core.runner import ModelRunner
from atomr.core.spend import SpendRecord
from atomr.core.types import InferenceRequest, StreamEvent, Usage
from atomr.http.port import RoutingSnapshot
from atomr.observability.metrics import DeploymentMetrics
from atomr.runners.catalog import runner_class, serves_in_gateway
from atomr.serving.session import record_end, run_session

log = structlog.get_logger("atomr.http.inline")

# (request, the failed deployment's fallbacks) -> the model name it went on to, or None
Fallback = Callable[[InferenceRequest, tuple[str, ...]], str | None]


@dataclass
class ServedHere:
    """One deployment version whose runner lives in this process."""

    deployment: Deployment
    metrics: DeploymentMetrics
    runner: ModelRunner | None = None  # None while loading (or after a failed load)
    failed: str | None = None
    inflight: int = 0
    retired: bool = False
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def ready(self) -> bool:
        return self.runner is not None and not self.retired


class InlineRunners:
    """The runners this gateway keeps for its HTTP front (all methods on the gateway's loop)."""

    def __init__(self, where: str, spent: Callable[[SpendRecord], None] | None = None) -> None:
        self.replica = f"gateway-{os.getpid()}"
        self._where = where
        self._spent = spent  # where each run's spend record goes (the key keeper, through the gateway)
        self._served: dict[str, ServedHere] = {}  # deployment name -> current version
        self._retiring: list[ServedHere] = []
        self._names: dict[str, str] = {}  # model name (name or alias) -> deployment name
        # Kept per version while the deployment is routed (a swapped-out version's counters stay)
        self._metrics: dict[tuple[str, str], DeploymentMetrics] = {}

    # ---- which deployments (on route changes) ----

    def refresh(self, routes: Mapping[str, Route]) -> None:
        """Load runners for the deployments the routes name; retire those no longer named."""
        wanted: dict[str, Deployment] = {}
        for route in routes.values():
            spec = route.spec
            if spec is not None and serves_in_gateway(spec) and spec.version == route.version:
                wanted[spec.name] = spec
        self._names = {name: route.deployment for name, route in routes.items() if route.deployment in wanted}
        for name, spec in wanted.items():
            current = self._served.get(name)
            if current is not None and current.deployment == spec:
                continue
            if current is not None:
                self._retire(current)
            metrics = self._metrics.get((name, spec.version))
            if metrics is None:
                metrics = DeploymentMetrics(spec.name, spec.version, spec.runtime, f"@{self._where}")
                self._metrics[(name, spec.version)] = metrics
            served = ServedHere(spec, metrics)
            self._served[name] = served
            asyncio.get_running_loop().create_task(self._load(served))
        for name in [n for n in self._served if n not in wanted]:
            self._retire(self._served.pop(name))
        self._metrics = {key: m for key, m in self._metrics.items() if key[0] in wanted}

    async def _load(self, served: ServedHere) -> None:
        dep = served.deployment
        try:
            runner = runner_class(dep.runtime)(dep)
            await runner.load()
        except Exception as exc:  # noqa: BLE001 - requests keep the coordinator's path
            served.failed = f"{type(exc).__name__}: {exc}"
            log.warning("inline runner failed to load", deployment=dep.name, error=served.failed)
            return
        served.runner = runner
        if served.retired:
            await self._unload(served)

    def _retire(self, served: ServedHere) -> None:
        served.retired = True
        if served.inflight == 0:
            asyncio.get_running_loop().create_task(self._unload(served))
        else:
            self._retiring.append(served)

    async def _unload(self, served: ServedHere) -> None:
        runner, served.runner = served.runner, None
        if served in self._retiring:
            self._retiring.remove(served)
        if runner is not None:
            try:
                await runner.unload()
            except Exception as exc:  # noqa: BLE001
                log.warning("inline runner unload failed", deployment=served.deployment.name, error=str(exc))

    async def close(self) -> None:
        for served in [*self._served.values(), *self._retiring]:
            for task in list(served.tasks):
                task.cancel()
            served.retired = True
            await self._unload(served)
        self._served.clear()

    # ---- requests ----

    def take(self, request: InferenceRequest, routing: RoutingSnapshot) -> Slot | None:
        """A slot to serve `request` here (`start` it or `give_back` it), or None for the usual
        path (`routing`: the gateway's latest snapshot, for route and cascade names and stats)."""
        name = self._names.get(request.model)
        if name is None or request.model in routing.routed:
            return None
        served = self._served.get(name)
        if served is None or not served.ready:
            return None
        if served.inflight >= served.deployment.limits.max_inflight_per_replica:
            return None
        s = routing.stats.get(name)
        if s is not None and s.queued:
            return None
        served.inflight += 1
        return Slot(served, self._free)

    def _free(self, served: ServedHere) -> None:
        served.inflight -= 1
        if served.retired and served.inflight == 0:
            asyncio.get_running_loop().create_task(self._unload(served))

    def start(
        self,
        slot: Slot,
        request: InferenceRequest,
        deliver: Callable[[StreamEvent], None],
        fallback: Fallback,
        settle: Callable[[Usage | None], None] | None = None,
        room: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        """Run `request` in `slot`; its events go to `deliver`, or on an early retryable failure
        `fallback(request, the deployment's fallbacks)` sends it on (and names where, or None
        when none is left); `settle(usage)` at the end, for a rate-limit debit; `room()` is
        awaited between chunks (the caller's queue has room). The slot is free again when the
        run ends (`slot.task`)."""
        served = slot.served
        task = asyncio.get_running_loop().create_task(self._run(served, request, deliver, fallback, settle, room))
        slot.task = task
        served.tasks.add(task)
        task.add_done_callback(slot.ended)  # also when cancelled before it ran at all

    async def _run(
        self,
        served: ServedHere,
        request: InferenceRequest,
        deliver: Callable[[StreamEvent], None],
        fallback: Fallback,
        settle: Callable[[Usage | None], None] | None,
        room: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        dep = served.deployment
        t0 = time.monotonic()
        ends: list[StreamEvent] = []

        def chunk(event: StreamEvent) -> None:
            if event.seq == 0:
                served.metrics.first_token(request.tenant, self.replica, time.monotonic() - t0)
            deliver(event)

        await run_session(served.runner, request, dep, self.replica, chunk, ends.append, room)
        end = ends[0]
        latency = time.monotonic() - t0
        usage = end.usage
        if settle is not None:
            settle(usage)
        early = end.error is not None and end.seq == 0 and end.error.retryable
        onward = fallback(request, dep.fallbacks) if early else None
        if onward is not None:
            ended = record_end(served.metrics, request, dep.name, self.replica, "fallback", latency, usage, dep.cost)
            self._spend(ended)
            log.info("request to fallback", deployment=dep.name, fallback=onward, request=request.request_id)
            return
        outcome = "ok" if end.error is None else end.error.kind
        self._spend(record_end(served.metrics, request, dep.name, self.replica, outcome, latency, usage, dep.cost))
        deliver(end)

    def _spend(self, record: SpendRecord) -> None:
        if self._spent is not None:
            self._spent(record)

    # ---- metrics (the gateway ships them with its own) ----

    def recorders(self) -> list[DeploymentMetrics]:
        """Every version's metrics while its deployment is routed, and those of runners still ending."""
        out = {id(m): m for m in list(self._metrics.values())}  # (called from the actor thread)
        for served in [*self._served.values(), *self._retiring]:
            circuit = None
            status = getattr(served.runner, "status", None)
            if status is not None:
                circuit = (status().get("circuit") or {}).get("state")
            served.metrics.replicas(None, [(self.replica, served.ready, served.inflight, circuit)])
            out[id(served.metrics)] = served.metrics
        return list(out.values())


class Slot:
    """One request's place in a gateway runner: freed once, when its run ends or, if it never
    starts (refused by the rate limit, its caller gone), when it is given back."""

    def __init__(self, served: ServedHere, free: Callable[[ServedHere], None]) -> None:
        self.served = served
        self.task: asyncio.Task[None] | None = None
        self._free: Callable[[ServedHere], None] | None = free

    def give_back(self) -> None:
        """Free the slot of a request that will not run here (nothing once it has started)."""
        if self.task is None:
            self._release()

    def ended(self, task: asyncio.Task[None]) -> None:
        self.served.tasks.discard(task)
        self._release()

    def _release(self) -> None:
        free, self._free = self._free, None
        if free is not None:
            free(self.served)
