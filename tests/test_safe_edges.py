"""The HTTP front against hostile and careless clients: does it keep serving the others?

Each attack runs against a head on the embedded model while a thread keeps sending normal
requests; every normal request must succeed, and the RSS of every atomr process is compared
before and after:
- header floods (a 1 MB header, 100k headers, 100 MB of headers on one connection): 431 or
  closed at once, after at most `max_header_bytes` read;
- 1,000 slowloris connections (headers, and bodies after complete headers): closed within the
  header and body timeouts;
- under ``ulimit -n 1024``, 2,000 idle connections: past the cap the idlest are closed (or new ones
  refused 503) and normal requests keep succeeding;
- ``http.bind: 0.0.0.0`` with no keys is refused naming the option, unless
  ``allow_unauthenticated`` says so (then it warns).
"""

from __future__ import annotations

import json
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from atomr.cluster.system import system_processes
from tests.conftest import REPO, Node, node_env
from tests.fakes.misbehaving_openai import FAST_TOKENS, MisbehavingOpenAI
from tests.faults.harness import http_url, wait_until

MiB = 1 << 20
HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 2.0


def config(folder: Path, **http: object) -> Path:
    cfg = folder / "edges.yaml"
    settings = {"port": 0, "header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S, **http}
    tiny = {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}}
    cfg.write_text(yaml.safe_dump({"http": settings, "deployments": [tiny]}))
    return cfg


@pytest.fixture(scope="module", autouse=True)
def enough_files() -> Iterator[None]:
    """This process opens up to 2,000 connections at once: its open-files limit raised to allow it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the open-files hard limit ({hard}) is below the {wanted} these tests open")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, str]]:
    node = Node(config=config(tmp_path_factory.mktemp("edges")))
    try:
        yield node, http_url(node)
    finally:
        assert node.stop() == []


def rss(node: Node) -> dict[int, int]:
    out = {}
    for p in system_processes(node.port):
        try:
            out[p.pid] = p.memory_info().rss
        except psutil.Error:
            continue
    return out


def grew(before: dict[int, int], after: dict[int, int]) -> int:
    """The largest growth of one process's RSS (processes of both samples)."""
    return max((after[pid] - before[pid] for pid in before.keys() & after.keys()), default=0)


