"""The HTTP front as a whole: its server, and its requests' way into the cluster through the port.

`HttpFront` serves the app (`atomr.http.app`) with uvicorn on the event loop of the process that
hosts it (a gateway's sidecar loop) and implements the app's `InferenceBackend` over a
`GatewayPort`: a request is handed to the gateway (`submit`), which admits and forwards it exactly
as it does a `Client`'s, with the front as the requester; its events come back through
`deliver` (`FrontSink`), and `StreamAssembler` puts them in order just as the `Client` does.

Requests for a remote deployment that this process also serves itself (`atomr.http.inline`) are
run on the loop instead, when the gateway's latest `RoutingSnapshot` allows it; their events go
straight into their queue.

When the gateway reports that a deployment's coordinator was replaced (its predecessor died,
perhaps holding requests in its queue), the requests of that deployment that have heard nothing
yet are sent again, marked as resent: the new coordinator ignores those its adopted replicas
already serve.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from atomr.core.errors import OverloadedError, UnavailableError
from atomr.core.keys import ApiKey
from atomr.core.spend import SpendBatch, SpendRecord, spend_record
from atomr.core.tenants import TenantTable
from atomr.core.types import InferenceRequest, StreamEvent, Usage
from atomr.http.app import make_app
from atomr.http.connection_guard import ConnectionLimits, RefusalLog, connection_cap, guarded_protocol
from atomr.http.inline import Fallback, InlineRunners, Slot
from atomr.http.port import Debits, GatewayPort, RoutingSnapshot
from atomr.http.settings import HttpSettings
from atomr.http.workers import WorkerPlace, listening_socket
from atomr.observability.metrics import HttpMetrics, Recorder
from atomr.serving.stream_assembly import StreamAssembler

# Events queued for a caller that does not read them: past HIGH a runner of this process waits
# (its provider's stream is then not read: back-pressure down to the provider's TCP window) until
# the caller has taken the queue down to LOW; past MAX (events from other processes, which cannot
# wait) the request is cancelled and answered with an error.
QUEUE_HIGH, QUEUE_LOW, QUEUE_MAX = 64, 16, 4096
SPEND_FLUSH_S = 1.0  # the runs of this process's runners leave for the key keeper at least this often


@dataclass(slots=True)
class _Call:
    """One request of the front in flight: where its events queue and which way it went."""

    request: InferenceRequest
    queue: asyncio.Queue[StreamEvent | None]  # None: waited long enough
    model: str  # where a cancel goes, when it went through the gateway
    slot: Slot | None = None  # its place in a runner of this process, if it runs here
    via_gateway: bool = False  # it (or its fallback) was sent through the gateway
    assembler: StreamAssembler = field(init=False)
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set: a runner here may go on
    overflowed: bool = False  # its caller stopped reading: dropped

    def __post_init__(self) -> None:
        self.assembler = StreamAssembler(self.request.request_id)
        self.room.set()

    def put(self, event: StreamEvent) -> None:
        """An event of a runner of this process (which then waits on `room` when it is full)."""
        self.queue.put_nowait(event)
        if self.queue.qsize() >= QUEUE_HIGH:
            self.room.clear()

    def taken(self) -> None:
        if not self.room.is_set() and self.queue.qsize() <= QUEUE_LOW:
            self.room.set()


class HttpFront:
    """The HTTP server and its `InferenceBackend` (all methods on the loop, except `recorders`)."""

    def __init__(
        self,
        port: GatewayPort,
        settings: HttpSettings,
        tenants: TenantTable,
        where: str,
        place: WorkerPlace | None = None,
    ) -> None:
        self.port = port
        self.settings = settings
        self.place = place or WorkerPlace()
        # every worker its own source: the collector adds them up
        self.http_metrics = HttpMetrics(f"{settings.bind}:{settings.port}/{self.place.worker}")
        self.inline = InlineRunners(where, self._spent)
        self._spend = SpendBatch()  # runs of this process's runners, for the gateway to send on
        self._spend_flush: asyncio.TimerHandle | None = None
        self.tenants = tenants
        self._routing = RoutingSnapshot()
        self._forwarded: frozenset[str] = frozenset()
        self._calls: dict[str, _Call] = {}
        self._silent: dict[str, InferenceRequest] = {}  # sent, and nothing heard yet
        self._server: uvicorn.Server | None = None
        self._app = make_app(self, tenants, settings, self.http_metrics, self.place)

    # ---- server lifecycle ----

    async def start(self) -> int:
        """Start listening; returns the port (useful when settings.port is 0)."""
        where = f"{self.settings.bind}:{self.settings.port}"
        try:
            sock = listening_socket(self.settings.bind, self.settings.port, reuse_port=self.place.workers > 1)
        except OSError as exc:
            raise UnavailableError(f"the HTTP front could not listen on {where}: {exc}") from None
        s = self.settings
        cap = connection_cap(s.max_connections)
        limits = ConnectionLimits(cap, s.max_header_bytes, s.max_headers, s.header_timeout_s, s.body_timeout_s)
        config = uvicorn.Config(
            self._app,
            host=self.settings.bind,
            port=self.settings.port,
            http=guarded_protocol(limits, RefusalLog(where, self.http_metrics.connection_refused)),
            timeout_keep_alive=s.keep_alive_timeout_s,  # type: ignore[arg-type]
            log_level="warning",
            access_log=False,
            lifespan="off",
            loop="none",
            proxy_headers=False,  # nothing here reads the client's address: no middleware per request
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        while not server.started:
            if task.done():
                sock.close()
                raise UnavailableError(f"the HTTP front could not listen on {where}: {task.exception()}")
            await asyncio.sleep(0.01)
        return int(sock.getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        await self.inline.close()

    def recorders(self) -> list[Recorder]:
        """The front's metrics and those of its own runners (called from the gateway's thread)."""
        return [self.http_metrics, *self.inline.recorders()]

    # ---- InferenceBackend ----

    async def stream(self, request: InferenceRequest) -> AsyncIterator[StreamEvent]:
        rid = request.request_id
        call = _Call(request, asyncio.Queue(), request.model)
        self._calls[rid] = call
        self._begin(call)
        assembler, q = call.assembler, call.queue
        deadline = request.deadline or (time.time() + 600.0)
        loop = asyncio.get_running_loop()
        # One timer per request (re-armed only when the assembler's wait changes), rather than a
        # wait_for per event: the timer puts None in the queue.
        timer: asyncio.TimerHandle | None = None
        try:
            while True:
                expiry = loop.time() + assembler.wait_time(deadline - time.time())
                if timer is None or abs(timer.when() - expiry) > 0.05:
                    if timer is not None:
                        timer.cancel()
                    timer = loop.call_at(expiry, q.put_nowait, None)
                ev = await q.get()
                call.taken()
                if call.overflowed:
                    raise OverloadedError("the caller did not read its stream: the request was cancelled")
                if ev is None:
                    timer = None
                    steps = [assembler.on_timeout()]
                else:
                    self._silent.pop(rid, None)
                    steps = assembler.on_event(ev)
                for step in steps:
                    if step.resend:
                        self.port.submit(request, resent=True)
                    elif step.error is not None:
                        raise step.error
                    elif step.event is not None:
                        yield step.event
                        if step.final:
                            return
        finally:
            if timer is not None:
                timer.cancel()
            self._end(call)

    def _begin(self, call: _Call) -> None:
        """Start `call` here, on a runner of this process, or send it through the gateway."""
        request = call.request
        slot = self.inline.take(request, self._routing)
        route = self._routing.routes.get(request.model) if slot is not None else None
        if slot is None or route is None:
            if slot is not None:
                slot.give_back()
            self.port.submit(request)
            self._silent[request.request_id] = request
            call.via_gateway = True
            return
        call.slot = slot
        if not route.limits and request.key_id is None:
            self.inline.start(slot, request, call.put, self._fallback_of(call), room=call.room.wait)
            return
        # the gateway admits it from its leases (and its key's budget) first, as on the other path
        self.port.admit(request, route, lambda debits: self._admitted(call, slot, debits))

    def _admitted(self, call: _Call, slot: Slot, debits: Debits) -> None:
        settle = self._settler(debits)
        if self._calls.get(call.request.request_id) is call:
            self.inline.start(slot, call.request, call.put, self._fallback_of(call), settle, room=call.room.wait)
            return
        slot.give_back()  # its caller left (or its deadline passed) while it waited
        if settle is not None:
            settle(None)
        if call.request.key_id is not None:  # whatever it held of its key's budget goes back
            spec = slot.served.deployment
            self._spent(spend_record(call.request, spec.name, spec.cost, None, "cancelled", 0.0, time.time()))

    def _fallback_of(self, call: _Call) -> Fallback:
        def fallback(request: InferenceRequest, fallbacks: tuple[str, ...]) -> str | None:
            onward = self.port.fallback(request, fallbacks)
            if onward is not None:
                call.model, call.via_gateway = onward, True
            return onward

        return fallback

    def _end(self, call: _Call) -> None:
        """The caller is done with `call`: forget it, and cancel it if it has not finished."""
        rid = call.request.request_id
        self._calls.pop(rid, None)
        self._silent.pop(rid, None)
        slot = call.slot
        if slot is not None:
            slot.give_back()  # refused by the rate limit, or ended before it started
        if not call.assembler.finished:
            here = slot.task if slot is not None else None
            if here is not None and not here.done():
                here.cancel()
            elif call.via_gateway:  # (one still waiting for admission learns it left when admitted)
                self.port.cancel([rid], call.model)

    def _settler(self, debits: Debits) -> Callable[[Usage | None], None] | None:
        """What settles a request's token debits with the rate limiter, through the gateway."""
        if not any(tokens for _, tokens in debits):
            return None
        return lambda usage: self.port.settle(debits, usage)

    def model_names(self) -> list[str]:
        return self._routing.model_names()

    def forwarded_headers(self) -> frozenset[str]:
        return self._forwarded

    async def readiness(self) -> tuple[bool, dict[str, str]]:
        return await self.port.readiness()

    async def metrics(self) -> bytes:
        return await self.port.metrics()

    # ---- FrontSink ----

    def deliver(self, events: list[StreamEvent]) -> None:
        for ev in events:
            call = self._calls.get(ev.request_id)
            if call is None or call.overflowed:
                continue
            call.queue.put_nowait(ev)
            if call.queue.qsize() > QUEUE_MAX:  # from another process: it cannot wait
                self._overflow(call)

    def routing_changed(self, snapshot: RoutingSnapshot) -> None:
        routes_before = self._routing.routes
        self._routing = snapshot
        self._forwarded = snapshot.forwarded_headers()
        if snapshot.routes is not routes_before:
            self.inline.refresh(snapshot.routes)

    def _spent(self, record: SpendRecord) -> None:
        """A run here ended: its record goes to the gateway with others (see `SpendBatch`)."""
        self._spend.add(record)
        if self._spend.urgent:
            self._flush_spend()
        elif self._spend_flush is None:
            self._spend_flush = asyncio.get_running_loop().call_later(SPEND_FLUSH_S, self._flush_spend, True)

    def _flush_spend(self, due: bool = False) -> None:
        if due:
            self._spend_flush = None
        records = self._spend.take(due)
        if records:
            self.port.spent(records)

    def _overflow(self, call: _Call) -> None:
        """The caller stopped reading a stream that other processes fill: drop what is queued,
        cancel the request; the caller gets an error if it ever reads again."""
        call.overflowed = True
        while not call.queue.empty():
            call.queue.get_nowait()
        call.queue.put_nowait(None)
        self.port.cancel([call.request.request_id], call.model)

    def keys_changed(self, keys: tuple[ApiKey, ...]) -> None:
        self.tenants.set_runtime_keys(keys)

    async def keys_admin(self, op: str, args: dict[str, Any], admin_key: str | None) -> Any:
        return await self.port.keys_admin(op, args, admin_key)

    def coordinators_replaced(self, names: frozenset[str]) -> None:
        for request in list(self._silent.values()):
            if request.model in names:
                self.port.submit(request, resent=True)
