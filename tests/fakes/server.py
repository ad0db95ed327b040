"""A small HTTP server on 127.0.0.1 for provider fakes: routes, SSE, call counters, fault knobs.

Each provider fake (OpenAI, Anthropic, Gemini) subclasses `FakeProvider` and implements its wire
format in `handle`. The knobs script failures for the next calls: `fail_next(status, body,
headers)`, `stall_next(seconds)`, `cut_next_after(n_chunks)`, `malformed_next()`,
`drip_next(seconds)` (a stream sends its events that far apart). Calls are
counted per path so tests assert on what reached the "provider". Every stream's end is recorded
(`stream_ends`: events written, events it had, whether the client left first), and
`wait_stream_end()` waits for the next one: a test can see that a caller who closed its stream
closed the connection, so the provider stopped sending.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self


@dataclass
class Fault:
    status: int = 0  # 0: no HTTP error
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    stall_s: float = 0.0
    cut_after: int | None = None  # streams: drop the connection after this many events
    malformed: bool = False
    event_delay_s: float = 0.0  # streams: wait this long before each event after the first


@dataclass(frozen=True)
class StreamEnd:
    sent: int  # events written before the stream ended
    total: int  # events the stream had to send
    client_left: bool  # the client closed the connection before the last event


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: Any
    at: float


class Reply:
    """What a handler returns: a JSON body, or a list of SSE events (each a str payload)."""

    def __init__(self, status: int = 200, json_body: Any = None, events: list[str] | None = None) -> None:
        self.status, self.json_body, self.events = status, json_body, events


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # bursts of concurrent clients must not be refused
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # a client gave up on a stalled or cut call: expected in these tests
        super().handle_error(request, client_address)


class FakeProvider:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.faults: collections.deque[Fault] = collections.deque()
        self.lock = threading.Lock()
        self.stream_ends: list[StreamEnd] = []
        self._ended = threading.Condition(self.lock)
        self.reply_text = "Hello from the fake provider."
        self._open = threading.Event()  # cleared by `hold`: calls wait for `release`
        self._open.set()
        self._holding = 0
        self._held = threading.Condition(self.lock)
        self.server = _Server(("127.0.0.1", 0), self._handler_class())
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def forget_calls(self) -> None:
        """Drop recorded calls and pending faults (subclasses' `reset` calls this)."""
        self._open.set()
        with self.lock:
            self.calls.clear()
            self.faults.clear()
            self.stream_ends.clear()

    # knobs
    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None, times: int = 1) -> None:
        for _ in range(times):
            self.faults.append(Fault(status=status, body=body, headers=dict(headers or {})))

    def stall_next(self, seconds: float, times: int = 1) -> None:
        for _ in range(times):
            self.faults.append(Fault(stall_s=seconds))

    def cut_next_after(self, n_events: int) -> None:
        self.faults.append(Fault(cut_after=n_events))

    def malformed_next(self) -> None:
        self.faults.append(Fault(malformed=True))

    def drip_next(self, seconds_per_event: float, times: int = 1) -> None:
        for _ in range(times):
            self.faults.append(Fault(event_delay_s=seconds_per_event))

    def hold(self) -> None:
        """Calls from now on wait (answered by nothing) until `release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def wait_held(self, n: int, timeout: float = 30.0) -> bool:
        """Whether `n` calls are waiting at the hold (False after `timeout`, a safety limit)."""
        with self._held:
            return self._held.wait_for(lambda: self._holding >= n, timeout)

    def wait_stream_end(self, seen: int = 0, timeout: float = 30.0) -> StreamEnd | None:
        """The first stream end after the `seen` already recorded, once there is one (None after
        `timeout` seconds, a safety limit)."""
        with self._ended:
            self._ended.wait_for(lambda: len(self.stream_ends) > seen, timeout)
            return self.stream_ends[seen] if len(self.stream_ends) > seen else None

    def _stream_ended(self, sent: int, total: int, client_left: bool) -> None:
        with self._ended:
            self.stream_ends.append(StreamEnd(sent, total, client_left))
            self._ended.notify_all()

    def count(self, path_part: str = "") -> int:
        with self.lock:
            return sum(1 for c in self.calls if path_part in c.path)

    # to implement
    def handle(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        raise NotImplementedError

    def error_body(self, status: int) -> Any:
        return {"error": {"message": f"fake error {status}", "type": "fake", "code": status}}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve(None)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                self._serve(body)

            def _serve(self, body: Any) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake.lock:
                    fake.calls.append(Call(self.path, headers, body, time.time()))
                    fault = fake.faults.popleft() if fake.faults else Fault()
                if not fake._open.is_set():
                    with fake._held:
                        fake._holding += 1
                        fake._held.notify_all()
                    fake._open.wait(120)
                    with fake._held:
                        fake._holding -= 1
                if fault.stall_s:
                    time.sleep(fault.stall_s)
                if fault.status:
                    payload = fault.body if fault.body is not None else fake.error_body(fault.status)
                    self._send_json(fault.status, payload, fault.headers)
                    return
                reply = fake.handle(self.path, headers, body)
                if fault.malformed:
                    self._send_raw(200, b'{"this is": not json', "application/json")
                elif reply.events is None:
                    self._send_json(reply.status, reply.json_body)
                else:
                    self._send_events(reply.events, fault.cut_after, fault.event_delay_s)

            def _send_json(self, status: int, payload: Any, extra: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self._send_raw(status, data, "application/json", extra)

            def _send_raw(self, status: int, data: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _send_events(self, events: list[str], cut_after: int | None, delay_s: float) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("cache-control", "no-cache")
                self.send_header("connection", "close")
                self.end_headers()
                self.close_connection = True
                sent = 0
                try:
                    for ev in events:
                        if cut_after is not None and sent >= cut_after:
                            self.wfile.flush()
                            self.connection.shutdown(2)  # the provider drops the stream mid-way
                            break
                        if delay_s and sent:
                            time.sleep(delay_s)
                        self.wfile.write(ev.encode())
                        self.wfile.flush()
                        sent += 1
                except ConnectionError:  # the client closed the connection: stop sending
                    fake._stream_ended(sent, len(events), client_left=True)
                    return
                fake._stream_ended(sent, len(events), client_left=False)

        return Handler
