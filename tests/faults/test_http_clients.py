"""Fault 8: HTTP callers that leave mid-stream, and callers that read their stream very slowly,
while other callers (Client and HTTP) keep the node busy.

* A caller that drops its connection after the first chunk (the provider is still sending) has its
  request cancelled down to the runner: the coordinator writes exactly one line for it, with
  outcome `cancelled`, long before the provider would have finished, and nothing stays in flight.
* Slow readers (a small receive buffer, a pause between reads) get their whole stream, exactly
  once, and do not hold up anyone else.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI, tokenize
from tests.faults.harness import (
    KINDS,
    MODEL,
    PROMPT,
    Load,
    deployment,
    http_url,
    sse_events,
    tiny,
    wait_until,
    write_config,
)

KEY = "sk-http-faults-" + "h" * 24
MAX_TOKENS = 160
LONG_REPLY = " ".join(f"w{i}" for i in range(240))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as f:
        f.reply_text = LONG_REPLY
        yield f


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("http-clients")
    (folder / "key").write_text(KEY)
    engine = {"api_base": fake.url + "/v1", "api_key_file": str(folder / "key"), "retry": {"max_attempts": 1}}
    cfg = write_config(
        folder / "http.yaml",
        # one event per token, so that a stream is many small SSE events
        {"name": "remote", "model": "openai/gpt-fake", "engine": engine, "limits": {"chunk_max_tokens": 1}},
        tiny("tiny", limits={"max_inflight_per_replica": 16}),
        http={"port": 0, "request_timeout_s": 20},
    )
    n = Node(config=cfg)
    try:
        yield n
    finally:
        assert n.stop() == []


class SmallBufferConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket has a small receive buffer (set before connecting)."""

    def __init__(self, host: str, port: int, rcvbuf: int) -> None:
        super().__init__(host, port, timeout=30)
        self.rcvbuf = rcvbuf

    def connect(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        s.settimeout(self.timeout)
        s.connect((self.host, self.port))
        self.sock = s


def open_stream(base: str, model: str, max_tokens: int, rcvbuf: int = 1 << 16) -> tuple[Any, Any]:
    host, _, port = base.removeprefix("http://").partition(":")
    conn = SmallBufferConnection(host, int(port), rcvbuf)
    body = json.dumps({"model": model, "prompt": PROMPT, "max_tokens": max_tokens, "stream": True})
    conn.request("POST", "/v1/completions", body=body, headers={"content-type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return conn, resp


def read_events(resp: Any, pause_s: float = 0.0, size: int = 512) -> Iterator[str]:
    """SSE data lines of a response, reading `size` bytes at a time with a pause between reads."""
    buffer = b""
    while True:
        piece = resp.read1(size) if not pause_s else resp.read(size)
        if not piece:
            break
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        yield from sse_events(line.decode() for line in lines)
        if pause_s:
            time.sleep(pause_s)


def request_lines(node: Node, rid: str) -> list[dict[str, Any]]:
    """The coordinator's log lines (one per request end) for request `rid`."""
    out = []
    for line in node.output().splitlines():
        if rid in line and line.startswith("{") and '"event": "request"' in line:
            out.append(json.loads(line))
    return out


def test_callers_leaving_mid_stream_are_cancelled_once(node: Node, fake: FakeOpenAI) -> None:
    fake.forget_calls()
    base = http_url(node)
    want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
    n_leavers = 8
    fake.drip_next(0.05, times=n_leavers)  # each leaver's stream would take 12 s
    with Client(node.address) as client:
        load = Load(client, "tiny", PROMPT, want, MAX_TOKENS, kinds=KINDS, workers=4, http=base)
        try:

            def leave_after_first_chunk(_: int) -> tuple[str, float]:
                conn, resp = open_stream(base, "remote", 240)
                rid = resp.getheader("x-request-id")
                for event in read_events(resp):
                    if event != "[DONE]" and json.loads(event)["choices"][0]["text"]:
                        break
                # leave abruptly (RST), as a killed browser tab would
                conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.sock.close()
                conn.close()
                return rid, time.time()

            with ThreadPoolExecutor(n_leavers) as pool:
                left = list(pool.map(leave_after_first_chunk, range(n_leavers)))
            for rid, _ in left:
                wait_until(lambda rid=rid: request_lines(node, rid), 10, f"a final for {rid}")
                (line,) = request_lines(node, rid)  # exactly one end, at the coordinator
                assert line["outcome"] == "cancelled", line
            # and nothing stays in flight (status shows the coordinator's counts within a second)
            wait_until(lambda: deployment(client, "remote").replicas[0].inflight == 0, 5, "nothing left in flight")
            # the provider is healthy again: a full stream through the front, then the load goes on
            conn, resp = open_stream(base, "remote", 8)
            events = list(read_events(resp))
            conn.close()
            assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
            text = "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1] if json.loads(e)["choices"])
            assert text == "".join(tokenize(LONG_REPLY)[:8])
            load.wait_for(8, started_after=time.time())
        finally:
            load.stop()
    load.check(set())


def test_slow_readers_get_everything_and_hold_no_one_up(node: Node, fake: FakeOpenAI) -> None:
    fake.forget_calls()
    base = http_url(node)
    want_tiny = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
    want_remote = "".join(tokenize(LONG_REPLY)[:240])
    results: list[tuple[str, int]] = []
    lock = threading.Lock()

    def slow_reader(_: int) -> None:
        conn, resp = open_stream(base, "remote", 240, rcvbuf=2048)
        text, dones = "", 0
        for event in read_events(resp, pause_s=0.02, size=512):
            if event == "[DONE]":
                dones += 1
                continue
            data = json.loads(event)
            assert "error" not in data, data
            text += "".join(c["text"] for c in data["choices"])
        conn.close()
        with lock:
            results.append((text, dones))

    with Client(node.address) as client:
        load = Load(client, "tiny", PROMPT, want_tiny, MAX_TOKENS, kinds=KINDS, workers=4, http=base)
        try:
            load.wait_for(8)
            started = time.time()
            readers = [threading.Thread(target=slow_reader, args=(i,)) for i in range(4)]
            for t in readers:
                t.start()
            time.sleep(1.0)
            during = [o for o in load.outcomes if o.started >= started and o.ended]
            for t in readers:
                t.join(60)
            took = time.time() - started
        finally:
            load.stop()
    assert len(results) == 4 and all(r == (want_remote, 1) for r in results), results
    assert took > 1.0  # they really were slow
    # others were served meanwhile, and quickly
    assert len(during) >= 8, len(during)
    assert sorted(o.ended - o.started for o in during)[len(during) // 2] < 1.0
    load.check(set())
