"""The HTTP front's way into the cluster: an `InferenceBackend` living inside a gateway actor.

The HTTP server runs on the gateway's sidecar loop. A request is handed to the gateway's actor
thread (`Sidecar.post`), which admits and forwards it exactly as it does a `Client`'s request,
with the gateway itself as the requester; the request's events come back to the gateway actor
and are passed to the loop (one hand-off per arriving message), where `StreamAssembler` puts
them in order just as the `Client` does. Status and metrics questions are actor messages whose
replies resolve futures on the loop.

Requests for a remote deployment that this gateway also serves itself (`atomr.http.inline`) skip
the gateway actor: they run on the loop, and their events go straight into their queue.

When the gateway learns that a deployment's coordinator was replaced (its predecessor died,
perhaps holding requests in its queue), the requests of that deployment that have heard nothing
yet are sent again, marked as resent: the new coordinator ignores those its adopted replicas
already serve.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import uvicorn

from atomr.actors.messages import GetMetrics, GetStatus, Reply, WorkItem
from atomr.core.errors import InferenceError, InternalError, UnavailableError
from atomr.core.routes import Route
from atomr.core.tenants import TenantTable
from atomr.core.types import InferenceRequest, StreamEvent, Usage
from atomr.http.app import make_app
from atomr.http.inline import InlineRunners
from atomr.http.settings import HttpSettings
from atomr.observability.metrics import HttpMetrics
from atomr.serving.stream_assembly import StreamAssembler

if TYPE_CHECKING:
    from atomr.actors.gateway import Gateway

ASK_TIMEOUT_S = 10.0


class GatewayLane:
    """Runs the HTTP server on the gateway's loop and carries its requests through the gateway."""

    def __init__(self, actor: Gateway, settings: HttpSettings, tenants: TenantTable) -> None:
        self.actor = actor
        self.settings = settings
        self.http_metrics = HttpMetrics(f"{settings.bind}:{settings.port}")
        self._queues: dict[str, asyncio.Queue[StreamEvent | None]] = {}
        self._silent: dict[str, InferenceRequest] = {}  # sent, and nothing heard yet
        self._asks: dict[str, collections.deque[asyncio.Future[Any]]] = {
            "status": collections.deque(),
            "metrics": collections.deque(),
        }
        self._server: uvicorn.Server | None = None
        self._app = make_app(self, tenants, settings, self.http_metrics)
        self.inline = InlineRunners(str(actor.myAddress))

    # ---- server lifecycle (loop thread) ----

    async def start(self) -> int:
        """Start listening; returns the port (useful when settings.port is 0)."""
        config = uvicorn.Config(
            self._app,
            host=self.settings.bind,
            port=self.settings.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="none",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        self.inline.refresh(dict(self.actor.routes))
        task = asyncio.get_running_loop().create_task(server.serve())
        while not server.started:
            if task.done():
                exc = task.exception()
                raise UnavailableError(
                    f"the HTTP front could not listen on {self.settings.bind}:{self.settings.port}: {exc}"
                )
            await asyncio.sleep(0.01)
        sockets = [s for srv in server.servers for s in srv.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self.settings.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        await self.inline.close()

    # ---- InferenceBackend (loop thread) ----

    async def stream(self, request: InferenceRequest) -> AsyncIterator[StreamEvent]:
        rid = request.request_id
        q: asyncio.Queue[StreamEvent | None] = asyncio.Queue()  # None: waited long enough
        self._queues[rid] = q
        assembler = StreamAssembler(rid)
        deadline = request.deadline or (time.time() + 600.0)
        model = request.model  # where a cancel goes, when it goes through the gateway actor
        via_actor = False  # it (or its fallback) was sent to a coordinator through the gateway actor
        loop = asyncio.get_running_loop()
        # One timer per request (re-armed only when the assembler's wait changes), rather than a
        # wait_for per event: the timer puts None in the queue.
        timer: asyncio.TimerHandle | None = None
        item = WorkItem(request, self.actor.myAddress)

        def forward(onward: WorkItem) -> None:
            nonlocal model, via_actor
            model, via_actor = onward.request.model, True
            self._send_item(onward)

        slot = self.inline.take(request, self.actor.stats, self._routed_by_actor)
        route = self.actor.routes.get(request.model) if slot is not None else None

        def admitted(debits: tuple[tuple[str, int], ...]) -> None:
            assert slot is not None
            settle = self._settler(debits)
            if self._queues.get(rid) is q:
                self.inline.start(slot, item, q.put_nowait, forward, settle)
                return
            slot.give_back()  # its caller left (or its deadline passed) while it waited
            if settle is not None:
                settle(None)

        if slot is None or route is None:
            if slot is not None:
                slot.give_back()
            self._send(request)
            self._silent[rid] = request
            via_actor = True
        elif not route.limits:
            self.inline.start(slot, item, q.put_nowait, forward)
        else:  # the gateway actor admits it from its lease first, as on the other path
            self.actor.sidecar.post(lambda: self.actor.admit_here(item, route, admitted))
        try:
            while True:
                expiry = loop.time() + assembler.wait_time(deadline - time.time())
                if timer is None or abs(timer.when() - expiry) > 0.05:
                    if timer is not None:
                        timer.cancel()
                    timer = loop.call_at(expiry, q.put_nowait, None)
                ev = await q.get()
                if ev is None:
                    timer = None
                    steps = [assembler.on_timeout()]
                else:
                    self._silent.pop(rid, None)
                    steps = assembler.on_event(ev)
                for step in steps:
                    if step.resend:
                        self._send(request, resent=True)
                    elif step.error is not None:
                        raise step.error
                    elif step.event is not None:
                        yield step.event
                        if step.final:
                            return
        finally:
            if timer is not None:
                timer.cancel()
            self._queues.pop(rid, None)
            self._silent.pop(rid, None)
            if slot is not None:
                slot.give_back()  # refused by the rate limit, or ended before it started
            if not assembler.finished:
                here = slot.task if slot is not None else None
                if here is not None and not here.done():
                    here.cancel()
                elif via_actor:  # (one still waiting for admission learns it left when admitted)
                    self.actor.sidecar.post(lambda: self.actor.cancel_requests([rid], model))

    def _settler(self, debits: tuple[tuple[str, int], ...]) -> Callable[[Usage | None], None] | None:
        """What settles a request's token debits with the rate limiter, through the gateway actor."""
        if not any(tokens for _, tokens in debits):
            return None
        return lambda usage: self.actor.sidecar.post(lambda: self.actor.settle(debits, usage))

    def _routed_by_actor(self, model: str) -> bool:
        """Route and cascade names: the gateway actor chooses or runs their deployments."""
        return model in self.actor.route_policies or model in self.actor.cascades

    def _send(self, request: InferenceRequest, resent: bool = False) -> None:
        self._send_item(WorkItem(request, self.actor.myAddress, resent=resent))

    def _send_item(self, item: WorkItem) -> None:
        self.actor.sidecar.post(lambda: self.actor.accept([item]))

    def model_names(self) -> list[str]:
        """Deployments and their aliases, routes and cascades: every name a request may use."""
        return sorted({*self.actor.routes, *self.actor.route_policies, *self.actor.cascades})

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        status = await self._ask("status", GetStatus())
        states = {d.name: d.state for d in status["deployments"]}
        ready_names = {d.name for d in status["deployments"] if any(r.state == "ready" for r in d.replicas)}
        return bool(states) and set(states) <= ready_names, states

    async def metrics(self) -> bytes:
        self.actor.sidecar.post(self.actor.ship_metrics)  # our own counters first, then the ask
        text: bytes = await self._ask("metrics", GetMetrics())
        return text

    async def _ask(self, kind: str, msg: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks[kind].append(fut)
        self.actor.sidecar.post(lambda: self.actor.ask_admin(kind, msg))
        try:
            reply = await asyncio.wait_for(fut, ASK_TIMEOUT_S)
        except TimeoutError:
            raise UnavailableError(f"no {kind} answer within {ASK_TIMEOUT_S:g} s", retry_after=1.0) from None
        if not isinstance(reply, Reply):
            raise InternalError(f"unexpected {kind} answer: {type(reply).__name__}")
        if not reply.ok:
            raise InferenceError.from_info(reply.error) if reply.error else InternalError(f"{kind} failed")
        return reply.value

    # ---- from the actor thread ----

    def deliver(self, events: list[StreamEvent]) -> None:
        self.actor.sidecar.call_soon(self._deliver, events)

    def answered(self, kind: str, reply: Any) -> None:
        self.actor.sidecar.call_soon(self._answered, kind, reply)

    def routes_changed(self, routes: dict[str, Route]) -> None:
        self.actor.sidecar.call_soon(self.inline.refresh, routes)

    def coordinators_replaced(self, names: set[str]) -> None:
        """These model names now route to new coordinators: what they may have lost is sent again."""
        self.actor.sidecar.call_soon(self._resend_silent, names)

    # ---- loop thread ----

    def _resend_silent(self, names: set[str]) -> None:
        for request in list(self._silent.values()):
            if request.model in names:
                self._send(request, resent=True)

    def _deliver(self, events: list[StreamEvent]) -> None:
        for ev in events:
            q = self._queues.get(ev.request_id)
            if q is not None:
                q.put_nowait(ev)

    def _answered(self, kind: str, reply: Any) -> None:
        waiting = self._asks[kind]
        while waiting:
            fut = waiting.popleft()
            if not fut.done():
                fut.set_result(reply)
                return
