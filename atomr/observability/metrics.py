"""Prometheus metrics: their names, the recorders that keep them, and how they reach one /metrics.

Every process records into its own `prometheus_client` registry (no global state, no
multiprocess files): a coordinator records its deployment's requests, latencies, tokens, queue,
in-flight, replica health, restarts and circuit-breaker states; a gateway records its HTTP
requests. Each recorder ships a snapshot of its registry (the collected metric families, which
pickle) to the metrics collector actor on the head about once a second when something changed;
the head's `/metrics` renders the newest snapshot of every source as one exposition. A snapshot
carries absolute values, so a lost or repeated one does no harm; a source that stops reporting
(its deployment was removed) is dropped after `STALE_AFTER_S`.

Label sets: deployment, version, runtime, tenant, replica (and outcome / kind where they apply).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.metrics_core import Metric

disable_created_metrics()  # the *_created series double every snapshot and no dashboard uses them

STALE_AFTER_S = 120.0  # the collector forgets a source silent this long (a process that died)
REFRESH_S = STALE_AFTER_S / 4  # a live source re-sends an unchanged snapshot this often

# Seconds; spans a local tiny model (~1 ms) to a slow remote API (~minutes).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}

DEPLOYMENT_LABELS = ("deployment", "version", "runtime")
# Metric names the dashboard and the docs rely on (the tests check the dashboard against them).
REQUESTS = "atomr_requests"  # counter, exposed as atomr_requests_total
REQUEST_LATENCY = "atomr_request_latency_seconds"
TIME_TO_FIRST_TOKEN = "atomr_time_to_first_token_seconds"
PROMPT_TOKENS = "atomr_prompt_tokens"
COMPLETION_TOKENS = "atomr_completion_tokens"
QUEUE_DEPTH = "atomr_queue_depth"
INFLIGHT = "atomr_inflight_requests"
REPLICA_UP = "atomr_replica_up"
REPLICA_RESTARTS = "atomr_replica_restarts"
CIRCUIT_STATE = "atomr_circuit_state"
HTTP_REQUESTS = "atomr_http_requests"
HTTP_REFUSED = "atomr_http_connections_refused"  # counter: connections refused or closed by a limit
ROUTE_REQUESTS = "atomr_route_requests"
CASCADE_REQUESTS = "atomr_cascade_requests"
CASCADE_ESCALATIONS = "atomr_cascade_escalations"
CASCADE_COST = "atomr_cascade_cost_usd"
CASCADE_BASELINE_COST = "atomr_cascade_baseline_cost_usd"
CASCADE_COST_SAVED = "atomr_cascade_cost_saved_usd"
CASCADE_COST_OVERSPENT = "atomr_cascade_cost_overspent_usd"
SPEND = "atomr_spend_usd"  # counter: what runs cost, by deployment and tenant (the spend log's sums)
KEY_SPEND = "atomr_key_spend_usd"  # gauge: a runtime key's spend in its budget's current period
KEY_BUDGET = "atomr_key_budget_usd"  # gauge: a runtime key's budget per period


class Recorder:
    """A process's own metrics, shipped to the collector as snapshots: `source` names the sender,
    `registry` holds the families, `dirty` says something changed since the last snapshot."""

    source: str
    registry: CollectorRegistry
    dirty: bool = True
    sent_at: float = -math.inf  # when the last snapshot was taken (time.monotonic())

    def take_snapshot(self, now: float | None = None) -> list[Metric] | None:
        """The registry's families when something changed since the last snapshot, or when that
        one is `REFRESH_S` old; else None. The refresh keeps an idle source's series alive: the
        collector forgets a source that sent nothing for `STALE_AFTER_S`, and a counter that
        vanished and came back would break `rate()` and the alerts built on it."""
        now = time.monotonic() if now is None else now
        if not self.dirty and now - self.sent_at < REFRESH_S:
            return None
        self.dirty = False
        self.sent_at = now
        return list(self.registry.collect())


class DeploymentMetrics(Recorder):
    """What one coordinator (or a gateway serving the deployment itself) records about it."""

    def __init__(self, deployment: str, version: str, runtime: str, where: str = "") -> None:
        self.source = f"deployment:{deployment}@{version}{where}"
        self._base = (deployment, version, runtime)
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        lab = DEPLOYMENT_LABELS
        self.requests = Counter(
            REQUESTS, "Requests answered, by outcome (ok or error kind)", [*lab, "tenant", "outcome"], registry=r
        )
        self.latency = Histogram(
            REQUEST_LATENCY,
            "Time from admission to the final answer",
            [*lab, "tenant", "replica"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            TIME_TO_FIRST_TOKEN,
            "Time from admission to the first chunk",
            [*lab, "tenant", "replica"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(PROMPT_TOKENS, "Prompt tokens of answered requests", [*lab, "tenant"], registry=r)
        self.completion_tokens = Counter(COMPLETION_TOKENS, "Completion tokens generated", [*lab, "tenant"], registry=r)
        self.spend = Counter(SPEND, "USD the deployment's runs cost, at its prices", [*lab, "tenant"], registry=r)
        self.queue = Gauge(QUEUE_DEPTH, "Requests waiting for a replica", lab, registry=r)
        self.inflight = Gauge(INFLIGHT, "Requests being generated, per replica", [*lab, "replica"], registry=r)
        self.up = Gauge(REPLICA_UP, "1 when the replica is ready and healthy", [*lab, "replica"], registry=r)
        self.restarts = Counter(REPLICA_RESTARTS, "Replica restarts", [*lab, "replica"], registry=r)
        self.circuit = Gauge(
            CIRCUIT_STATE, "Circuit breaker: 0 closed, 1 half-open, 2 open", [*lab, "replica"], registry=r
        )
        self.dirty = True

    def request_done(
        self, tenant: str, replica: str, outcome: str, latency_s: float, usage: Any = None, cost_usd: float = 0.0
    ) -> None:
        b = self._base
        self.requests.labels(*b, tenant, outcome).inc()
        if replica:
            self.latency.labels(*b, tenant, replica).observe(latency_s)
        if usage is not None:
            self.prompt_tokens.labels(*b, tenant).inc(usage.prompt_tokens)
            self.completion_tokens.labels(*b, tenant).inc(usage.completion_tokens)
        self.spend.labels(*b, tenant).inc(cost_usd)
        self.dirty = True

    def first_token(self, tenant: str, replica: str, ttft_s: float) -> None:
        self.ttft.labels(*self._base, tenant, replica).observe(ttft_s)
        self.dirty = True

    def replicas(self, queued: int | None, states: Iterable[tuple[str, bool, int, str | None]]) -> None:
        """Queue depth (None: no queue here) and, per replica: (slot, up, in flight, circuit state or None)."""
        b = self._base
        if queued is not None:
            self.queue.labels(*b).set(queued)
        for slot, up, inflight, circuit in states:
            self.up.labels(*b, slot).set(1 if up else 0)
            self.inflight.labels(*b, slot).set(inflight)
            if circuit is not None:
                self.circuit.labels(*b, slot).set(CIRCUIT_STATES.get(circuit, 0))
        self.dirty = True

    def restarted(self, slot: str) -> None:
        self.restarts.labels(*self._base, slot).inc()
        self.dirty = True


class KeyMetrics(Recorder):
    """What the key keeper records: each runtime key's spend in its period, and its budget."""

    def __init__(self) -> None:
        self.source = "keys"
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        lab = ["key", "tenant"]
        self.spent = Gauge(KEY_SPEND, "USD a runtime key spent in its budget's current period", lab, registry=r)
        self.budget = Gauge(KEY_BUDGET, "USD a runtime key may spend per period", ["key", "tenant"], registry=r)
        self._last: dict[tuple[str, str], tuple[float, float | None]] = {}

    def keys(self, rows: Iterable[tuple[str, str, float, float | None]]) -> None:
        """(key id, tenant, spent, budget or None) of every key; keys gone since are dropped."""
        now = {(key, tenant): (spent, budget) for key, tenant, spent, budget in rows}
        if now == self._last:
            return
        for labels in self._last.keys() - now.keys():
            self.spent.remove(*labels)
            if self._last[labels][1] is not None:
                self.budget.remove(*labels)
        for labels, (spent, budget) in now.items():
            self.spent.labels(*labels).set(spent)
            if budget is not None:
                self.budget.labels(*labels).set(budget)
        self._last = now
        self.dirty = True


