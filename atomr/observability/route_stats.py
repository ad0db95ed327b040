"""What routing policies know about each deployment, as the registry derives it (no actors here).

Two sources, both already produced by the running system, so a request pays nothing for them:

* health, from the deployment manager's view (`DeploymentInfo`, updated by coordinators whenever
  a replica's state or circuit breaker changes): is some replica ready, is every ready replica's
  breaker open;
* load and speed, from the coordinators' metrics (shipped to the metrics collector about once a
  second): queue depth and in-flight gauges, and the time-to-first-token and latency histograms.
  Their sums and counts only grow, so the mean of the observations that arrived since the last
  reading feeds an exponentially weighted moving average (EWMA) per deployment, weighted as if
  each observation had been added one by one.

An average not refreshed for `STALE_AFTER_S` is forgotten, so a deployment that was slow and got
no traffic since is measured again (policies probe deployments they know no speed of).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from atomr.core.routes import DeploymentStats, Route
from atomr.core.status import DeploymentInfo
from atomr.observability.metrics import INFLIGHT, QUEUE_DEPTH, REQUEST_LATENCY, TIME_TO_FIRST_TOKEN

EWMA_ALPHA = 0.3  # weight of one new observation
STALE_AFTER_S = 60.0

_SAMPLE = re.compile(r"^([A-Za-z_:][\w:]*)\{([^}]*)\}\s+(\S+)")
_DEPLOYMENT_LABEL = re.compile(r'(?:^|,)deployment="((?:[^"\\]|\\.)*)"')
_WANTED = (
    f"{TIME_TO_FIRST_TOKEN}_sum",
    f"{TIME_TO_FIRST_TOKEN}_count",
    f"{REQUEST_LATENCY}_sum",
    f"{REQUEST_LATENCY}_count",
    QUEUE_DEPTH,
    INFLIGHT,
)


@dataclass(slots=True)
class Ewma:
    """A moving average fed from a growing (sum, count) pair."""

    total: float = 0.0
    count: float = 0.0
    value: float | None = None
    at: float = 0.0  # when `value` last changed

    def update(self, total: float, count: float, now: float) -> None:
        new = count - self.count
        if new < 0:  # the series restarted (a new coordinator): start again from its totals
            self.total, self.count = total, count
            return
        if new > 0:
            mean = (total - self.total) / new
            if self.value is None:
                self.value = mean
            else:
                weight = 1.0 - (1.0 - EWMA_ALPHA) ** new
                self.value += weight * (mean - self.value)
            self.at = now
        self.total, self.count = total, count

    def current(self, now: float) -> float | None:
        return self.value if self.value is not None and now - self.at <= STALE_AFTER_S else None


@dataclass(slots=True)
class _Health:
    ready: bool
    circuit_open: bool
    ready_replicas: int


class StatsTracker:
    """Keeps the latest readings per deployment and turns them into `DeploymentStats`."""

    def __init__(self) -> None:
        self._health: dict[str, _Health] = {}
        self._queued: dict[str, float] = {}
        self._inflight: dict[str, float] = {}
        self._ttft: dict[str, Ewma] = {}
        self._latency: dict[str, Ewma] = {}

    def on_deployments(self, infos: Iterable[DeploymentInfo]) -> None:
        """The deployment manager's list: replica states and circuit breakers."""
        health = {}
        for info in infos:
            ready = [r for r in info.replicas if r.state == "ready"]
            closed = [r for r in ready if (r.health.get("circuit") or {}).get("state") != "open"]
            serving = bool(ready) and info.state not in ("failed", "draining")
            health[info.name] = _Health(serving, bool(ready) and not closed, len(closed))
        self._health = health

    def on_metrics(self, text: str, now: float) -> None:
        """The merged Prometheus exposition of every coordinator (as the head's /metrics serves it)."""
        sums: dict[str, dict[str, float]] = {name: {} for name in _WANTED}
        for line in text.splitlines():
            if not line.startswith(_WANTED):
                continue
            m = _SAMPLE.match(line)
            if m is None or m.group(1) not in sums:
                continue
            d = _DEPLOYMENT_LABEL.search(m.group(2))
            if d is None:
                continue
            try:
                value = float(m.group(3))
            except ValueError:
                continue
            per = sums[m.group(1)]
            per[d.group(1)] = per.get(d.group(1), 0.0) + value
        self._queued = sums[QUEUE_DEPTH]
        self._inflight = sums[INFLIGHT]
        for family, averages in ((TIME_TO_FIRST_TOKEN, self._ttft), (REQUEST_LATENCY, self._latency)):
            counts, totals = sums[f"{family}_count"], sums[f"{family}_sum"]
            for name, count in counts.items():
                averages.setdefault(name, Ewma()).update(totals.get(name, 0.0), count, now)

    def stats(self, routes: Mapping[str, Route], now: float) -> dict[str, DeploymentStats]:
        """Stats of every deployment that has a route (keyed by deployment name)."""
        out: dict[str, DeploymentStats] = {}
        for route in routes.values():
            name = route.deployment
            if name in out:
                continue
            health = self._health.get(name)
            ttft, latency = self._ttft.get(name), self._latency.get(name)
            out[name] = DeploymentStats(
                ready=health.ready if health is not None else True,
                circuit_open=health.circuit_open if health is not None else False,
                saturated=self._saturated(name, route, health),
                queued=self._queued.get(name, 0.0) > 0,
                ttft_s=ttft.current(now) if ttft is not None else None,
                latency_s=latency.current(now) if latency is not None else None,
            )
        return out

    def _saturated(self, name: str, route: Route, health: _Health | None) -> bool:
        """The queue is full (or, with no queue, every usable replica's credits are taken)."""
        if route.spec is None:
            return False
        limits = route.spec.limits
        if limits.max_queue > 0:
            return self._queued.get(name, 0.0) >= limits.max_queue
        replicas = health.ready_replicas if health is not None else route.spec.replicas
        return replicas > 0 and self._inflight.get(name, 0.0) >= replicas * limits.max_inflight_per_replica
