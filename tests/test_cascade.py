"""Confidence cascades through a real node: the embedded tiny model is tier 1, a fake remote
"large" model (the `openai` runtime against `FakeOpenAI`) tier 2.

Prompts from the tiny model's own training text are answered by tier 1 with high confidence
(and exactly its greedy text); prompts far from it (random strings, other languages) are passed
up to tier 2. A failing tier 1 passes up too; a failing last tier's error reaches the caller. The
caller sees one request (Python client and HTTP front, whole answers and streams), told which
tier answered; the metrics count answers per tier, escalations and the money saved.
"""

from __future__ import annotations

import json
import random
import re
import socket
import string
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from atomr.config import deployment_from_dict
from atomr.core.cascade import Confidence, accepts, confidence_of, price
from atomr.core.errors import InferenceError
from atomr.core.policies import CascadeTier
from atomr.core.types import Chunk, TokenLogprob, Usage
from atomr.models import builtin_model_dir
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI, tokenize

KEY = "sk-cascade-test-key"
IN_DOMAIN = ["The actor model", "To bake bread,", "In winter", "Once upon a time", "A small garden needs"]
_rng = random.Random(7)
OUT_OF_DOMAIN = [
    "".join(_rng.choices(string.ascii_letters + string.digits, k=24)),
    "Quantenmechanik beschreibt",
    "La révolution française",
    "東京は日本の首都です",
    "El perro come",
]
MAX_TOKENS = 16
LARGE_COST = {"prompt": 2.5, "completion": 10.0}  # USD per 1M tokens


@pytest.fixture(scope="module")
def large() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, large: FakeOpenAI) -> Iterator[tuple[Node, str]]:
    folder = tmp_path_factory.mktemp("cascade")
    (folder / "key").write_text(KEY)
    engine = {"api_base": large.url + "/v1", "api_key_file": str(folder / "key"), "retry": {"max_attempts": 1}}
    tiers = [{"deployment": "tiny", "threshold": -0.05, "rule": "min"}, {"deployment": "large"}]
    cfg = folder / "cascade.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "http": {"port": 0},
                "deployments": [
                    {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
                    {"name": "large", "model": "openai/gpt-fake", "engine": engine, "cost": LARGE_COST, "quality": 9},
                ],
                "cascades": [
                    {"name": "smart", "tiers": tiers},
                    {"name": "metered", "tiers": tiers},  # the same, for counting from zero
                    {
                        "name": "strict",
                        "tiers": [
                            {"deployment": "tiny", "threshold": -0.001, "rule": "mean_and_min", "min_threshold": -1},
                            {"deployment": "large"},
                        ],
                    },
                ],
            }
        )
    )
    n = Node(config=cfg)
    match = re.search(r"http front on (http://\S+)", n.output())
    try:
        assert match, n.output()
        yield n, match.group(1)
    finally:
        assert n.stop() == []


@pytest.fixture(autouse=True)
def fresh(large: FakeOpenAI) -> None:
    large.reset(KEY)


def _tiny(prompt: str) -> str:
    return ort_greedy_reference(builtin_model_dir("tiny-llama"), prompt, MAX_TOKENS)


def _large() -> str:
    return "".join(tokenize(FakeOpenAI().reply_text)[:MAX_TOKENS])


def test_the_tiny_model_is_confident_on_its_own_text_only(node: tuple[Node, str]) -> None:
    """The premise, checked: high confidence in domain, low outside it."""
    with Client(node[0].address) as client:
        for p in IN_DOMAIN:
            conf = client.generate("tiny", prompt=p, max_tokens=MAX_TOKENS, logprobs=True).confidence
            assert conf is not None and conf["min_logprob"] > -0.02, (p, conf)
        for p in OUT_OF_DOMAIN:
            result = client.generate("tiny", prompt=p, max_tokens=MAX_TOKENS, logprobs=True)
            conf = result.confidence  # None: it answered nothing at all (its end token first)
            assert conf is None or conf["min_logprob"] < -0.1, (p, conf, result.text)


def test_in_domain_prompts_are_answered_by_tier_one(node: tuple[Node, str], large: FakeOpenAI) -> None:
    with Client(node[0].address) as client:
        for p in IN_DOMAIN:
            result = client.generate("smart", prompt=p, max_tokens=MAX_TOKENS)
            assert (result.deployment, result.tier, result.model) == ("tiny", 1, "smart")
            assert result.text == _tiny(p)
            assert result.logprobs is None  # not asked for: the tier's logprobs stay inside
            assert result.usage.completion_tokens == MAX_TOKENS
        asked = client.generate("smart", prompt=IN_DOMAIN[0], max_tokens=MAX_TOKENS, logprobs=True)
        assert asked.confidence is not None and asked.confidence["min_logprob"] >= -0.05
        chat = client.generate("smart", [{"role": "user", "content": "What is an actor?"}], max_tokens=MAX_TOKENS)
        assert chat.tier == 1 and chat.text.startswith("An actor is")
    assert large.count("/completions") == 0  # tier 2 was never asked


