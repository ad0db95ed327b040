"""The gateway's side of the HTTP front's port (`atomr.http.port`), owned by the gateway actor.

The front (`atomr.http.front.HttpFront`) runs on the gateway's sidecar loop and speaks only the
port. `HttpLane` implements its `GatewayPort`: each request, cancel, fallback, admission or
settlement is handed to the gateway's actor thread (`Sidecar.post`, one byte per wake-up, no
message), where the gateway treats the request exactly as a `Client`'s, with itself as the
requester (`WorkItem`s are made here). The other way, the gateway calls the lane on its actor
thread (the events of the front's requests, routing snapshots, replaced coordinators, answers to
status and metrics questions) and the lane passes each to the loop (`call_soon`). Status and
metrics questions are actor messages whose replies resolve futures on the loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from atomr.actors.messages import GetMetrics, GetStatus, KeysAdmin, Reply, WorkItem
from atomr.core.errors import InferenceError, InternalError, UnavailableError
from atomr.core.keys import ApiKey
from atomr.core.routes import Route
from atomr.core.spend import SpendRecord
from atomr.core.tenants import TenantTable
from atomr.core.types import InferenceRequest, StreamEvent, Usage
from atomr.http.front import HttpFront
from atomr.http.port import Debits, RoutingSnapshot
from atomr.http.settings import HttpSettings
from atomr.http.workers import WorkerPlace
from atomr.observability.metrics import Recorder

if TYPE_CHECKING:
    from atomr.actors.gateway import Gateway

ASK_TIMEOUT_S = 10.0


class HttpLane:
    """The HTTP front of one gateway, and the gateway's half of the port between them."""

    def __init__(
        self, gateway: Gateway, settings: HttpSettings, tenants: TenantTable, place: WorkerPlace | None = None
    ) -> None:
        self.gw = gateway
        self.front = HttpFront(self, settings, tenants, str(gateway.myAddress), place)
        self._asks: dict[str, collections.deque[asyncio.Future[Any]]] = {
            "status": collections.deque(),
            "metrics": collections.deque(),
            "keys": collections.deque(),
        }

    # ---- GatewayPort (called on the loop) ----

    def submit(self, request: InferenceRequest, *, resent: bool = False) -> None:
        item = WorkItem(request, self.gw.myAddress, resent=resent)
        self.gw.sidecar.post(lambda: self.gw.accept([item]))

    def cancel(self, request_ids: list[str], model: str) -> None:
        self.gw.sidecar.post(lambda: self.gw.cancel_requests(request_ids, model))

    def fallback(self, request: InferenceRequest, fallbacks: tuple[str, ...]) -> str | None:
        onward = WorkItem(request, self.gw.myAddress).onward(fallbacks)
        if onward is None:
            return None
        self.gw.sidecar.post(lambda: self.gw.accept([onward]))
        return onward.request.model

    def admit(self, request: InferenceRequest, route: Route, admitted: Callable[[Debits], None]) -> None:
        item = WorkItem(request, self.gw.myAddress)
        self.gw.sidecar.post(lambda: self.gw.admit_here(item, route, admitted))

    def settle(self, debits: Debits, usage: Usage | None) -> None:
        self.gw.sidecar.post(lambda: self.gw.settle(debits, usage))

    def spent(self, records: list[SpendRecord]) -> None:
        self.gw.sidecar.post(lambda: self.gw.spent(records))

    async def keys_admin(self, op: str, args: dict[str, Any], admin_key: str | None) -> Any:
        return await self._ask("keys", KeysAdmin(op, args, admin_key))

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        status = await self._ask("status", GetStatus())
        states = {d.name: d.state for d in status["deployments"]}
        ready_names = {d.name for d in status["deployments"] if any(r.state == "ready" for r in d.replicas)}
        return bool(states) and set(states) <= ready_names, states

    async def metrics(self) -> bytes:
        self.gw.sidecar.post(self.gw.ship_metrics)  # the front's own counters first, then the ask
        text: bytes = await self._ask("metrics", GetMetrics())
        return text

    async def _ask(self, kind: str, msg: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks[kind].append(fut)
        self.gw.sidecar.post(lambda: self.gw.ask_admin(kind, msg))
        try:
            reply = await asyncio.wait_for(fut, ASK_TIMEOUT_S)
        except TimeoutError:
            raise UnavailableError(f"no {kind} answer within {ASK_TIMEOUT_S:g} s", retry_after=1.0) from None
        if not isinstance(reply, Reply):
            raise InternalError(f"unexpected {kind} answer: {type(reply).__name__}")
        if not reply.ok:
            raise InferenceError.from_info(reply.error) if reply.error else InternalError(f"{kind} failed")
        return reply.value

    # ---- from the gateway (called on the actor thread) ----

    async def start(self) -> int:
        """Start the HTTP server (run on the loop); returns its port."""
        return await self.front.start()

    async def stop(self) -> None:
        await self.front.stop()

    def recorders(self) -> list[Recorder]:
        return self.front.recorders()

    def deliver(self, events: list[StreamEvent]) -> None:
        self.gw.sidecar.call_soon(self.front.deliver, events)

    def publish(self, snapshot: RoutingSnapshot) -> None:
        self.gw.sidecar.call_soon(self.front.routing_changed, snapshot)

    def coordinators_replaced(self, names: frozenset[str]) -> None:
        self.gw.sidecar.call_soon(self.front.coordinators_replaced, names)

    def keys_changed(self, keys: tuple[ApiKey, ...]) -> None:
        self.gw.sidecar.call_soon(self.front.keys_changed, keys)

    def answered(self, kind: str, reply: Any) -> None:
        self.gw.sidecar.call_soon(self._answered, kind, reply)

    def _answered(self, kind: str, reply: Any) -> None:
        waiting = self._asks[kind]
        while waiting:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_result(reply)
                return
