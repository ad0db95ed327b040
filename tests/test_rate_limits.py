"""The cluster-wide rate limiter: three gateway processes share one budget exactly."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from atomr.client import Client
from atomr.config import load_deployments
from atomr.core.errors import ConfigError, InferenceError, RateLimitedError
from atomr.core.ratelimit import WINDOW_S, Budget
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-rate-limit-test"


def test_budget_is_exact_over_a_sliding_window() -> None:
    b = Budget(rpm=5, tpm=100)
    assert b.grant(3, 30, now=0.0) == (3, 30)
    assert b.grant(5, 10, now=1.0) == (2, 10)  # only 2 requests left
    assert b.grant(1, 1, now=2.0) == (0, 0)
    assert b.retry_after(now=2.0) == pytest.approx(WINDOW_S - 2.0)
    b.give_back(1, 5, now=3.0)  # a lease came back unused
    assert b.grant(1, 1, now=3.0) == (1, 1)
    b.settle(estimated=30, actual=80, now=4.0)  # used more tokens than estimated
    assert b.grant(0, 100, now=4.0) == (0, 0)
    assert b.grant(5, 10, now=WINDOW_S + 0.5) == (3, 10)  # the first grant left the window


Limits = dict[str, Any] | list[dict[str, Any]]


@contextmanager
def limited_node(tmp_path: Path, limits: dict[str, Limits]) -> Iterator[tuple[FakeOpenAI, Node]]:
    """The fake OpenAI server, and a node serving one deployment on it per name in `limits`
    (name -> its `rate_limits`), without retries; the node is stopped, leaving nothing behind."""
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    with FakeOpenAI(api_key=KEY) as fake:
        engine = {"api_base": fake.url + "/v1", "api_key_file": str(key_file), "retry": {"max_attempts": 1}}
        cfg = tmp_path / "limits.yaml"
        deps = [_limited(name, engine, rate_limits) for name, rate_limits in limits.items()]
        cfg.write_text(yaml.safe_dump({"deployments": deps}))
        node = Node(config=cfg)
        try:
            yield fake, node
        finally:
            assert node.stop() == []


def _limited(name: str, engine: dict[str, Any], limits: Limits) -> dict[str, Any]:
    return {"name": name, "model": "openai/gpt-fake", "engine": engine, "rate_limits": limits}


def _run_across_gateways(node: Node, n: int, **params: Any) -> list[Any]:
    results: list[Any] = []
    lock = threading.Lock()

    def one_gateway(name: str, count: int) -> None:
        with Client(node.address, gateway=name) as client:
            reqs = [client.make_request("limited", prompt="Hello there", **params) for _ in range(count)]
            out = client.generate_many(reqs)
        with lock:
            results.extend(out)

    shares = [n // 3 + (1 if i < n % 3 else 0) for i in range(3)]
    threads = [threading.Thread(target=one_gateway, args=(f"gw-{i}", c)) for i, c in enumerate(shares)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return results


@pytest.mark.parametrize(
    ("limits", "params", "max_calls"),
    [
        ({"rpm": 20}, {"max_tokens": 8}, 20),
        # each request is estimated at 11 chars // 4 + 1 + 40 = 43 tokens: 300 TPM admits 6 at
        # once; each uses 17 (2 + the fake's 15), and what a request settles back admits more
        # when it ends before the last are admitted (a busy machine): the tokens used stay <= 300
        ({"tpm": 300}, {"max_tokens": 40}, None),
    ],
)
def test_three_gateways_share_one_limit(tmp_path: Path, limits: dict, params: dict, max_calls: int | None) -> None:
    with limited_node(tmp_path, {"limited": limits}) as (fake, node):
        results = _run_across_gateways(node, 100, **params)
        assert len(results) == 100
        served = [r for r in results if not isinstance(r, InferenceError)]
        limited = [r for r in results if isinstance(r, RateLimitedError)]
        others = [r for r in results if isinstance(r, InferenceError) and not isinstance(r, RateLimitedError)]
        assert len(served) + len(limited) == 100, others[:3]
        calls = fake.count("/completions")
        if max_calls is not None:
            assert calls == len(served) <= max_calls
            assert len(served) >= max_calls // 2  # leases given back are used, not lost
        else:
            used = sum(r.usage.total_tokens for r in served)
            assert calls == len(served) and used <= limits["tpm"], (len(served), used)
            assert len(served) >= 3  # leases given back are used, not lost
        assert all(e.retry_after and e.retry_after > 0 and e.http_status == 429 for e in limited)


def test_callers_that_allow_it_wait_for_the_window(tmp_path: Path) -> None:
    with limited_node(tmp_path, {"limited": {"rpm": 2, "window_s": 2}}) as (fake, node), Client(node.address) as client:
        start = time.monotonic()
        waited = client.generate_many(
            [client.make_request("limited", "Hi", max_tokens=4, wait_for_rate_limit=True) for _ in range(4)]
        )
        elapsed = time.monotonic() - start
        assert not [r for r in waited if isinstance(r, InferenceError)]
        assert elapsed >= 1.5  # two of them had to wait for the 2 s window to move
        assert fake.count("/completions") == 4
        time.sleep(2.6)  # the whole 2 s window has moved on, with room for slow machines
        hurried = client.generate_many([client.make_request("limited", "Hi", max_tokens=4) for _ in range(4)])
        assert sum(isinstance(r, RateLimitedError) for r in hurried) == 2


def test_deployments_naming_one_key_share_its_budget(tmp_path: Path) -> None:
    """Two deployments on one provider key (`rate_limits.key`) draw on one budget; a third that
    states other limits for that key is refused, in a config file and at deploy time."""
    org = {"rpm": 10, "key": "org-key"}
    with limited_node(tmp_path, {"a": org, "b": org}) as (fake, node), Client(node.address) as client:
        reqs = [client.make_request(m, prompt="Hello there", max_tokens=4) for m in ("a", "b") * 15]
        results = [client.generate_many(reqs[:2]), client.generate_many(reqs[2:])]  # both routes known
        results = [r for batch in results for r in batch]
        served = [r for r in results if not isinstance(r, InferenceError)]
        assert all(isinstance(r, RateLimitedError) for r in results if isinstance(r, InferenceError))
        assert fake.count("/completions") == len(served) <= 10
        assert {r.deployment for r in served} == {"a", "b"}  # both drew on the one budget
        with pytest.raises(InferenceError) as refused:
            client.deploy(_limited("c", {"api_base": fake.url + "/v1"}, {"rpm": 50, "key": "org-key"}))
        assert refused.value.field == "rate_limits.key" and "'a'" in refused.value.message
        assert [d.name for d in client.list_deployments()] == ["a", "b"]
    bad = tmp_path / "clash.yaml"
    bad.write_text(yaml.safe_dump({"deployments": [_limited("a", {}, org), _limited("b", {}, {**org, "rpm": 11})]}))
    with pytest.raises(ConfigError) as clash:
        load_deployments(bad)
    assert clash.value.field == "rate_limits.key"
    assert "deployments[1].rate_limits: key 'org-key' is shared with deployment 'a'" in clash.value.message


def test_a_request_fits_its_provider_key_and_its_own_limit(tmp_path: Path) -> None:
    """Deployment "a" has two limits: the provider key's 10 RPM (shared with "b") and 3 RPM of its
    own. Its requests refused by its own limit give back what the key's budget had granted them,
    so "b" can use every request the key has left: exactly 10 reach the provider."""
    org = {"rpm": 10, "key": "org-key"}
    with limited_node(tmp_path, {"a": [org, {"rpm": 3}], "b": org}) as (fake, node), Client(node.address) as client:
        assert len(client.generate_many([client.make_request(m, "Hi", max_tokens=4) for m in "ab"])) == 2
        burst = [client.make_request(m, "Hi", max_tokens=4) for m in "ab" * 10]
        results = client.generate_many(burst)
        served = {
            m: sum(1 for r, q in zip(results, burst, strict=True) if q.model == m and not isinstance(r, InferenceError))
            for m in "ab"
        }
        refused = [r for r in results if isinstance(r, InferenceError)]
        assert all(isinstance(r, RateLimitedError) for r in refused), refused[:3]
        assert served["a"] == 2 and served["a"] + served["b"] <= 8, served
        assert {r.message for r in refused} <= {"rate limit 'a' reached", "rate limit 'org-key' reached"}
        # The key's grants that "a"'s refused requests gave back are still there for "b"
        # (without the give-back the key's 10 would all be spent by now).
        left = 8 - served["a"] - served["b"]
        after = client.generate_many([client.make_request("b", "Hi", max_tokens=4) for _ in range(left + 1)])
        assert [isinstance(r, RateLimitedError) for r in after] == [False] * left + [True]
        assert fake.count("/completions") == 10
    with pytest.raises(ConfigError) as twice:
        bad = tmp_path / "twice.yaml"
        bad.write_text(yaml.safe_dump({"deployments": [_limited("a", {}, [{"rpm": 3}, {"tpm": 30}])]}))
        load_deployments(bad)
    assert twice.value.field.startswith("rate_limits") and "its own key" in twice.value.message
