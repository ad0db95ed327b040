"""Remote deployments served inside the gateway for its HTTP front, on a real node.

- an HTTP request to a remote deployment is served by the gateway's own runner (its log line
  names replica ``gateway-<pid of the process listening on the HTTP port>``), with the same answer
  a `Client` gets through the deployment's replica;
- the metrics of both paths add up to one count per request in `/metrics`;
- ``serve_in_gateway: false`` and a local model keep the replica path;
- a rate-limited deployment is admitted from the gateway's lease and served in the gateway; over
  the limit, 429 with Retry-After, and the refused request gives its slot back;
- a retryable failure before the first chunk moves the request to the fallback deployment;
- beyond `max_inflight_per_replica` requests in flight, the rest go to the coordinator's replicas;
- while the coordinator's queue holds requests, the front's requests join that queue rather than
  jump it;
- a client that leaves cancels the request in the gateway (the provider's call is dropped).
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import yaml

from atomr.client import Client
from atomr.cluster.system import processes_on_port
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-inline-" + "q" * 24
NO_RETRY = {"max_attempts": 1}


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI) -> Iterator[tuple[Node, str, int]]:
    folder = tmp_path_factory.mktemp("inline")
    (folder / "key").write_text(KEY)
    remote = {"api_base": provider.url + "/v1", "api_key_file": str(folder / "key"), "retry": NO_RETRY}
    deployments: list[dict[str, Any]] = [
        {"name": "gpt", "model": "openai/gpt-fake", "engine": remote, "limits": {"max_inflight_per_replica": 2}},
        {"name": "primary", "model": "openai/gpt-fake", "engine": remote, "fallbacks": ["backup"]},
        {"name": "backup", "model": "openai/gpt-fake", "engine": remote, "serve_in_gateway": False},
        {
            "name": "limited",
            "model": "openai/gpt-fake",
            "engine": remote,
            "rate_limits": {"rpm": 2, "window_s": 3},
            "limits": {"max_inflight_per_replica": 1},
        },
        {"name": "metered", "model": "openai/gpt-fake", "engine": remote, "rate_limits": {"tpm": 300}},
        {"name": "busy", "model": "openai/gpt-fake", "engine": remote, "limits": {"max_inflight_per_replica": 1}},
        {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
    ]
    cfg = folder / "inline.yaml"
    cfg.write_text(yaml.safe_dump({"http": {"port": 0}, "deployments": deployments}))
    node = Node(config=cfg)
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    url = match.group(1)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    (gateway,) = processes_on_port(port)
    try:
        yield node, url, gateway.pid
    finally:
        assert node.stop() == []


def chat(base: str, model: str, stream: bool = False, timeout: float = 30.0) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32, "stream": stream}
    return httpx.post(f"{base}/v1/chat/completions", json=body, timeout=timeout)


def sse_text(r: httpx.Response) -> str:
    text = ""
    for line in r.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in json.loads(line[6:]).get("choices") or ():
                text += choice["delta"].get("content") or ""
    return text


def request_lines(node: Node, request_ids: set[str], wait_s: float = 10.0) -> dict[str, list[dict[str, Any]]]:
    """The `request` log lines of these request ids (every one of them waited for)."""
    deadline = time.time() + wait_s
    while True:
        found: dict[str, list[dict[str, Any]]] = {}
        for line in node.output().splitlines():
            if '"event": "request"' not in line:
                continue
            rec = json.loads(line)
            if rec.get("request_id") in request_ids:
                found.setdefault(rec["request_id"], []).append(rec)
        if set(found) >= request_ids or time.time() > deadline:
            return found
        time.sleep(0.05)


def test_http_requests_run_in_the_gateway_and_client_requests_on_the_replica(
    front: tuple[Node, str, int], provider: FakeOpenAI
) -> None:
    node, base, gateway_pid = front
    unary = chat(base, "gpt")
    streamed = chat(base, "gpt", stream=True)
    assert unary.status_code == 200 and streamed.status_code == 200
    assert unary.json()["choices"][0]["message"]["content"] == provider.reply_text
    assert sse_text(streamed) == provider.reply_text
    assert unary.json()["usage"]["completion_tokens"] > 0
    with Client(node.address) as client:
        result = client.generate("gpt", "Hello", max_tokens=32)
    assert result.text == provider.reply_text
    assert result.replica and not result.replica.startswith("gateway-")
    ids = {unary.headers["x-request-id"], streamed.headers["x-request-id"]}
    lines = request_lines(node, ids)
    for rid in ids:
        (rec,) = lines[rid]
        assert rec["replica"] == f"gateway-{gateway_pid}" and rec["outcome"] == "ok" and rec["deployment"] == "gpt"


def test_requests_are_counted_once_across_both_paths(front: tuple[Node, str, int]) -> None:
    node, base, _ = front
    before = _settled_sum(base, "gpt")  # earlier tests' requests counted first
    for _ in range(3):  # in the gateway
        assert chat(base, "gpt").status_code == 200
    with Client(node.address) as client:  # on the replica
        for _ in range(2):
            client.generate("gpt", "Hello", max_tokens=8)
    deadline = time.time() + 10
    while _series_sum(base, "gpt") < before + 5 and time.time() < deadline:
        time.sleep(0.2)
    assert _settled_sum(base, "gpt") == before + 5  # and nothing counted twice


def _settled_sum(base: str, deployment: str) -> float:
    """The count once two readings 1.5 s apart (a shipping round is 1 s) agree."""
    last = _series_sum(base, deployment)
    for _ in range(20):
        time.sleep(1.5)
        now = _series_sum(base, deployment)
        if now == last:
            return now
        last = now
    raise AssertionError(f"the request count of {deployment} kept changing")


def _series_sum(base: str, deployment: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    total = 0.0
    for labels, value in re.findall(r"^atomr_requests_total\{([^}]*)\} (\S+)$", text, re.M):
        if f'deployment="{deployment}"' in labels and 'outcome="ok"' in labels:
            total += float(value)
    return total


def test_some_deployments_keep_the_replica_path(front: tuple[Node, str, int]) -> None:
    node, base, gateway_pid = front
    responses = [chat(base, model) for model in ("backup", "tiny")]
    assert [r.status_code for r in responses] == [200, 200]
    lines = request_lines(node, {r.headers["x-request-id"] for r in responses})
    for r in responses:
        (rec,) = lines[r.headers["x-request-id"]]
        assert rec["outcome"] == "ok" and rec["replica"] != f"gateway-{gateway_pid}", rec


def test_a_rate_limited_deployment_is_admitted_from_the_lease_and_served_here(front: tuple[Node, str, int]) -> None:
    node, base, gateway_pid = front
    time.sleep(3)  # a fresh window
    first, second, third = (chat(base, "limited") for _ in range(3))
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 429 and float(third.headers["retry-after"]) > 0
    assert third.json()["error"]["type"] == "rate_limit_error"
    assert third.json()["error"]["code"] == "rate_limit_exceeded"  # as OpenAI spells it
    # Refused before its first byte, a stream is a 429 with a JSON body too (not an SSE error in a
    # 200): the openai SDK raises its typed error and its own retry honours Retry-After.
    statuses: list[int] = []
    with httpx.Client(event_hooks={"response": [lambda r: statuses.append(r.status_code)]}) as http:
        sdk = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, http_client=http)
        with pytest.raises(openai.RateLimitError) as limited:
            sdk.chat.completions.create(model="limited", messages=[{"role": "user", "content": "hi"}], stream=True)
        assert limited.value.status_code == 429 and int(limited.value.response.headers["retry-after"]) >= 1
        assert limited.value.code == "rate_limit_exceeded"
        retrying = sdk.with_options(max_retries=3)
        stream = retrying.chat.completions.create(
            model="limited", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed and statuses[0] == 429 and statuses[-1] == 200, statuses
    time.sleep(3.2)  # the window has passed: served again, in the gateway's one slot (not leaked)
    fourth = chat(base, "limited")
    assert fourth.status_code == 200
    ok = {r.headers["x-request-id"] for r in (first, second, fourth)}
    for rid, recs in request_lines(node, ok).items():
        assert [rec["replica"] for rec in recs] == [f"gateway-{gateway_pid}"], (rid, recs)


def test_token_debits_of_requests_served_here_are_settled(front: tuple[Node, str, int]) -> None:
    _, base, _ = front
    # "Hello" with max_tokens 32 is estimated at 5 // 4 + 1 + 32 = 34 tokens: 300 TPM admits 8 on
    # estimates alone. Each answer really uses fewer; once settled, that room admits more.
    used, served, refused = 0, 0, 0
    for _ in range(24):
        r = chat(base, "metered")
        if r.status_code == 429:
            refused += 1
            continue
        assert r.status_code == 200, r.text
        served += 1
        used += r.json()["usage"]["total_tokens"]
        time.sleep(0.05)  # the settlement travels to the limiter
    assert served > 8 and refused > 0, (served, refused, used)
    assert used <= 300


def test_a_retryable_failure_moves_to_the_fallback(front: tuple[Node, str, int], provider: FakeOpenAI) -> None:
    node, base, gateway_pid = front
    provider.fail_next(503)
    r = chat(base, "primary")
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == provider.reply_text
    rid = r.headers["x-request-id"]
    recs = {rec["deployment"]: rec for rec in request_lines(node, {rid})[rid]}
    deadline = time.time() + 10
    while "backup" not in recs and time.time() < deadline:
        time.sleep(0.05)
        recs = {rec["deployment"]: rec for rec in request_lines(node, {rid})[rid]}
    assert recs["primary"]["outcome"] == "fallback" and recs["primary"]["replica"] == f"gateway-{gateway_pid}"
    assert recs["backup"]["outcome"] == "ok" and recs["backup"]["replica"] != f"gateway-{gateway_pid}"


def test_overflow_beyond_the_gateways_slots_goes_to_the_replicas(
    front: tuple[Node, str, int], provider: FakeOpenAI
) -> None:
    node, base, gateway_pid = front
    provider.drip_next(0.05, times=6)  # slow streams, so that they overlap
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: chat(base, "gpt", stream=True), range(6)))
    assert all(r.status_code == 200 and sse_text(r) == provider.reply_text for r in responses)
    lines = request_lines(node, {r.headers["x-request-id"] for r in responses})
    where = [rec["replica"] for recs in lines.values() for rec in recs]
    here = sum(1 for w in where if w == f"gateway-{gateway_pid}")
    assert 1 <= here <= 5 and len(where) == 6, where  # at most 2 at once in the gateway; others on the replica


def test_the_front_does_not_jump_the_coordinators_queue(front: tuple[Node, str, int], provider: FakeOpenAI) -> None:
    node, base, gateway_pid = front
    provider.drip_next(0.1, times=6)  # six slow streams (~2 s each) from the Client, one at a time
    with Client(node.address) as client, ThreadPoolExecutor(6) as pool:
        waiting = [pool.submit(lambda: list(client.stream("busy", "Hello", max_tokens=32))) for _ in range(6)]
        deadline = time.time() + 20
        while time.time() < deadline:  # the coordinator's queue, as the head's /metrics shows it
            text = httpx.get(f"{base}/metrics", timeout=10).text
            depth = re.search(r'^atomr_queue_depth\{[^}]*deployment="busy"[^}]*\} (\S+)$', text, re.M)
            if depth is not None and float(depth.group(1)) > 0:
                break
            time.sleep(0.2)
        time.sleep(1.5)  # the registry's next reading reaches the gateway
        r = chat(base, "busy")
        assert r.status_code == 200
        for done in waiting:
            assert done.result(timeout=60)
    (rec,) = request_lines(node, {r.headers["x-request-id"]})[r.headers["x-request-id"]]
    assert rec["replica"] != f"gateway-{gateway_pid}", rec  # it waited its turn on the replica


def test_a_client_that_leaves_cancels_the_gateways_call(front: tuple[Node, str, int], provider: FakeOpenAI) -> None:
    node, base, gateway_pid = front
    provider.stall_next(20)
    host, port = base.removeprefix("http://").rstrip("/").split(":")
    body = json.dumps({"model": "gpt", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}).encode()
    before = provider.count("/chat/completions")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.time() + 10
        while provider.count("/chat/completions") == before and time.time() < deadline:
            time.sleep(0.02)
    started = time.time()
    deadline = started + 10
    rec = None
    while rec is None and time.time() < deadline:
        for line in node.output().splitlines():
            if '"event": "request"' in line and '"outcome": "cancelled"' in line and f"gateway-{gateway_pid}" in line:
                rec = json.loads(line)
        time.sleep(0.05)
    assert rec is not None and rec["deployment"] == "gpt"
    assert time.time() - started < 5  # long before the provider's 20 s stall would end
