"""Routing policies: which deployment of a route takes a request (pure; the gateway calls it).

`Router.plan` orders a route's deployments for one request from what the gateway already holds
(its copy of the registry's routes and `DeploymentStats`), so a choice costs a few microseconds
and no message. The first deployment takes the request; the others become its fallbacks, so a
retryable failure before the first chunk (rate limited, overloaded, open circuit, ...) moves it on.

Candidates that are usable (a ready replica, breaker not open, queue not full) come first, ranked
by the policy; the others follow in the same order, as a last resort:

* ``fixed``: the order listed (the first is the primary, the rest its backups);
* ``weighted``: smooth weighted round robin over the weights (exact shares, no randomness);
* ``cheapest``: the lowest estimated price of this request (prompt estimate x prompt price plus
  ``max_tokens`` x completion price, from each deployment's ``cost``);
* ``fastest``: the lowest moving average of time to first token (latency when no TTFT was seen),
  as measured by the coordinators; a deployment with no recent measurement gets one request per
  ``PROBE_INTERVAL_S`` so that it is measured, the rest go to the fastest measured one;
* ``quality``: the highest ``quality`` tier (the order listed among equals).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from atomr.core.policies import RoutePolicy
from atomr.core.ratelimit import estimate_prompt_tokens
from atomr.core.routes import DeploymentStats, Route
from atomr.core.types import InferenceRequest

PROBE_INTERVAL_S = 2.0
_UNKNOWN = DeploymentStats()


class Router:
    """Chooses per request; keeps only the weighted round robin's state and the last probes."""

    def __init__(self) -> None:
        self._credit: dict[str, dict[str, float]] = {}  # route -> deployment -> current weight
        self._probed: dict[str, float] = {}  # deployment -> when it last got a probe request

    def plan(
        self,
        policy: RoutePolicy,
        routes: Mapping[str, Route],
        stats: Mapping[str, DeploymentStats],
        request: InferenceRequest,
        now: float | None = None,
    ) -> list[str]:
        """Deployment names in the order to try (only those the registry knows a route for)."""
        known = [t.deployment for t in policy.deployments if t.deployment in routes]
        good = [n for n in known if stats.get(n, _UNKNOWN).usable]
        bad = [n for n in known if n not in good]
        kind = policy.policy
        if kind == "weighted":
            return self._weighted(policy, good) + self._by_weight(policy, bad)
        if kind == "cheapest":
            key = _price(routes, request)
            return sorted(good, key=key) + sorted(bad, key=key)
        if kind == "quality":
            return sorted(good, key=lambda n: -_quality(routes[n])) + sorted(bad, key=lambda n: -_quality(routes[n]))
        if kind == "fastest":
            return self._fastest(good, stats, time.monotonic() if now is None else now) + sorted(
                bad, key=lambda n: _speed_key(stats.get(n, _UNKNOWN))
            )
        return good + bad  # fixed

    def _weighted(self, policy: RoutePolicy, names: list[str]) -> list[str]:
        """Nginx's smooth weighted round robin over the usable deployments, then the rest by weight."""
        if not names:
            return []
        weights = {t.deployment: t.weight for t in policy.deployments if t.deployment in names}
        credit = self._credit.setdefault(policy.name, {})
        total = sum(weights.values())
        for n, w in weights.items():
            credit[n] = credit.get(n, 0.0) + w
        chosen = max(names, key=lambda n: credit[n])
        credit[chosen] -= total
        return [chosen, *self._by_weight(policy, [n for n in names if n != chosen])]

    @staticmethod
    def _by_weight(policy: RoutePolicy, names: list[str]) -> list[str]:
        weights = {t.deployment: t.weight for t in policy.deployments}
        return sorted(names, key=lambda n: -weights[n])

    def _fastest(self, names: list[str], stats: Mapping[str, DeploymentStats], now: float) -> list[str]:
        measured = [n for n in names if _speed(stats.get(n, _UNKNOWN)) is not None]
        unmeasured = [n for n in names if n not in measured]
        measured.sort(key=lambda n: _speed_key(stats[n]))
        for n in unmeasured:
            if now - self._probed.get(n, -PROBE_INTERVAL_S) >= PROBE_INTERVAL_S:
                self._probed[n] = now
                return [n, *measured, *(u for u in unmeasured if u != n)]
        return measured + unmeasured


def _speed(s: DeploymentStats) -> float | None:
    return s.ttft_s if s.ttft_s is not None else s.latency_s


def _speed_key(s: DeploymentStats) -> tuple[bool, float]:
    """Measured first, fastest first."""
    speed = _speed(s)
    return (speed is None, speed or 0.0)


def _quality(route: Route) -> int:
    return route.spec.quality if route.spec is not None else 0


def _price(routes: Mapping[str, Route], request: InferenceRequest) -> Callable[[str], float]:
    completion = request.completion_budget
    prompt = estimate_prompt_tokens(request.prompt_chars)

    def key(name: str) -> float:
        spec = routes[name].spec
        return spec.cost.usd(prompt, completion) if spec is not None else 0.0

    return key