def test_out_of_domain_prompts_escalate_to_tier_two(node: tuple[Node, str], large: FakeOpenAI) -> None:
    with Client(node[0].address) as client:
        for p in OUT_OF_DOMAIN:
            result = client.generate("smart", prompt=p, max_tokens=MAX_TOKENS)
            assert (result.deployment, result.tier) == ("large", 2), p
            assert result.text == _large()
        chat = client.generate("smart", [{"role": "user", "content": "Wie spät ist es?"}], max_tokens=MAX_TOKENS)
        assert chat.tier == 2
    assert large.count("/completions") == len(OUT_OF_DOMAIN) + 1  # one call each: tier 1 was not resent


def test_streams_show_only_the_accepted_tier(node: tuple[Node, str]) -> None:
    with Client(node[0].address) as client:
        s = client.stream("smart", prompt="In winter", max_tokens=MAX_TOKENS)
        assert "".join(c.text for c in s) == _tiny("In winter")
        assert (s.deployment, s.tier) == ("tiny", 1)
        s = client.stream("smart", prompt=OUT_OF_DOMAIN[1], max_tokens=MAX_TOKENS, logprobs=True)
        chunks = list(s)
        assert "".join(c.text for c in chunks) == _large()  # nothing of tier 1's answer
        assert (s.deployment, s.tier) == ("large", 2)
        assert chunks[-1].finish_reason == "stop" and all(c.logprobs for c in chunks if c.text)
        # many at once, mixed, in one message
        prompts = IN_DOMAIN + OUT_OF_DOMAIN
        reqs = [client.make_request("smart", prompt=p, max_tokens=MAX_TOKENS) for p in prompts]
        results = client.generate_many(reqs)
        for p, r in zip(prompts, results, strict=True):
            assert not isinstance(r, InferenceError), r
            assert r.text == (_tiny(p) if p in IN_DOMAIN else _large())


def test_a_failing_tier_passes_up_and_the_last_tiers_error_reaches_the_caller(
    node: tuple[Node, str], large: FakeOpenAI
) -> None:
    with Client(node[0].address) as client:
        # tier 1 cannot take a prompt beyond its context (256 tokens): tier 2 answers
        long_prompt = "The actor model " * 120
        result = client.generate("smart", prompt=long_prompt, max_tokens=MAX_TOKENS)
        assert (result.deployment, result.tier) == ("large", 2)
        # the last tier's error is the caller's, with the tier it came from
        large.fail_next(400)
        with pytest.raises(InferenceError) as err:
            client.generate("smart", prompt=OUT_OF_DOMAIN[0], max_tokens=MAX_TOKENS)
        assert err.value.kind == "invalid_request" and err.value.details["tier"] == 2
        assert "low confidence" in err.value.details["trail"][0]


def test_the_rule_decides_what_is_confident_enough(node: tuple[Node, str]) -> None:
    """ "strict" asks a mean logprob of at least -0.001: some in-domain answers pass, none outside."""
    with Client(node[0].address) as client:
        tiers = {p: client.generate("strict", prompt=p, max_tokens=MAX_TOKENS).tier for p in IN_DOMAIN}
        confs = {
            p: client.generate("tiny", prompt=p, max_tokens=MAX_TOKENS, logprobs=True).confidence for p in IN_DOMAIN
        }
        for p, tier in tiers.items():
            conf = confs[p]
            assert conf is not None
            assert tier == (1 if conf["mean_logprob"] >= -0.001 else 2), (p, conf)
        assert all(client.generate("strict", prompt=p, max_tokens=4).tier == 2 for p in OUT_OF_DOMAIN[:2])


