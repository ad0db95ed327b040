"""The actor-with-asyncio-sidecar pattern, written once.

A Thespian actor handles one message at a time. Actors that do I/O or run engines keep an asyncio
loop in a sidecar thread; results come back to the actor thread as callables on a queue plus one
byte on a socketpair, which Thespian watches (`ThespianWatch`). Every `receiveMessage` returns the
watch (in a `finally`, or replies stall until the next message) and catches every exception, so a
handler is never retried by Thespian and a generation never runs twice.

The loop is uvloop's when it is installed (a dependency on Linux; `ATOMR_UVLOOP=0` turns it off):
its timers, tasks and socket transports cost a fraction of the standard loop's per request.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import socket
import threading
import traceback
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ActorTypeDispatcher, ThespianWatch, WatchMessage

from atomr.actors.messages import Address, Events, Identify, Identity
from atomr.core.types import StreamEvent
from atomr.observability import tracing

log = structlog.get_logger("atomr.actor")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when available (and not turned off), else asyncio's."""
    if os.environ.get("ATOMR_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class Sidecar:
    """An asyncio loop on a daemon thread, and a wake-up channel back to the actor thread."""

    def __init__(self, name: str = "atomr-sidecar") -> None:
        self.loop = new_event_loop()
        self._rsock, self._wsock = socket.socketpair()
        self._rsock.setblocking(False)
        self._wsock.setblocking(False)
        self._posted: collections.deque[Callable[[], None]] = collections.deque()
        self._signalled = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def fileno(self) -> int:
        return self._rsock.fileno()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run `coro` on the loop (from the actor thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def post(self, fn: Callable[[], None]) -> None:
        """Have `fn` run on the actor thread (from the loop thread). One byte per wake-up."""
        self._posted.append(fn)
        if not self._signalled.is_set():
            self._signalled.set()
            try:
                self._wsock.send(b"\0")
            except BlockingIOError:
                pass  # a wake-up byte is already pending

    def drain(self) -> int:
        """Run everything posted so far (on the actor thread); returns how many ran."""
        try:
            while self._rsock.recv(4096):
                pass
        except BlockingIOError:
            pass
        self._signalled.clear()
        ran = 0
        while self._posted:
            fn = self._posted.popleft()
            ran += 1
            try:
                fn()
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                log.error("posted callback failed", error=traceback.format_exc())
        return ran

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        # The socketpair stays open: Thespian may still watch its fd while the actor exits.


class PlacedActor:
    """Mixin for actors created on another node's actor system by requirements (its node id):
    Thespian places them where every required capability has the required value."""

    @staticmethod
    def actorSystemCapabilityCheck(capabilities: dict[str, Any], requirements: dict[str, Any] | None) -> bool:
        return all(capabilities.get(k) == v for k, v in (requirements or {}).items())


class SidecarActor(ActorTypeDispatcher):
    """Base for actors that own a sidecar loop. Subclasses define `receiveMsg_<Type>` handlers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sidecar: Sidecar | None = None
        self._outbox: dict[str, tuple[Address, list[StreamEvent]]] = {}  # keyed by str(address)
        self._flush_scheduled = False

    def receiveMsg_Identify(self, msg: Identify, sender: Address) -> None:
        """Answer this actor's own address (what a portal passes to another host)."""
        self.send(sender, Identity(msg.name, self.myAddress))

    @property
    def sidecar(self) -> Sidecar:
        if self._sidecar is None:
            self._sidecar = Sidecar(f"{type(self).__name__}-sidecar")
        return self._sidecar

    def receiveMessage(self, msg: Any, sender: Any) -> Any:
        try:
            if isinstance(msg, WatchMessage):
                if self._sidecar is not None:
                    self._sidecar.drain()
                    self.after_drain()
            else:
                if isinstance(msg, ActorExitRequest):
                    self.on_exit()
                super().receiveMessage(msg, sender)
                if self.defer_flush and not isinstance(msg, ActorExitRequest):
                    self._flush_soon()
                else:
                    self.after_drain()
        except Exception:  # noqa: BLE001 - never let Thespian retry a handler
            log.error(
                "handler failed",
                actor=type(self).__name__,
                message=type(msg).__name__,
                error=traceback.format_exc(),
            )
        finally:
            if self._sidecar is not None and not isinstance(msg, ActorExitRequest):
                return ThespianWatch([self._sidecar.fileno()])  # noqa: B012
        return None

    # Busy actors set this: outgoing messages then leave once the messages already waiting have
    # been handled (one wake-up through the sidecar), so several requests share each message.
    defer_flush = False

    def _flush_soon(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.sidecar.post(self._flushed)

    def _flushed(self) -> None:
        self._flush_scheduled = False

    def emit(self, address: Address, event: StreamEvent) -> None:
        """Queue a stream event; all events for one requester leave as one message."""
        key = str(address)  # Thespian addresses are not hashable
        box = self._outbox.get(key)
        if box is None:
            self._outbox[key] = (address, [event])
        else:
            box[1].append(event)

    def after_drain(self) -> None:
        """Flush what was batched while handling a message or a drain. Subclasses extend it."""
        if self._outbox:
            outbox, self._outbox = self._outbox, {}
            for address, events in outbox.values():
                self.send(address, Events(events))

    def on_exit(self) -> None:
        """Hook: the actor is exiting; subclasses release resources then call super()."""
        if self._sidecar is not None:
            self._sidecar.stop()
            self._sidecar = None
        tracing.flush()  # Thespian ends the process without atexit: the last spans leave now
