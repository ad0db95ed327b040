"""Routing policies per model alias.

Through a real node: two fake providers behind two deployments with different prices and speeds;
`cheapest` and `fastest` routes pick accordingly, `quality` picks the higher tier, `weighted`
shares traffic by weight; a deployment whose circuit breaker opens gets no more traffic from its
route (the other deployment answers, and the caller never sees the failures). Bad configs fail
with errors naming the file and field, at node start and through the client.

Without actors: the router's choices over given stats, and the stats the registry derives from
the manager's view and the coordinators' metrics.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from atomr.client import Client
from atomr.config import deployment_from_dict, load_policies
from atomr.core.errors import ConfigError
from atomr.core.policies import RoutePolicy, policies_from_config
from atomr.core.routes import DeploymentStats, Route
from atomr.core.routing import PROBE_INTERVAL_S, Router
from atomr.core.status import DeploymentInfo, ReplicaInfo
from atomr.core.types import InferenceRequest, SamplingParams
from atomr.observability.route_stats import StatsTracker
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI, tokenize

KEY = "sk-routing-test-key"
NO_RETRY = {"max_attempts": 1}
SLOW_S = 0.25


class SlowOpenAI(FakeOpenAI):
    """The fake provider, answering each completion `SLOW_S` later."""

    def handle(self, path: str, headers: dict[str, str], body: Any) -> Any:
        if "completions" in path:
            time.sleep(SLOW_S)
        return super().handle(path, headers, body)


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeOpenAI]]:
    with FakeOpenAI(api_key=KEY) as fast, SlowOpenAI(api_key=KEY) as slow, FakeOpenAI(api_key=KEY) as fragile:
        yield {"fast": fast, "slow": slow, "fragile": fragile}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, fakes: dict[str, FakeOpenAI]) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("routing")
    (folder / "key").write_text(KEY)

    def engine(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
        return {"api_base": fake.url + "/v1", "api_key_file": str(folder / "key"), "retry": NO_RETRY, **extra}

    cfg = folder / "routing.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    # fast but dear, high quality / slow but cheap, lower quality
                    {
                        "name": "fast",
                        "model": "openai/gpt-fake",
                        "engine": engine(fakes["fast"]),
                        "cost": {"prompt": 5.0, "completion": 15.0},
                        "quality": 3,
                    },
                    {
                        "name": "slow",
                        "model": "openai/gpt-fake",
                        "engine": engine(fakes["slow"]),
                        "cost": {"prompt": 0.15, "completion": 0.6},
                        "quality": 1,
                    },
                    {
                        "name": "fragile",
                        "model": "openai/gpt-fake",
                        "engine": engine(fakes["fragile"], circuit={"failure_threshold": 2, "cooldown_s": 60}),
                        "cost": {"prompt": 0.1, "completion": 0.1},
                    },
                ],
                "routes": [
                    {"name": "cheap", "policy": "cheapest", "deployments": ["fast", "slow"]},
                    {"name": "quick", "policy": "fastest", "deployments": ["slow", "fast"]},
                    {"name": "best", "policy": "quality", "deployments": ["slow", "fast"]},
                    {
                        "name": "shared",
                        "policy": "weighted",
                        "deployments": [{"deployment": "fast", "weight": 3}, {"deployment": "slow", "weight": 1}],
                    },
                    {"name": "sturdy", "policy": "cheapest", "deployments": ["fast", "fragile"]},
                ],
            }
        )
    )
    n = Node(config=cfg)
    try:
        assert "routes and cascades: cheap, quick, best, shared, sturdy" in n.output()
        yield n
    finally:
        assert n.stop() == []


def _answered_by(client: Client, route: str, n: int) -> list[str]:
    return [client.generate(route, prompt="Hello", max_tokens=4).deployment for _ in range(n)]


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{([^}]*)\} (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total


# ---- through a real node ----


def test_cheapest_and_quality_pick_by_price_and_tier(node: Node, fakes: dict[str, FakeOpenAI]) -> None:
    with Client(node.address) as client:
        deadline = time.time() + 15  # the gateway learns both deployments' health within a second or two
        while client.generate("cheap", prompt="Hello", max_tokens=4).deployment != "slow":
            assert time.time() < deadline, "cheapest never chose the cheaper deployment"
        assert _answered_by(client, "cheap", 4) == ["slow"] * 4
        assert _answered_by(client, "best", 4) == ["fast"] * 4
        served = len(fakes["slow"].served)
        result = client.generate("cheap", prompt="Hello", max_tokens=8)
        assert result.model == "cheap" and result.deployment == "slow"
        assert result.text == "".join(tokenize(fakes["slow"].reply_text)[:8])
        assert len(fakes["slow"].served) == served + 1


def test_fastest_moves_to_the_deployment_measured_faster(node: Node) -> None:
    with Client(node.address) as client:
        seen: list[str] = []
        deadline = time.time() + 30
        # "slow" is listed first: it is probed, measured, then left for "fast"
        while time.time() < deadline and seen[-8:] != ["fast"] * 8:
            seen.append(client.generate("quick", prompt="Hello", max_tokens=4).deployment)
            time.sleep(0.1)
        assert seen[-8:] == ["fast"] * 8, seen
        assert _answered_by(client, "quick", 6) == ["fast"] * 6
        text = client.metrics()

    def mean_ttft(name: str) -> float:
        ttft = "atomr_time_to_first_token_seconds"
        return _metric(text, f"{ttft}_sum", deployment=name) / _metric(text, f"{ttft}_count", deployment=name)

    assert mean_ttft("slow") > SLOW_S > mean_ttft("fast")  # what the choice was made from


def test_weighted_route_shares_by_weight(node: Node) -> None:
    with Client(node.address) as client:
        got = _answered_by(client, "shared", 8)
    assert got.count("fast") == 6 and got.count("slow") == 2, got


def test_traffic_moves_off_a_deployment_whose_circuit_opens(node: Node, fakes: dict[str, FakeOpenAI]) -> None:
    fragile = fakes["fragile"]
    with Client(node.address) as client:
        assert _answered_by(client, "sturdy", 2) == ["fragile"] * 2  # the cheaper one
        # two failures open its breaker; each request moves on to the route's next deployment
        fragile.fail_next(503, times=2)
        assert _answered_by(client, "sturdy", 2) == ["fast"] * 2
        deadline = time.time() + 10
        while time.time() < deadline:
            (replica,) = next(d for d in client.status()["deployments"] if d.name == "fragile").replicas
            if replica.health.get("circuit", {}).get("state") == "open":
                break
            time.sleep(0.1)
        assert replica.health["circuit"]["state"] == "open"
        time.sleep(1.5)  # the registry reads health every 0.5 s and tells the gateway
        before = client.metrics()
        reached = _metric(before, "atomr_requests_total", deployment="fragile")
        calls = fragile.count("/completions")
        assert _answered_by(client, "sturdy", 6) == ["fast"] * 6
        time.sleep(2.5)  # metrics are shipped about once a second
        after = client.metrics()
    assert fragile.count("/completions") == calls
    # the route no longer sends anything to the open deployment, not even for a fast refusal
    assert _metric(after, "atomr_requests_total", deployment="fragile") == reached
    # the route chose "fragile" 4 times (the 2 failures moved on as fallbacks), then "fast" only
    assert _metric(after, "atomr_route_requests_total", route="sturdy", deployment="fragile") == 4
    assert _metric(after, "atomr_route_requests_total", route="sturdy", deployment="fast") == 6


def test_a_route_cannot_take_a_deployment_name(node: Node) -> None:
    with Client(node.address) as client:
        with pytest.raises(ConfigError) as err:
            client.set_policies({"routes": [{"name": "fast", "policy": "fixed", "deployments": ["slow"]}]})
        assert err.value.field == "name"
        # a new route is served at once
        assert client.set_policies({"routes": [{"name": "late", "policy": "fixed", "deployments": ["slow"]}]})
        assert client.generate("late", prompt="Hello", max_tokens=4).deployment == "slow"


def test_a_bad_routes_section_stops_the_node_naming_the_field(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "deployments": [{"name": "tiny", "model": "builtin:tiny-llama"}],
                "routes": [{"name": "r", "policy": "randomest", "deployments": ["tiny"]}],
            }
        )
    )
    with pytest.raises(RuntimeError) as err:
        Node(config=cfg, timeout=60)
    assert f"{cfg}: routes[0].policy: Input should be 'fixed', 'weighted'" in str(err.value)


# ---- config validation ----


def test_config_errors_name_the_file_and_field(tmp_path: Path) -> None:
    deps = [deployment_from_dict({"name": n, "model": "openai/x"}) for n in ("a", "b")]
    cases = {
        "routes[0].deployments[1]": {"routes": [{"name": "r", "policy": "fixed", "deployments": ["a", "zz"]}]},
        "routes[0].deployments[0].weight": {
            "routes": [{"name": "r", "policy": "weighted", "deployments": [{"deployment": "a", "weight": 0}]}]
        },
        "routes[0].name": {"routes": [{"name": "a", "policy": "fixed", "deployments": ["b"]}]},
        "routes[0].deployments": {"routes": [{"name": "r", "policy": "cheapest"}]},
        "cascades[0].tiers[0].threshold": {
            "cascades": [{"name": "c", "tiers": [{"deployment": "a"}, {"deployment": "b"}]}]
        },
        "cascades[0].tiers[0].rule": {
            "cascades": [
                {"name": "c", "tiers": [{"deployment": "a", "threshold": -1, "rule": "x"}, {"deployment": "b"}]}
            ]
        },
        "cascades[0].tiers[1].deployment": {
            "cascades": [{"name": "c", "tiers": [{"deployment": "a", "threshold": -1}, {"deployment": "nope"}]}]
        },
    }
    for i, (field, raw) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.yaml"
        path.write_text(yaml.safe_dump(raw))
        with pytest.raises(ConfigError) as err:
            load_policies(path, deps)
        assert err.value.field == field
        assert err.value.message.startswith(f"{path}: {field}: "), err.value.message
    bad_cost = {"name": "x", "model": "openai/x", "cost": {"prompt": -1}}
    with pytest.raises(ConfigError) as err:
        deployment_from_dict(bad_cost, where="f.yaml: deployments[0]")
    assert err.value.message == "f.yaml: deployments[0].cost.prompt: Input should be greater than or equal to 0"


# ---- the router's choices, over given stats ----


def _routes(**costs: tuple[float, float, int]) -> dict[str, Route]:
    out = {}
    for name, (prompt, completion, quality) in costs.items():
        cost = {"prompt": prompt, "completion": completion}
        spec = deployment_from_dict({"name": name, "model": "openai/x", "cost": cost, "quality": quality})
        out[name] = Route(name, "1", "openai", None, spec=spec)
    return out


def _policy(kind: str, *names: str, weights: tuple[float, ...] = ()) -> RoutePolicy:
    targets = [{"deployment": n, "weight": w} for n, w in zip(names, weights, strict=True)] if weights else list(names)
    return policies_from_config({"routes": [{"name": "r", "policy": kind, "deployments": targets}]}).routes[0]


REQ = InferenceRequest("r", prompt="x" * 400, params=SamplingParams(max_tokens=10))


def test_router_ranks_by_policy_and_skips_unusable_deployments() -> None:
    routes = _routes(a=(1.0, 1.0, 1), b=(0.5, 0.5, 3), c=(0.1, 0.1, 2))
    router = Router()
    assert router.plan(_policy("fixed", "a", "b", "c"), routes, {}, REQ) == ["a", "b", "c"]
    assert router.plan(_policy("cheapest", "a", "b", "c"), routes, {}, REQ) == ["c", "b", "a"]
    assert router.plan(_policy("quality", "a", "b", "c"), routes, {}, REQ) == ["b", "c", "a"]
    # the per-request estimate weighs prompt and completion prices: a long prompt favours cheap prompts
    skew = _routes(p=(0.1, 10.0, 0), q=(5.0, 0.1, 0))
    assert router.plan(_policy("cheapest", "p", "q"), skew, {}, REQ)[0] == "p"
    short = InferenceRequest("r", prompt="x", params=SamplingParams(max_tokens=500))
    assert router.plan(_policy("cheapest", "p", "q"), skew, {}, short)[0] == "q"
    # unusable ones go last, in the policy's order, as a last resort
    for bad in (
        DeploymentStats(ready=False),
        DeploymentStats(circuit_open=True),
        DeploymentStats(saturated=True),
    ):
        assert router.plan(_policy("cheapest", "a", "b", "c"), routes, {"c": bad}, REQ) == ["b", "a", "c"]
    # unknown deployments (no route) are left out
    assert router.plan(_policy("fixed", "zz", "a"), routes, {}, REQ) == ["a"]


def test_weighted_round_robin_is_exact_and_skips_unusable() -> None:
    routes = _routes(a=(0, 0, 0), b=(0, 0, 0))
    router, policy = Router(), _policy("weighted", "a", "b", weights=(3, 1))
    firsts = [router.plan(policy, routes, {}, REQ)[0] for _ in range(8)]
    assert firsts.count("a") == 6 and firsts.count("b") == 2
    assert "b" in firsts[:4]  # smooth: not a a a a a a b b
    down = {"a": DeploymentStats(ready=False)}
    assert [router.plan(policy, routes, down, REQ)[0] for _ in range(3)] == ["b"] * 3


def test_fastest_probes_unmeasured_deployments_then_keeps_to_the_fastest() -> None:
    routes = _routes(a=(0, 0, 0), b=(0, 0, 0))
    router, policy = Router(), _policy("fastest", "a", "b")
    assert router.plan(policy, routes, {}, REQ, now=0.0)[0] == "a"  # probe a
    assert router.plan(policy, routes, {}, REQ, now=0.1)[0] == "b"  # probe b
    assert router.plan(policy, routes, {}, REQ, now=0.2)[0] == "a"  # nothing measured yet: list order
    stats = {"a": DeploymentStats(ttft_s=0.3), "b": DeploymentStats(ttft_s=0.01)}
    assert [router.plan(policy, routes, stats, REQ, now=1.0)[0] for _ in range(3)] == ["b"] * 3
    # latency stands in where no time to first token was seen
    stats = {"a": DeploymentStats(latency_s=0.02), "b": DeploymentStats(latency_s=0.5)}
    assert router.plan(policy, routes, stats, REQ, now=1.0)[0] == "a"
    # with none usable, the fastest measured still comes first (and gets its own error)
    down = {"a": DeploymentStats(ready=False, ttft_s=0.3), "b": DeploymentStats(ready=False, ttft_s=0.1)}
    assert router.plan(policy, routes, down, REQ, now=1.0) == ["b", "a"]
    # a deployment whose measurement went stale is probed again, once per interval
    stats = {"a": DeploymentStats(ttft_s=0.01)}
    assert router.plan(policy, routes, stats, REQ, now=10.0)[0] == "b"
    assert router.plan(policy, routes, stats, REQ, now=10.0 + PROBE_INTERVAL_S / 2)[0] == "a"


# ---- the stats the registry derives ----


def _exposition(ttft: tuple[float, float], queue: float, inflight: float) -> str:
    labels = 'deployment="a",version="1",runtime="openai"'
    return "\n".join(
        [
            f'atomr_time_to_first_token_seconds_sum{{{labels},tenant="default",replica="a-v1-r0"}} {ttft[0]}',
            f'atomr_time_to_first_token_seconds_count{{{labels},tenant="default",replica="a-v1-r0"}} {ttft[1]}',
            f'atomr_time_to_first_token_seconds_bucket{{{labels},tenant="default",replica="a-v1-r0",le="1.0"}} 1.0',
            f"atomr_queue_depth{{{labels}}} {queue}",
            f'atomr_inflight_requests{{{labels},replica="a-v1-r0"}} {inflight}',
        ]
    )


def test_stats_follow_health_queue_and_measured_speed() -> None:
    spec = deployment_from_dict({"name": "a", "model": "openai/x", "limits": {"max_queue": 4}})
    routes = {"a": Route("a", "1", "openai", None, spec=spec)}
    t = StatsTracker()
    assert t.stats(routes, 0.0)["a"] == DeploymentStats()  # nothing known: usable, speed unknown
    t.on_metrics(_exposition((2.0, 10), 0, 1), now=1.0)
    assert t.stats(routes, 1.0)["a"].ttft_s == pytest.approx(0.2)  # the mean of what was seen so far
    t.on_metrics(_exposition((2.0 + 10 * 1.0, 20), 4, 32), now=2.0)
    s = t.stats(routes, 2.0)["a"]
    assert s.saturated and not s.usable
    assert 0.2 < (s.ttft_s or 0) < 1.0  # moved towards the new mean (1.0), weighted by 10 observations
    assert t.stats(routes, 2.0 + 3600)["a"].ttft_s is None  # stale: forgotten
    replica = ReplicaInfo("a-v1-r0", "n", "ready", health={"circuit": {"state": "open"}})
    t.on_deployments([DeploymentInfo("a", "openai/x", "openai", "1", "ready", replicas=[replica])])
    assert t.stats(routes, 2.0)["a"].circuit_open
    t.on_deployments([DeploymentInfo("a", "openai/x", "openai", "1", "degraded", replicas=[])])
    assert not t.stats(routes, 2.0)["a"].ready