def test_metrics_count_tiers_escalations_and_money_saved(node: tuple[Node, str]) -> None:
    with Client(node[0].address) as client:
        for p in IN_DOMAIN[:4] + OUT_OF_DOMAIN[:2]:
            client.generate("metered", prompt=p, max_tokens=MAX_TOKENS)
        deadline = time.time() + 10
        while time.time() < deadline:
            text = client.metrics()
            if _metric(text, "atomr_cascade_requests_total", cascade="metered") >= 6:
                break
            time.sleep(0.3)
    assert _metric(text, "atomr_cascade_requests_total", cascade="metered", tier="1", deployment="tiny") == 4
    assert _metric(text, "atomr_cascade_requests_total", cascade="metered", tier="2", deployment="large") == 2
    assert _metric(text, "atomr_cascade_escalations_total", cascade="metered", tier="1", reason="low_confidence") == 2
    # tier 1 is free; the 4 answers it kept would have cost their tokens at tier 2's prices
    spent = _metric(text, "atomr_cascade_cost_usd_total", cascade="metered")
    baseline = _metric(text, "atomr_cascade_baseline_cost_usd_total", cascade="metered")
    saved = _metric(text, "atomr_cascade_cost_saved_usd_total", cascade="metered")
    assert spent > 0 and baseline > spent
    assert saved == pytest.approx(baseline - spent)
    assert _metric(text, "atomr_cascade_cost_overspent_usd_total", cascade="metered") == 0


def test_the_http_front_serves_a_cascade(node: tuple[Node, str]) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url=node[1] + "/v1", api_key="none", max_retries=0, timeout=60)
    done = sdk.completions.create(model="smart", prompt="Once upon a time", max_tokens=MAX_TOKENS)
    assert done.choices[0].text == _tiny("Once upon a time")
    done = sdk.completions.create(model="smart", prompt=OUT_OF_DOMAIN[0], max_tokens=MAX_TOKENS)
    assert done.choices[0].text == _large()
    parts = [
        e.choices[0].text
        for e in sdk.completions.create(model="smart", prompt="To bake bread,", max_tokens=MAX_TOKENS, stream=True)
        if e.choices
    ]
    assert "".join(parts) == _tiny("To bake bread,")
    chat = sdk.chat.completions.create(
        model="smart", messages=[{"role": "user", "content": "Wie spät ist es?"}], max_tokens=MAX_TOKENS, stream=True
    )
    assert "".join(e.choices[0].delta.content or "" for e in chat if e.choices) == _large()


def test_a_caller_that_leaves_cancels_the_tier_in_flight(node: tuple[Node, str], large: FakeOpenAI) -> None:
    n, base = node
    host, _, port = base.removeprefix("http://").partition(":")
    large.stall_next(3.0)  # tier 2 is slow: the caller leaves while it runs
    body = json.dumps({"model": "smart", "prompt": OUT_OF_DOMAIN[2], "max_tokens": 8, "stream": True}).encode()
    seen = len(n.output().splitlines())
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.time() + 10
        while large.count("/completions") == 0 and time.time() < deadline:
            time.sleep(0.02)  # tier 1 passed it up; tier 2 is running
        assert large.count("/completions") > 0
    # the caller left before the stream's first byte (its status waits for the first event)
    deadline = time.time() + 10
    outcome = None
    while time.time() < deadline and outcome is None:
        for line in n.output().splitlines()[seen:]:
            if ':t2"' in line and '"event": "request"' in line:
                outcome = json.loads(line)["outcome"]
        time.sleep(0.05)
    assert outcome == "cancelled"  # long before the provider would have answered
    with Client(n.address) as client:  # and the cascade keeps serving
        assert client.generate("smart", prompt=OUT_OF_DOMAIN[2], max_tokens=4).tier == 2


# ---- the decisions, without actors ----


def test_rules_and_prices() -> None:
    lps = (TokenLogprob("a", -0.01), TokenLogprob("b", -0.5), TokenLogprob("c", -0.03))
    conf = confidence_of([Chunk("ab", 2, lps[:2]), Chunk("c", 1, lps[2:])])
    assert conf == Confidence(pytest.approx(-0.18), -0.5, 3)  # type: ignore[arg-type]
    assert accepts(CascadeTier(deployment="t", threshold=-0.2, rule="mean"), conf, last=False)
    assert not accepts(CascadeTier(deployment="t", threshold=-0.2, rule="min"), conf, last=False)
    both = CascadeTier(deployment="t", threshold=-0.2, rule="mean_and_min", min_threshold=-0.6)
    assert accepts(both, conf, last=False)
    assert not accepts(both.model_copy(update={"min_threshold": -0.4}), conf, last=False)
    assert not accepts(CascadeTier(deployment="t", threshold=-9), None, last=False)  # no logprobs: pass up
    assert accepts(CascadeTier(deployment="t"), None, last=True)  # the last tier always answers
    dep = deployment_from_dict({"name": "x", "model": "openai/x", "cost": LARGE_COST})
    assert price(dep, Usage(1_000_000, 100_000)) == pytest.approx(2.5 + 1.0)
    assert price(None, Usage(10, 10)) == 0.0


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^(\w+)\{([^}]*)\} (\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        have: dict[str, Any] = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
    return total
