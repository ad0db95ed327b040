"""The port between the HTTP front and the gateway that hosts it: what crosses, and nothing more.

Three parts, every call made on the front's event loop (the gateway's side does its own hand-offs
between that loop and its actor thread):

- `InferenceBackend`: what the Starlette app needs (a request's events, the model names,
  readiness, metrics). `atomr.http.front.HttpFront` implements it over the two below.
- `GatewayPort`, the front to the gateway: requests and cancels in; for the requests the front
  serves itself (`atomr.http.inline`), their rate-limit admission and settlement and their move
  to a fallback deployment; the status and metrics questions. The gateway actor's side
  (`atomr.actors.http_lane`) implements it.
- `FrontSink`, the gateway to the front: the events of the front's requests, a new
  `RoutingSnapshot` whenever the gateway's routing changes, and the model names whose
  coordinator was replaced (what those requests may have lost is sent again).

Only `atomr.core` values cross: no actor, message or Thespian type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

from atomr.core.keys import ApiKey
from atomr.core.routes import DeploymentStats, Route
from atomr.core.spend import SpendRecord
from atomr.core.types import InferenceRequest, StreamEvent, Usage

# (rate-limit key, tokens estimated) of each budget a request was admitted from
Debits = tuple[tuple[str, int], ...]


def _no_routes() -> Mapping[str, Route]:
    return MappingProxyType({})


def _no_stats() -> Mapping[str, DeploymentStats]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RoutingSnapshot:
    """The gateway's routing as the front needs it, immutable; a new one comes on every change.

    `routes`: model name or alias -> its deployment's route (the same object until the routes
    change, so the front can tell); `routed`: route and cascade names, whose deployment the
    gateway chooses per request; `stats`: deployment name -> its stats (queue, health...).
    """

    routes: Mapping[str, Route] = field(default_factory=_no_routes)
    routed: frozenset[str] = frozenset()
    stats: Mapping[str, DeploymentStats] = field(default_factory=_no_stats)

    def model_names(self) -> list[str]:
        """Deployments and their aliases, routes and cascades: every name a request may use."""
        return sorted({*self.routes, *self.routed})

    def forwarded_headers(self) -> frozenset[str]:
        """The request headers some deployment passes on to its provider (`engine.forward_headers`)."""
        names: set[str] = set()
        for route in self.routes.values():
            listed = route.spec.engine.get("forward_headers") if route.spec is not None else None
            if isinstance(listed, list | tuple):
                names.update(str(h).lower() for h in listed)
        return frozenset(names)


class InferenceBackend(Protocol):
    """What the HTTP front's app needs from the cluster."""

    def stream(self, request: InferenceRequest) -> AsyncIterator[StreamEvent]:
        """Events of `request` (chunks, then the final one); raises its InferenceError.
        Closing the iterator early cancels the request."""
        ...

    def model_names(self) -> list[str]: ...

    def forwarded_headers(self) -> frozenset[str]:
        """Lower-case names of the request headers that travel with a request (`forward_headers`)."""
        ...

    async def readiness(self) -> tuple[bool, dict[str, str]]: ...

    async def metrics(self) -> bytes: ...

    async def keys_admin(self, op: str, args: dict[str, Any], admin_key: str | None) -> Any:
        """An admin operation on runtime keys or spend (checked against the admin key by the
        key keeper); raises its InferenceError."""
        ...


class GatewayPort(Protocol):
    """What the front asks of the gateway that hosts it."""

    def submit(self, request: InferenceRequest, *, resent: bool = False) -> None:
        """Admit and forward `request` with the front as its requester; its events come back
        through `FrontSink.deliver`. `resent`: a copy of a request that its coordinator may
        have lost (a coordinator already serving it ignores the copy)."""
        ...

    def cancel(self, request_ids: list[str], model: str) -> None:
        """Cancel requests sent through `submit` (or `fallback`) under the model name `model`."""
        ...

    def fallback(self, request: InferenceRequest, fallbacks: tuple[str, ...]) -> str | None:
        """Send `request`, which the front served itself and which failed before its first
        chunk with a retryable error, on to the next of `fallbacks` through the gateway (as
        `submit` does). Returns the model name it went to, or None when none is left (or its
        deadline passed): the failure is then its answer."""
        ...

    def admit(self, request: InferenceRequest, route: Route, admitted: Callable[[Debits], None]) -> None:
        """Admit `request` (to be served by the front itself) from the gateway's leases on its
        route's rate limits: `admitted(debits)` then runs on the loop; a refusal arrives as the
        request's error event through `FrontSink.deliver`."""
        ...

    def settle(self, debits: Debits, usage: Usage | None) -> None:
        """Tell the rate limiter what a token-limited request served by the front really used."""
        ...

    def spent(self, records: list[SpendRecord]) -> None:
        """Runs the front served itself ended: what they cost, for the spend log and budgets."""
        ...

    async def keys_admin(self, op: str, args: dict[str, Any], admin_key: str | None) -> Any:
        """Ask the key keeper (see `InferenceBackend.keys_admin`)."""
        ...

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether every deployment has a ready replica, and each deployment's state."""
        ...

    async def metrics(self) -> bytes:
        """The Prometheus text of the whole cluster (the front's own counters included)."""
        ...


class FrontSink(Protocol):
    """What the gateway pushes to the front (each call made on the front's loop)."""

    def deliver(self, events: list[StreamEvent]) -> None:
        """Events of the front's requests, in the order they arrived."""
        ...

    def routing_changed(self, snapshot: RoutingSnapshot) -> None: ...

    def coordinators_replaced(self, names: frozenset[str]) -> None:
        """These model names now route to new coordinators (the old ones died, perhaps holding
        requests in their queues): requests of theirs that have heard nothing are sent again."""
        ...

    def keys_changed(self, keys: tuple[ApiKey, ...]) -> None:
        """The runtime keys as the key keeper last published them."""
        ...