class Others:
    """Normal requests sent one after another while an attack runs: each must succeed."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.statuses: list[int] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = client.post(
                        self.url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}
                    )
                    self.statuses.append(r.status_code)
                except httpx.HTTPError as exc:
                    self.statuses.append(-1)
                    print("normal request failed:", exc)
                self.latencies.append(time.monotonic() - t0)

    def __enter__(self) -> Others:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        deadline = time.monotonic() + 60
        while len(self.statuses) < 3 and time.monotonic() < deadline:  # some ran while it was on
            time.sleep(0.05)
        self._stop.set()
        self._thread.join(60)

    def check(self) -> None:
        assert self.statuses and all(s == 200 for s in self.statuses), self.statuses


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def send_until_refused(url: str, head: bytes, chunk: bytes, total: int) -> tuple[bytes, int]:
    """Send `head`, then `chunk` until `total` bytes or the server stops reading; returns what it
    answered and how many bytes were sent."""
    sock = socket.create_connection(host_port(url), timeout=10)
    sent = 0
    try:
        sock.sendall(head)
        while sent < total:
            try:
                sock.sendall(chunk)
            except OSError:  # closed by the server (reset or broken pipe)
                break
            sent += len(chunk)
        answer = b""
        try:
            while len(answer) < 4096:
                part = sock.recv(4096)
                if not part:
                    break
                answer += part
        except OSError:
            pass
        return answer, sent
    finally:
        sock.close()


REQUEST = b"POST /v1/completions HTTP/1.1\r\nHost: atomr\r\nContent-Type: application/json\r\n"


def test_header_floods_are_refused_at_once_and_cost_no_memory(front: tuple[Node, str]) -> None:
    node, url = front
    before = rss(node)
    with Others(url) as others:
        t0 = time.monotonic()
        answer, _ = send_until_refused(url, REQUEST + b"X-Big: ", b"a" * 65536, 1 * MiB)
        assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer[:100]
        answer, _ = send_until_refused(
            url, REQUEST, b"".join(b"X-H%d: v\r\n" % i for i in range(1000)), 100 * 1000 * 10
        )
        assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer[:100]
        answer, sent = send_until_refused(url, REQUEST, b"X-Filler: " + b"b" * 1000 + b"\r\n", 100 * MiB)
        assert answer.startswith(b"HTTP/1.1 431") or answer == b"", answer[:100]
        assert sent < 4 * MiB, f"the server read {sent} bytes of headers before refusing"
        assert time.monotonic() - t0 < 20
    others.check()
    assert grew(before, rss(node)) < 50 * MiB
    # a request with headers within the limits is served as usual
    ok = httpx.post(
        url + "/v1/completions", json={"model": "tiny", "prompt": "Hi", "max_tokens": 2}, headers={"x-pad": "p" * 4000}
    )
    assert ok.status_code == 200


@contextmanager
def open_sockets(url: str, n: int, first: bytes) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(host_port(url), timeout=10)
            if first:
                s.sendall(first)
            socks.append(s)
        yield socks
    finally:
        for s in socks:
            s.close()


def wait_closed(socks: list[socket.socket], within_s: float, trickle: bytes = b"") -> list[float]:
    """Seconds until the server closed each socket (sending `trickle` on each every 0.5 s)."""
    sel = selectors.DefaultSelector()
    start = time.monotonic()
    closed: dict[int, float] = {}
    for i, s in enumerate(socks):
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, i)
    next_trickle = start + 0.5
    while len(closed) < len(socks) and time.monotonic() - start < within_s:
        for key, _ in sel.select(timeout=0.1):
            try:
                data = key.fileobj.recv(4096)  # type: ignore[union-attr]
            except OSError:
                data = b""
            if not data or b"408" in data:
                closed[key.data] = time.monotonic() - start
                sel.unregister(key.fileobj)
        if trickle and time.monotonic() >= next_trickle:
            next_trickle += 0.5
            for i, s in enumerate(socks):
                if i not in closed:
                    try:
                        s.send(trickle)
                    except OSError:
                        closed[i] = time.monotonic() - start
                        sel.unregister(s)
    sel.close()
    return list(closed.values())


def test_slowloris_connections_are_closed_within_their_timeouts(front: tuple[Node, str]) -> None:
    node, url = front
    before = rss(node)
    with Others(url) as others:
        with (
            open_sockets(url, 500, REQUEST) as slow_headers,
            open_sockets(url, 500, REQUEST + b"Content-Length: 100000\r\n\r\n{") as slow_bodies,
        ):
            closed = wait_closed(slow_headers + slow_bodies, HEADER_TIMEOUT_S + BODY_TIMEOUT_S + 30, trickle=b"x")
            assert len(closed) == 1000, f"{1000 - len(closed)} slow connections still open"
            assert max(closed) < max(HEADER_TIMEOUT_S, BODY_TIMEOUT_S) + 15, max(closed)
    others.check()
    assert grew(before, rss(node)) < 50 * MiB


def test_idle_connections_past_the_cap_do_not_take_the_front_down(tmp_path: Path) -> None:
    if shutil.which("prlimit") is None:
        pytest.skip("prlimit (util-linux) is not installed: the node cannot be started under ulimit -n 1024")
    node = Node(config=config(tmp_path), prefix=("prlimit", "--nofile=1024:1024", "--"))
    try:
        url = http_url(node)
        assert "open-files limit 1024 is below" in node.output()
        with Others(url) as others, open_sockets(url, 2000, b"") as idle:
            closed = wait_closed(idle, HEADER_TIMEOUT_S + 30)
            assert len(closed) == 2000, "idle connections kept open past the header timeout"
        others.check()
        refused = httpx.get(url + "/metrics", timeout=30).text
        assert 'atomr_http_connections_refused_total{reason="idle_closed"}' in refused
    finally:
        assert node.stop() == []


def run_node(cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atomr.node", "--config", str(cfg)],
        cwd=REPO,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_open_front_beyond_loopback_is_refused_unless_allowed(tmp_path: Path) -> None:
    refused = run_node(config(tmp_path, bind="0.0.0.0"))
    assert refused.returncode == 2 and "http.bind" in refused.stderr and "allow_unauthenticated" in refused.stderr
    node = Node(config=config(tmp_path, bind="0.0.0.0", allow_unauthenticated=True))
    try:
        assert "asks no API key (http.allow_unauthenticated)" in node.output()
    finally:
        assert node.stop() == []


def by_title(node: Node, title: str) -> psutil.Process:
    (found,) = [p for p in system_processes(node.port) if p.cmdline()[0].startswith(title + " ")]
    return found


def refused_by_runners(url: str) -> float:
    """Requests the deployments refused for their context length, as /metrics counts them."""
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("atomr_requests_total{") and 'outcome="context_length"' in line
    )


def test_context_overflows_are_refused_without_keeping_memory(front: tuple[Node, str]) -> None:
    node, url = front
    host, gateway = by_title(node, "RunnerHost"), by_title(node, "Gateway")
    words = " ".join(f"w{i}" for i in range(120_000))  # ~0.9 MB: no tokenizer is needed to refuse it
    with httpx.Client(timeout=60) as client:
        client.post(url + "/v1/completions", json={"model": "tiny", "prompt": "warm up", "max_tokens": 2})
        before = {p.pid: p.memory_info().rss for p in (host, gateway)}
        for _ in range(400):
            r = client.post(url + "/v1/completions", json={"model": "tiny", "prompt": words, "max_tokens": 2})
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]
        # prompts within the tokenizer-free bound (256 tokens x 13 characters) that do not fit:
        # the runner refuses them, and keeps nothing of them
        medium = " ".join(f"w{i}" for i in range(600))
        for _ in range(100):
            r = client.post(url + "/v1/completions", json={"model": "tiny", "prompt": medium, "max_tokens": 2})
            assert r.status_code == 400 and "context length" in r.json()["error"]["message"], r.text[:300]
    # the deployment counted those 100 and none of the 400 (refused by the gateway)
    wait_until(lambda: refused_by_runners(url) >= 100, 30, "the runner's refusals in /metrics")
    assert refused_by_runners(url) == 100
    after = {p.pid: p.memory_info().rss for p in (host, gateway)}
    assert after[host.pid] - before[host.pid] < 20 * MiB, (before, after)
    assert after[gateway.pid] - before[gateway.pid] < 50 * MiB, (before, after)


def test_a_runner_host_keeps_only_what_answering_a_refused_request_takes() -> None:
    from atomr.actors.messages import WorkItem
    from atomr.actors.runner_host import answer_only
    from atomr.core.types import InferenceRequest

    item = WorkItem(InferenceRequest(model="tiny", prompt="x" * 1_000_000, tenant="t", key_id="key_1"), "caller", 1)
    kept = answer_only(item)
    assert (kept.request.request_id, kept.request.model, kept.request.tenant, kept.request.key_id) == (
        item.request.request_id,
        "tiny",
        "t",
        "key_1",
    )
    assert kept.request.prompt == "" and kept.reply_to == "caller" and kept.hops == 1


@pytest.fixture(scope="module")
def upstream() -> Iterator[MisbehavingOpenAI]:
    with MisbehavingOpenAI() as fake:
        yield fake


def p50(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def test_a_misbehaving_upstream_costs_bounded_memory(tmp_path: Path, upstream: MisbehavingOpenAI) -> None:
    engine = {"api_base": upstream.url + "/v1", "api_key": "sk-none", "retry": {"max_attempts": 1}, "timeout_s": 30}
    bad = [{"name": m, "model": f"openai/{m}", "engine": engine} for m in ("huge", "huge-declared", "endless", "fast")]
    tiny = {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}}
    cfg = tmp_path / "upstream.yaml"
    cfg.write_text(yaml.safe_dump({"http": {"port": 0}, "deployments": [tiny, *bad]}))
    node = Node(config=cfg)
    try:
        url = http_url(node)
        gateway = by_title(node, "Gateway")
        normal = {"model": "tiny", "prompt": "Hi", "max_tokens": 2}
        with httpx.Client(timeout=60) as client:
            idle = []
            for _ in range(20):
                t0 = time.monotonic()
                assert client.post(url + "/v1/completions", json=normal).status_code == 200
                idle.append(time.monotonic() - t0)
        before = gateway.memory_info().rss
        chat = {"messages": [{"role": "user", "content": "Hi"}]}
        with Others(url) as others, httpx.Client(timeout=120) as client:
            for model in ("huge", "huge-declared", "endless"):  # whole answers: read up to 32 MiB, no more
                r = client.post(url + "/v1/chat/completions", json={**chat, "model": model})
                assert r.status_code == 503 and "max_response_bytes" in r.json()["error"]["message"], r.text[:300]
            # a stream that ignores max_tokens is cut there
            with client.stream(
                "POST",
                url + "/v1/chat/completions",
                json={**chat, "model": "endless", "stream": True, "max_tokens": 50},
            ) as s:
                lines = [line for line in s.iter_lines() if line.startswith("data: {")]
            choices = [json.loads(line[6:])["choices"] for line in lines]
            finishes = [c[0].get("finish_reason") for c in choices if c]
            assert finishes[-1] == "length" and len(lines) <= 52, (len(lines), finishes[-3:])
            # a caller that never reads a fast stream: the provider is held back, memory is not spent
            sock = socket.create_connection(host_port(url))
            body = json.dumps({**chat, "model": "fast", "stream": True, "max_tokens": 1_000_000}).encode()
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: atomr\r\nContent-Type: application/json\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )
            seen: list[int] = []

            def held_back() -> bool:
                seen.append(upstream.sent["fast"])
                return len(seen) > 6 and seen[-1] == seen[-6] and seen[-1] > 0

            wait_until(held_back, 60, "the provider's stream held back", step=0.5)
            assert upstream.sent["fast"] < FAST_TOKENS // 10
            assert upstream.ended["fast"] == 0  # held back, not cut by a limit: still open
            assert gateway.memory_info().rss - before < 100 * MiB
            sock.close()
            wait_until(lambda: upstream.ended["fast"] == 1, 30, "the provider's stream closed after the caller left")
        others.check()
        assert p50(others.latencies) <= max(2 * p50(idle), p50(idle) + 0.05), (p50(idle), p50(others.latencies))
        assert gateway.memory_info().rss - before < 100 * MiB
    finally:
        assert node.stop() == []


def test_documented_types_are_parsed_strictly_and_errors_quote_little() -> None:
    from atomr.core.errors import InvalidRequestError
    from atomr.http.openai_requests import parse_chat

    hello = [{"role": "user", "content": "Hi"}]
    for field, value in (("stream", "yes"), ("max_tokens", "10"), ("temperature", "0.5"), ("logprobs", 1)):
        with pytest.raises(InvalidRequestError) as refused:
            parse_chat(json.dumps({"model": "m", "messages": hello, field: value}).encode(), 16)
        assert refused.value.field == field, (field, refused.value)
    _, ok = parse_chat(json.dumps({"model": "m", "messages": hello, "temperature": 1, "max_tokens": 10}).encode(), 16)
    assert ok.params.temperature == 1 and ok.params.max_tokens == 10  # an integer is a number


def test_with_keys_only_the_public_paths_answer_without_one(tmp_path: Path) -> None:
    from atomr.core.tenants import new_key

    key, digest = new_key()
    cfg = config(tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["tenants"] = [{"name": "team", "key_sha256": digest}]
    raw["http"]["public_paths"] = ["/healthz"]
    cfg.write_text(yaml.safe_dump(raw))
    node = Node(config=cfg)
    try:
        url = http_url(node)
        for path in ("/metrics", "/openapi.json", "/readyz", "/health"):
            assert httpx.get(url + path, timeout=30).status_code == 401, path
            assert httpx.get(url + path, headers={"authorization": f"Bearer {key}"}, timeout=30).status_code == 200
        assert httpx.get(url + "/healthz", timeout=30).status_code == 200
        long_name = "m" * 500_000
        r = httpx.post(
            url + "/v1/completions",
            json={"model": long_name, "prompt": "x"},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert r.status_code == 404 and len(r.text) < 1000, r.text[:300]  # the name is not sent back whole
    finally:
        assert node.stop() == []