class HttpMetrics(Recorder):
    """What an HTTP front records: its requests by route and status."""

    def __init__(self, gateway: str) -> None:
        self.source = f"http:{gateway}"
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            HTTP_REQUESTS, "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.refused = Counter(
            HTTP_REFUSED,
            "Connections refused or closed by a limit (connections, header bytes or count, header or body timeout)",
            ["reason"],
            registry=self.registry,
        )
        self.dirty = True

    def record(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()
        self.dirty = True

    def connection_refused(self, reason: str) -> None:
        self.refused.labels(reason).inc()
        self.dirty = True


class OrchestrationMetrics(Recorder):
    """What a gateway records about routing policies and cascades.

    Per cascade request: which tier answered, each escalation and why (``low_confidence`` or
    ``error``), what the tiers tried cost, and what the last tier alone would have cost. Saved
    and overspent are that difference per request, split by sign so both stay counters (net
    saving = saved - overspent = baseline - cost).
    """

    def __init__(self, gateway: str) -> None:
        self.source = f"orchestration:{gateway}"
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.routed = Counter(
            ROUTE_REQUESTS, "Requests a routing policy sent, by deployment chosen", ["route", "deployment"], registry=r
        )
        self.answered = Counter(
            CASCADE_REQUESTS, "Cascade requests by the tier answering", ["cascade", "tier", "deployment"], registry=r
        )
        self.escalations = Counter(
            CASCADE_ESCALATIONS, "Cascade requests passed up, by reason", ["cascade", "tier", "reason"], registry=r
        )
        self.cost = Counter(CASCADE_COST, "USD spent on every tier a cascade request tried", ["cascade"], registry=r)
        self.baseline = Counter(
            CASCADE_BASELINE_COST, "USD the last tier alone would have cost (estimated)", ["cascade"], registry=r
        )
        self.saved = Counter(
            CASCADE_COST_SAVED, "USD saved against sending every request to the last tier", ["cascade"], registry=r
        )
        self.overspent = Counter(
            CASCADE_COST_OVERSPENT, "USD spent beyond the last tier alone (escalated requests)", ["cascade"], registry=r
        )
        self.dirty = False

    def route(self, route: str, deployment: str) -> None:
        self.routed.labels(route, deployment).inc()
        self.dirty = True

    def escalated(self, cascade: str, tier: int, reason: str) -> None:
        self.escalations.labels(cascade, str(tier), reason).inc()
        self.dirty = True

    def cascade_done(self, cascade: str, tier: int, deployment: str, cost_usd: float, baseline_usd: float) -> None:
        self.answered.labels(cascade, str(tier), deployment).inc()
        self.cost.labels(cascade).inc(cost_usd)
        self.baseline.labels(cascade).inc(baseline_usd)
        diff = baseline_usd - cost_usd
        (self.saved if diff >= 0 else self.overspent).labels(cascade).inc(abs(diff))
        self.dirty = True


class SnapshotStore:
    """The newest snapshot of every source, rendered as one Prometheus text exposition."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple[float, list[Metric]]] = {}

    def put(self, source: str, families: list[Metric], now: float | None = None) -> None:
        self._sources[source] = (time.monotonic() if now is None else now, families)

    def drop(self, source: str) -> None:
        self._sources.pop(source, None)

    def sources(self) -> list[str]:
        return sorted(self._sources)

    def merged(self, now: float | None = None) -> list[Metric]:
        """Every source's families as one set. A series that several sources report (a deployment
        served by its replicas and, for HTTP requests, inside a gateway) is added up; its
        `_created` time is the earliest. A source silent for `STALE_AFTER_S` is forgotten."""
        now = time.monotonic() if now is None else now
        for source in [s for s, (t, _) in self._sources.items() if now - t > STALE_AFTER_S]:
            del self._sources[source]
        out: dict[str, Metric] = {}
        index: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        for _, families in self._sources.values():
            for fam in families:
                into = out.get(fam.name)
                if into is None:
                    into = out[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                for sample in fam.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    at = index.get(key)
                    if at is None:
                        index[key] = len(into.samples)
                        into.samples.append(sample)
                        continue
                    seen = into.samples[at]
                    if sample.name.endswith("_created"):
                        value = min(seen.value, sample.value)
                    else:
                        value = seen.value + sample.value
                    into.samples[at] = seen._replace(value=value)
        return list(out.values())

    def exposition(self) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Fixed(self.merged()))
        return generate_latest(registry)


class _Fixed:
    """A prometheus_client collector that yields given families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)
