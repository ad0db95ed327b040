"""Limits on the HTTP front's connections, enforced before any request reaches the app.

uvicorn's httptools protocol (kept: it is the fastest parser uvicorn has) bounds nothing a
client sends before its request is complete: header bytes and count, how long the headers or the
body take to arrive, how many connections are open. A subclass of it (`guarded_protocol`) adds
those limits where the bytes arrive, so a flood of headers costs at most `max_header_bytes` per
connection, a slow sender is closed after its timeout, and past `max_connections` the connection
that has waited longest without a request in service (idle between requests, or still sending its
headers) is closed to make room; only when every connection is serving a request is a new one
answered ``503`` and closed at once. uvicorn's own keep-alive timeout closes idle connections
between requests.

What each refusal is: headers past their limit ``431 Request Header Fields Too Large``; headers or
body not complete in time ``408 Request Timeout``; one connection too many ``503``; an idle one
closed for a new one (counted, like the others, in ``atomr_http_connections_refused_total`` by
reason, and logged at most once a second). All close the connection.
"""

from __future__ import annotations

import asyncio
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger("atomr.http")

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large", 503: b"Service Unavailable"}


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int
    max_header_bytes: int  # the request line and every header, as sent
    max_headers: int
    header_timeout_s: float  # from the connection (or the request's first byte) to its last header
    body_timeout_s: float  # from the last header to the body's last byte


SWEEP_S = 0.25  # how often a front looks for connections past their header or body deadline
FD_RESERVE = 128  # open files a front's process needs besides its HTTP connections


def connection_cap(wanted: int) -> int:
    """`wanted`, or less when this process may not open that many files (each connection is one):
    a front that runs out of descriptors stops accepting anyone, so it caps itself below that."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft - FD_RESERVE >= wanted:
        return wanted
    cap = max(16, soft - FD_RESERVE)
    log.warning("HTTP connection cap lowered to the open-files limit", wanted=wanted, cap=cap, limit=soft)
    return cap


class _Refused(Exception):
    """Stops the parser after the connection was answered and closed."""


def closing_response(status: int, message: str) -> bytes:
    body = message.encode()
    head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
    head += b"content-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
    return head + b"content-length: %d\r\n\r\n" % len(body) + body


def guarded_protocol(limits: ConnectionLimits, refused: Callable[[str], None]) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with `limits`; `refused(reason)` is called for each connection
    refused or closed by them ("connections", "idle_closed", "header_bytes", "headers",
    "header_timeout", "body_timeout")."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._answered = False  # refused and closed: nothing more is read or sent
            self._deadline = 0.0  # loop time by which the headers (or the body) must be in; 0: none
            self._phase = ""
            self._header_bytes = 0  # of the request whose headers are arriving
            self._header_count = 0
            self._in_headers = True  # what arrives now is a request line or headers
            self._since = 0.0

        # ---- the connection ----

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= limits.max_connections:
                idle = self._idlest()
                if idle is None:
                    self.transport = transport
                    self._refuse(503, "too many open connections: try again later", "connections")
                    return
                idle._close_idle()
            self._since = time.monotonic()
            super().connection_made(transport)
            self._arm(limits.header_timeout_s, "header_timeout")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self.flow is None:  # refused before uvicorn set it up
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._answered:
                return
            if self._in_headers:
                # Counted here, before the parser: httptools keeps a header's value until its end
                # arrives, so a value that never ends would grow without a callback.
                end = data.find(b"\r\n\r\n")
                self._header_bytes += len(data) if end < 0 else end
                if self._header_bytes > limits.max_header_bytes:
                    self._refuse(
                        431, f"the request's headers are larger than {limits.max_header_bytes} bytes", "header_bytes"
                    )
                    return
            super().data_received(data)

        def send_400_response(self, msg: str) -> None:
            if not self._answered:  # (a parse error after a refusal is that refusal's)
                super().send_400_response(msg)

        # ---- a request's headers and body ----

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._since = time.monotonic()
            self._header_count = 0
            if not self._deadline:  # the keep-alive wait ended: the headers' own clock starts
                self._arm(limits.header_timeout_s, "header_timeout")

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > limits.max_headers:
                self._refuse(431, f"the request has more than {limits.max_headers} headers", "headers")
                raise _Refused
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._in_headers = False
            self._header_bytes = 0
            self._arm(limits.body_timeout_s, "body_timeout")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self._disarm()
            self._in_headers = True  # the next request's, if any
            super().on_message_complete()

        # ---- limits ----

        def _serving(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _idlest(self) -> GuardedHttpToolsProtocol | None:
            """The open connection that has waited longest with no request in service."""
            best: GuardedHttpToolsProtocol | None = None
            for p in self.connections:
                if (
                    isinstance(p, GuardedHttpToolsProtocol)
                    and not p._answered
                    and not p._serving()
                    and (best is None or p._since < best._since)
                ):
                    best = p
            return best

        def _close_idle(self) -> None:
            self._answered = True
            self._disarm()
            self.connections.discard(self)  # (its connection_lost comes later)
            if not self.transport.is_closing():
                self.transport.close()
            refused("idle_closed")

        # Timeouts are a deadline per connection and one sweep of the server's connections every
        # `SWEEP_S` (a timer armed and cancelled per request cost more than all the rest here).

        def _arm(self, delay: float, reason: str) -> None:
            loop = asyncio.get_running_loop()
            self._deadline, self._phase = loop.time() + delay, reason
            if not sweeping:
                sweeping.append(loop.call_later(SWEEP_S, _sweep, self.connections, loop))

        def _disarm(self) -> None:
            self._deadline = 0.0

        def _expired(self, reason: str) -> None:
            self._deadline = 0.0
            if self.transport is None or self.transport.is_closing():
                return
            if reason == "body_timeout" and (self.cycle is None or self.cycle.response_started):
                self.transport.close()  # the app answers already: the connection just ends
                refused(reason)
                return
            what = "headers" if reason == "header_timeout" else "body"
            self._refuse(408, f"the request's {what} did not arrive in time", reason)

        def _refuse(self, status: int, message: str, reason: str) -> None:
            self._answered = True
            self._disarm()
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # the app, if it runs, sees its caller gone
                self.cycle.message_event.set()
            if not self.transport.is_closing():
                self.transport.write(closing_response(status, message))
                self.transport.close()
            refused(reason)

    sweeping: list[asyncio.TimerHandle] = []  # the sweep scheduled, if any

    def _sweep(connections: set[Any], loop: asyncio.AbstractEventLoop) -> None:
        sweeping.clear()
        now = loop.time()
        for p in list(connections):
            if isinstance(p, GuardedHttpToolsProtocol) and p._deadline and now >= p._deadline:
                p._expired(p._phase)
        if connections:
            sweeping.append(loop.call_later(SWEEP_S, _sweep, connections, loop))

    return GuardedHttpToolsProtocol


class RefusalLog:
    """Counts refusals and logs them at most once a second (a flood must not flood the log)."""

    def __init__(self, where: str, count: Callable[[str], None]) -> None:
        self._where = where
        self._count = count
        self._pending: dict[str, int] = {}
        self._logged_at = 0.0

    def __call__(self, reason: str) -> None:
        self._count(reason)
        self._pending[reason] = self._pending.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged_at >= 1.0:
            self._logged_at = now
            pending, self._pending = self._pending, {}
            log.warning("http connections refused", front=self._where, **pending)
