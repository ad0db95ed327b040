"""Registry actor (global name): model names and aliases -> the coordinator serving them.

Gateways subscribe and keep a copy; a gateway that misses a name asks once before answering
`not_found`, so a request sent right after a deploy finds its model.

It also holds the routing policies and cascades (`SetPolicies`) and, while there are any (or a
deployment is served inside gateways too, whose HTTP fronts must not jump its queue), what
they weigh besides a route: each deployment's health, load and speed (`atomr.observability.route_stats`). It
reads them from the deployment manager (replica states, circuit breakers) every
`STATS_PERIOD_S` and from the metrics collector (queue depth, time to first token, latency)
every second, and sends gateways a `RouteStats` when something changed. So a gateway chooses a
deployment per request from its own copy, with no round trip.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

from thespian.actors import WakeupMessage

from atomr.actors.messages import (
    MANAGER_NAME,
    METRICS_NAME,
    Address,
    GetMetrics,
    GetRoutes,
    HeadStarted,
    ListDeployments,
    Lookup,
    PolicyTable,
    Reply,
    RouteStats,
    RouteTable,
    SetPolicies,
    SetRoutes,
    Subscribe,
    UseState,
)
from atomr.actors.sidecar import SidecarActor
from atomr.cluster.head_state import HeadState, open_state, record
from atomr.core.errors import ConfigError
from atomr.core.policies import Cascade, RoutePolicy
from atomr.core.routes import DeploymentStats, Route
from atomr.observability.route_stats import StatsTracker
from atomr.runners.catalog import serves_in_gateway

STATS_PERIOD_ENV = "ATOMR_STATS_PERIOD_S"
SETTLE_LIMIT_S = 60.0  # a registry never told that its head started settles by itself after this
METRICS_EVERY_S = 1.0


class Registry(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes: dict[str, Route] = {}
        self.subscribers: list[Address] = []
        self.route_policies: dict[str, RoutePolicy] = {}
        self.cascades: dict[str, Cascade] = {}
        self.tracker = StatsTracker()
        self.stats: dict[str, DeploymentStats] = {}
        self.period_s = float(os.environ.get(STATS_PERIOD_ENV, "0.5"))
        self._polling = False
        self._metrics_at = 0.0
        self._manager: Address = None
        self._collector: Address = None
        self.state: HeadState | None = None  # routes and cascades are recorded here (UseState)
        # Until the head has started (HeadStarted), requests for unknown names wait: the head may
        # be bringing them back from its state directory. A registry started again later (its
        # process died) settles by itself after SETTLE_LIMIT_S.
        self.settled = False
        self._settle_timer = False

    def receiveMsg_HeadStarted(self, msg: HeadStarted, sender: Address) -> None:
        self._settle()
        self.send(sender, Reply(True))

    def _settle(self) -> None:
        if self.settled:
            return
        self.settled = True
        table = RouteTable(dict(self.routes))
        for sub in self.subscribers:
            self.send(sub, table)

    def receiveMsg_SetRoutes(self, msg: SetRoutes, sender: Address) -> None:
        for name in msg.names:
            if msg.route is None:
                self.routes.pop(name, None)
            else:
                self.routes[name] = msg.route
        table = RouteTable(dict(self.routes), settled=self._settled())
        for sub in self.subscribers:
            self.send(sub, table)
        self.send(sender, table)  # acknowledges the change
        if self._polling:
            self._publish_stats()
        else:
            self._start_polling()

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Address) -> None:
        if sender not in self.subscribers:
            self.subscribers.append(sender)
        if self.route_policies or self.cascades:  # before the routes: their arrival settles waiting requests
            self.send(sender, PolicyTable(dict(self.route_policies), dict(self.cascades)))
        if self.stats:
            self.send(sender, RouteStats(dict(self.stats)))
        self.send(sender, RouteTable(dict(self.routes), settled=self._settled()))

    def receiveMsg_GetRoutes(self, msg: GetRoutes, sender: Address) -> None:
        self.send(sender, Reply(True, {n: self.routes[n] for n in msg.names if n in self.routes}))

    def receiveMsg_Lookup(self, msg: Lookup, sender: Address) -> None:
        if any(n in self.route_policies or n in self.cascades for n in msg.names):
            self.send(sender, PolicyTable(dict(self.route_policies), dict(self.cascades)))  # arrives first
        known = {n: self.routes[n] for n in msg.names if n in self.routes}
        self.send(sender, RouteTable(known, full=False, settled=self._settled()))

    # ---- routing policies and cascades ----

    def receiveMsg_UseState(self, msg: UseState, sender: Address) -> None:
        self.state, error = open_state(msg.state_dir)
        self.send(sender, Reply(error is None, error=error))

    def receiveMsg_SetPolicies(self, msg: SetPolicies, sender: Address) -> None:
        for name in msg.policies.names:
            if name in self.routes:
                err = ConfigError(f"{name!r} is already the name of a deployment", field="name")
                self.send(sender, Reply(False, error=err.info()))
                return
        failed = record(self.state, lambda s: s.set_policies(msg.policies, msg.remove))
        if failed is not None:
            self.send(sender, Reply(False, error=failed.info()))
            return
        for name in msg.remove:
            self.route_policies.pop(name, None)
            self.cascades.pop(name, None)
        for r in msg.policies.routes:
            self.cascades.pop(r.name, None)
            self.route_policies[r.name] = r
        for c in msg.policies.cascades:
            self.route_policies.pop(c.name, None)
            self.cascades[c.name] = c
        table = PolicyTable(dict(self.route_policies), dict(self.cascades))
        for sub in self.subscribers:
            self.send(sub, table)
        self.send(sender, Reply(True, sorted([*self.route_policies, *self.cascades])))
        self._start_polling()

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Address) -> None:
        if msg.payload == "poll":
            self._poll()
        elif msg.payload == "settle":
            self._settle()

    def _settled(self) -> bool:
        if not self.settled and not self._settle_timer:
            self._settle_timer = True
            self.wakeupAfter(timedelta(seconds=SETTLE_LIMIT_S), payload="settle")
        return self.settled

    def _wants_stats(self) -> bool:
        return bool(self.route_policies or self.cascades) or any(
            r.spec is not None and serves_in_gateway(r.spec) for r in self.routes.values()
        )

    def _start_polling(self) -> None:
        if self._wants_stats() and not self._polling:
            self._polling = True
            self._poll()

    def _poll(self) -> None:
        """Ask for fresh health (and, once a second, metrics); stop when nothing needs them."""
        if not self._wants_stats():
            self._polling = False
            return
        self.send(self._manager_address(), ListDeployments())
        now = time.monotonic()
        if now - self._metrics_at >= METRICS_EVERY_S:
            self._metrics_at = now
            self.send(self._collector_address(), GetMetrics())
        self.wakeupAfter(timedelta(seconds=self.period_s), payload="poll")

    def receiveMsg_Reply(self, msg: Reply, sender: Address) -> None:
        if not msg.ok:
            return
        if isinstance(msg.value, bytes):
            self.tracker.on_metrics(msg.value.decode(errors="replace"), time.monotonic())
        elif isinstance(msg.value, list):
            self.tracker.on_deployments(msg.value)
        else:
            return
        self._publish_stats()

    def _publish_stats(self) -> None:
        stats = self.tracker.stats(self.routes, time.monotonic())
        if stats == self.stats:
            return
        self.stats = stats
        update = RouteStats(dict(stats))
        for sub in self.subscribers:
            self.send(sub, update)

    def _manager_address(self) -> Address:
        if self._manager is None:
            from atomr.actors.deployment_manager import DeploymentManager

            self._manager = self.createActor(DeploymentManager, globalName=MANAGER_NAME)
        return self._manager

    def _collector_address(self) -> Address:
        if self._collector is None:
            from atomr.actors.metrics_collector import MetricsCollector

            self._collector = self.createActor(MetricsCollector, globalName=METRICS_NAME)
        return self._collector


def publish_policies(asys: Any, policies: Any, timeout: float = 30.0) -> list[str]:
    """Send routes and cascades to the registry of the system `asys` talks to; returns every name it holds."""
    from atomr.actors.messages import REGISTRY_NAME, reply_value

    registry = asys.createActor(Registry, globalName=REGISTRY_NAME)
    names: list[str] = reply_value(asys.ask(registry, SetPolicies(policies), timeout), "policies", timeout)
    return names
