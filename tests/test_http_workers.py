"""An HTTP front of several worker processes (``http.workers``) on one port, exact as one front.

One head with ``http.workers: 2`` and an `openai` deployment on the fake OpenAI server. Each test
connection is traced to the worker process that accepted it (the gateway process holding the
server side of the connection), so that every scenario covers both workers for certain:
- connections are spread over both workers by the kernel and every request is answered;
  `/metrics` adds up both workers' requests exactly;
- a tenant's concurrency quota holds across them: with the fake holding one request on each
  worker, a third is refused 429 on either worker;
- a response stored on one worker is read back and continued on the other;
- a deployment's rate limit holds across them;
- a worker killed with SIGKILL is started again on the same port, and the other serves meanwhile.
"""

from __future__ import annotations

import http.client
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atomr.core.errors import ConfigError
from atomr.core.tenants import new_key
from atomr.http.settings import http_settings_from_config
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI
from tests.faults.harness import http_url, wait_until
from tests.worker_conns import Conn, listeners, one_on_each

KEY, HASH = new_key()
PROVIDER_KEY = "sk-provider-" + "w" * 32
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "Hello?"}], "max_tokens": 8}
RPM = 4


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI) -> Iterator[tuple[Node, int]]:
    folder = tmp_path_factory.mktemp("workers")
    (folder / "provider.key").write_text(PROVIDER_KEY)
    engine = f'{{api_base: "{provider.url}/v1", api_key_file: {folder / "provider.key"}, retry: {{max_attempts: 1}}}}'
    cfg = folder / "front.yaml"
    cfg.write_text(
        f"""
http: {{port: 0, workers: 2}}
tenants:
  - {{name: team-a, key_sha256: {HASH}, models: [gpt, limited], max_concurrency: 2}}
deployments:
  - {{name: gpt, model: openai/gpt-fake, engine: {engine}}}
  - {{name: limited, model: openai/gpt-fake, engine: {engine}, rate_limits: {{rpm: {RPM}}}}}
"""
    )
    node = Node(config=cfg)
    try:
        yield node, int(http_url(node).rsplit(":", 1)[1])
    finally:
        assert node.stop() == []


def http_requests(port: int) -> float:
    """The 200 answers to POST /v1/chat/completions that /metrics counts, over every worker."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/metrics", headers={"authorization": f"Bearer {KEY}"})
    text = conn.getresponse().read().decode()
    conn.close()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "atomr_http_requests_total" and s.labels == {"route": "/v1/chat/completions", "status": "200"}:
                total += s.value
    return total


def test_workers_is_validated() -> None:
    for bad in (0, 65, "two"):
        with pytest.raises(ConfigError) as refused:
            http_settings_from_config({"workers": bad})
        assert refused.value.field == "http.workers"
    settings = http_settings_from_config({"workers": 3})
    assert settings is not None and settings.workers == 3


def test_both_workers_serve_and_metrics_add_up(front: tuple[Node, int]) -> None:
    node, port = front
    workers = listeners(node, port)
    assert len(workers) == 2, workers
    before = http_requests(port)
    conns = one_on_each(port, workers, KEY, per_worker=3)
    sent = 0
    for cs in conns.values():
        for c in cs:
            status, body = c.call("POST", "/v1/chat/completions", CHAT)
            assert status == 200 and body["choices"][0]["message"]["content"], body
            sent += 1
            c.close()
    wait_until(lambda: http_requests(port) >= before + sent, 30, "both workers' metrics")
    assert http_requests(port) == before + sent


def test_a_tenants_quota_holds_across_workers(front: tuple[Node, int], provider: FakeOpenAI) -> None:
    node, port = front
    conns = one_on_each(port, listeners(node, port), KEY, per_worker=2)
    first, second = ([cs[0] for cs in conns.values()], [cs[1] for cs in conns.values()])
    provider.hold()
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(c.call, "POST", "/v1/chat/completions", CHAT) for c in first]
            assert provider.wait_held(2)  # the tenant's 2 requests, one on each worker
            for c in second:  # a third on either worker: over the quota of 2
                status, body = c.call("POST", "/v1/chat/completions", CHAT)
                assert status == 429 and "max_concurrency" in body["error"]["message"], body
            provider.release()
            assert [f.result(60)[0] for f in held] == [200, 200]
    finally:
        provider.release()
    for c in second:  # the quota is free again, on both workers
        assert c.call("POST", "/v1/chat/completions", CHAT)[0] == 200
    for cs in conns.values():
        for c in cs:
            c.close()


def test_a_response_stored_on_one_worker_is_found_on_the_other(front: tuple[Node, int]) -> None:
    node, port = front
    a, b = (cs[0] for cs in one_on_each(port, listeners(node, port), KEY).values())
    status, made = a.call("POST", "/v1/responses", {"model": "gpt", "input": "Hi", "store": True})
    assert status == 200, made
    status, found = b.call("GET", f"/v1/responses/{made['id']}")
    assert status == 200 and found["id"] == made["id"] and found["output"] == made["output"]
    status, onward = b.call(
        "POST", "/v1/responses", {"model": "gpt", "input": "Again", "previous_response_id": made["id"]}
    )
    assert status == 200 and onward["previous_response_id"] == made["id"], onward
    status, gone = b.call("DELETE", f"/v1/responses/{made['id']}")
    assert status == 200 and gone["deleted"]
    assert a.call("GET", f"/v1/responses/{made['id']}")[0] == 404
    a.close()
    b.close()


def test_a_rate_limit_holds_across_workers(front: tuple[Node, int], provider: FakeOpenAI) -> None:
    node, port = front
    conns = one_on_each(port, listeners(node, port), KEY, per_worker=RPM)
    calls = provider.count("/chat/completions")
    statuses = [
        c.call("POST", "/v1/chat/completions", {**CHAT, "model": "limited"})[0] for cs in conns.values() for c in cs
    ]
    served = statuses.count(200)
    assert sorted(set(statuses)) <= [200, 429] and 1 <= served <= RPM, statuses
    assert provider.count("/chat/completions") - calls == served
    for cs in conns.values():
        for c in cs:
            c.close()


def test_a_killed_worker_is_started_again_on_the_port(front: tuple[Node, int]) -> None:
    node, port = front
    workers = listeners(node, port)
    victim = max(workers)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie", 30, "the kill")
    # the kernel sends new connections to the live sockets: the other worker's (or its successor's,
    # which may be listening before it accepts: then another connection is tried)
    survivor = None
    for _ in range(6):
        try:
            survivor = Conn(port, lambda: listeners(node, port), KEY, within_s=4)
            break
        except AssertionError:  # seen: one that sent nothing was never seen accepted (and the server
            continue  # closes idle connections after 5 s); clients that send at once are served
    assert survivor is not None, "no connection was accepted after the kill"
    assert survivor.call("POST", "/v1/chat/completions", CHAT)[0] == 200
    survivor.close()
    wait_until(lambda: len(listeners(node, port) - {victim}) == 2, 60, "a new worker on the port")
    conns = one_on_each(port, listeners(node, port), KEY)
    for cs in conns.values():
        assert cs[0].call("POST", "/v1/chat/completions", CHAT)[0] == 200
        cs[0].close()
