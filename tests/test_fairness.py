"""Tenant-fair scheduling in the coordinator, on a real node in front of a provider that takes a
fixed 20 ms per call (so the coordinator's queue, not the engine, decides who goes next):

- a tenant flooding 1,000 requests does not hold back another tenant of equal weight: each of
  the other tenant's requests reaches the provider after at most a few of the flood's (the ones
  already on their way), not after the hundreds still queued;
- with weights 3:1 the order in which requests reach the provider is 3:1 under contention;
- a higher priority class always goes first;
- deadlines drop expired work before it reaches the provider.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atomr.client import Client
from atomr.core.errors import InferenceError
from atomr.core.tenants import new_key
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-fair-" + "x" * 24
STALL_S = 0.02


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("fair")
    (folder / "key").write_text(KEY)
    tenants = "\n".join(
        f"  - {{name: {name}, key_sha256: {new_key()[1]}, weight: {weight}, max_concurrency: 64}}"
        for name, weight in [("a", 1), ("b", 1), ("heavy", 3), ("light", 1), ("low", 1), ("high", 1)]
    )
    cfg = folder / "fair.yaml"
    cfg.write_text(
        f"""
tenants:
{tenants}
deployments:
  - name: fair
    model: openai/gpt-fake
    engine: {{api_base: "{provider.url}/v1", api_key_file: {folder / "key"}, retry: {{max_attempts: 1}}}}
    limits: {{max_inflight_per_replica: 4, max_queue: 5000}}
"""
    )
    n = Node(config=cfg)
    try:
        yield n
    finally:
        assert n.stop() == []


def flood(client: Client, tenant: str, n: int, **kw: Any) -> threading.Thread:
    reqs = [client.make_request("fair", f"{tenant}-{i}", tenant=tenant, max_tokens=4, **kw) for i in range(n)]
    t = threading.Thread(target=client.generate_many, args=(reqs,), daemon=True)
    t.start()
    return t


def served_tenants(provider: FakeOpenAI, since: int) -> list[str]:
    """Tenants of the calls that reached the provider after call number `since`, in arrival order."""
    with provider.lock:
        calls = provider.calls[since:]
    return [c.body["messages"][-1]["content"].split("-")[0] for c in calls if c.body]


def queued(client: Client) -> int:
    return next(d.queued for d in client.status()["deployments"] if d.name == "fair")


def wait_queued(client: Client, at_least: int) -> None:
    deadline = time.time() + 30
    while queued(client) < at_least:
        assert time.time() < deadline, "the flood never queued up"
        time.sleep(0.05)


def overtaken(client: Client, provider: FakeOpenAI, tenant: str, n: int, **kw: Any) -> list[int]:
    """For each of `n` requests of `tenant` in turn: how many other calls reached the provider
    between its sending and its own arrival there."""
    out = []
    for i in range(n):
        with provider.lock:
            since = len(provider.calls)
        client.generate("fair", f"{tenant}-x{i}", tenant=tenant, max_tokens=4, **kw)
        with provider.lock:
            contents = [c.body["messages"][-1]["content"] for c in provider.calls[since:] if c.body]
        out.append(contents.index(f"{tenant}-x{i}"))
    return out


def test_a_flooding_tenant_does_not_starve_an_equal_one(node: Node, provider: FakeOpenAI) -> None:
    provider.stall_next(STALL_S, times=10_000)
    with Client(node.address) as client:
        flooding = flood(client, "a", 1000)
        wait_queued(client, 500)
        ahead = overtaken(client, provider, "b", 20)
        assert queued(client) > 100  # the flood was still waiting while b was served
        flooding.join(120)
    provider.forget_calls()
    # Ahead of each b request: at most the flood's requests already dispatched to the replica's 4
    # slots or on their way to the provider, and the one a takes in its turn (FIFO: hundreds).
    assert max(ahead) <= 8, ahead


def test_weights_3_to_1_give_shares_3_to_1(node: Node, provider: FakeOpenAI) -> None:
    provider.stall_next(STALL_S, times=10_000)
    with Client(node.address) as client:
        since = len(provider.calls)
        floods = [flood(client, "heavy", 400), flood(client, "light", 400)]
        for f in floods:
            f.join(120)
    order = served_tenants(provider, since)
    provider.forget_calls()
    # while both were backlogged (the first 400 served), heavy got 3 of every 4
    window = order[8:408]  # past the first requests, which went out before both had queued
    share = window.count("heavy") / len(window)
    assert abs(share - 0.75) <= 0.075, share


def test_a_higher_priority_class_always_goes_first(node: Node, provider: FakeOpenAI) -> None:
    provider.stall_next(STALL_S, times=10_000)
    with Client(node.address) as client:
        since = len(provider.calls)
        low = flood(client, "low", 300)
        wait_queued(client, 200)
        ahead = overtaken(client, provider, "high", 10, priority=5)
        low.join(120)
    order = served_tenants(provider, since)
    provider.forget_calls()
    last_high = len(order) - 1 - order[::-1].index("high")
    assert order[last_high + 1 :].count("low") >= 100  # the backlog was still there afterwards
    # each high request went out next, past the queued backlog: only calls already in flight (or
    # taking a slot as it arrived) reached the provider between its sending and its arrival. (How
    # many lows run between two high requests depends on the client's pace, not on the queue.)
    assert max(ahead) <= 8, ahead


def test_expired_requests_never_reach_the_provider(node: Node, provider: FakeOpenAI, tmp_path: Path) -> None:
    provider.stall_next(0.2, times=100)
    with Client(node.address) as client:
        since = len(provider.calls)
        reqs = [client.make_request("fair", f"a-{i}", tenant="a", max_tokens=4, timeout=0.5) for i in range(40)]
        results = client.generate_many(reqs)
    timeouts = [r for r in results if isinstance(r, InferenceError) and r.kind == "timeout"]
    assert len(timeouts) >= 20
    time.sleep(1)
    # 4 slots x 0.2 s: at most ~12 calls fit in 0.5 s; the rest expired in the queue, unsent
    assert len(served_tenants(provider, since)) <= 16
    provider.forget_calls()
