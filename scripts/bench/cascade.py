"""Confidence cascade benchmark: the embedded tiny model as tier 1, a fake "large" remote model as tier 2.

A labelled prompt set, in-domain (beginnings of the tiny model's own training paragraphs) and
out-of-domain (other languages, other topics, random strings), is sent to one cascade per
threshold (rule ``min`` by default: the least likely token's logprob), and once straight to
tier 2. The "large" model is an OpenAI-compatible fake (`tests/fakes/openai_server.py`) that
knows the tiny model's corpus: it continues an in-domain prompt with the true text and answers
anything else with a fixed sentence, after `--large-delay-ms` (a remote API's latency). For each
threshold the table gives the share answered by each tier, how well the tiers separate the two
labels, the cost against sending everything to tier 2 (the node's own
``atomr_cascade_cost_usd_total`` / ``atomr_cascade_baseline_cost_usd_total``), agreement with
tier 2's answers (the same first `--agree-words` words) and the median latency.

    python scripts/bench/cascade.py [--thresholds -0.01,-0.05,-0.2,-1] [--rule min] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import re
import statistics
import string
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from atomr.client import Client  # noqa: E402
from atomr.node.process import NodeProcess  # noqa: E402
from tests.fakes.openai_server import FakeOpenAI  # noqa: E402


def training_documents() -> list[str]:
    """The tiny model's training documents as plain text: its paragraphs and its "Q: ...\nA: ..." pairs.

    Read from the script that makes the model (it imports only the standard library at the top).
    """
    spec = importlib.util.spec_from_file_location("make_tiny_model", REPO / "scripts" / "make_tiny_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs: list[str] = module.paragraphs()
    docs += [f"Q: {q}\nA: {a}" for q, a in module.QA_PAIRS]
    return docs


LARGE_COST = {"prompt": 2.5, "completion": 10.0}  # USD per 1M tokens, a mid-size hosted model
OTHER = [
    "Quantenmechanik beschreibt",
    "La révolution française",
    "東京は日本の首都です",
    "El perro come",
    "Photosynthesis converts",
    "The stock market fell",
    "SELECT * FROM users WHERE",
    "def fibonacci(n):",
    "Il était une fois",
    "Der Hund schläft",
    "The mitochondria is",
    "In 1492 Columbus",
]
FALLBACK_ANSWER = "I am the large model, and this is my careful answer to a question outside the small corpus."


def in_domain_prompts(docs: list[str]) -> list[str]:
    """How the model's training documents begin: a paragraph's first three words, a question and "A:".

    (Sentences from inside a paragraph are not in-domain for a model this small: it learned each
    paragraph from its beginning, and without that context it is as lost as on foreign text.)
    """
    return [d.partition("\nA:")[0] + "\nA:" if d.startswith("Q: ") else " ".join(d.split()[:3]) for d in docs]


def out_of_domain_prompts(n_random: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    noise = ["".join(rng.choices(string.ascii_letters + string.digits + " ", k=24)).strip() for _ in range(n_random)]
    return OTHER + noise


class OracleOpenAI(FakeOpenAI):
    """The fake provider as a "large model" that knows the corpus (and takes its time)."""

    def __init__(self, docs: list[str], delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.docs = docs
        self._answer_lock = threading.Lock()

    def answer_for(self, prompt: str) -> str:
        """The rest of the training document the prompt comes from, else a fixed answer."""
        for doc in self.docs:
            at = doc.find(prompt) if prompt else -1
            if at >= 0:
                return doc[at + len(prompt) :]
        return " " + FALLBACK_ANSWER

    def _complete(self, route: str, body: dict[str, Any]) -> Any:
        if self.delay_s:
            time.sleep(self.delay_s)
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            messages = body.get("messages") or [{}]
            prompt = str(messages[-1].get("content", ""))
        with self._answer_lock:  # reply_text is one knob: set it and answer under one lock
            self.reply_text = self.answer_for(prompt)
            return super()._complete(route, body)


@dataclass
class Outcome:
    prompt: str
    label: str  # "in" or "out"
    tier: int
    text: str
    latency_s: float


def agree(a: str, b: str, words: int) -> bool:
    return a.split()[:words] == b.split()[:words]


def metric(text: str, name: str, cascade: str) -> float:
    """Sum of a metric's samples for one cascade, from a Prometheus text exposition."""
    found = re.findall(rf'^{name}\{{[^}}]*\bcascade="{re.escape(cascade)}"[^}}]*\}} (\S+)$', text, re.M)
    return sum(float(v) for v in found)


@dataclass
class ThresholdRow:
    """One cascade threshold's outcome over the labelled prompt set (shares in 0..1)."""

    threshold: float
    tier1: float  # share answered by tier 1
    in_at_tier1: float  # share of in-domain prompts answered by tier 1
    out_at_tier2: float  # share of out-of-domain prompts sent on to tier 2
    cost: float | None  # spent / cost of sending everything to tier 2 (the node's own counters)
    agreement: float  # share whose first words agree with tier 2's answer
    p50_s: float


@dataclass
class CascadeResult:
    n_in: int
    n_out: int
    reference_p50_s: float  # everything sent straight to tier 2
    rows: list[ThresholdRow]
    details: list[str]  # one line per prompt and threshold: tier, agreement, prompt and answer


def run(
    thresholds: list[float],
    rule: str = "min",
    max_tokens: int = 16,
    large_delay_ms: float = 150.0,
    random_prompts: int = 8,
    agree_words: int = 6,
    seed: int = 0,
) -> CascadeResult:
    """One cascade per threshold over the labelled prompts, and the same prompts sent straight to tier 2."""
    docs = training_documents()
    labelled = [(p, "in") for p in in_domain_prompts(docs)] + [
        (p, "out") for p in out_of_domain_prompts(random_prompts, seed)
    ]

    with OracleOpenAI(docs, large_delay_ms / 1000) as large, tempfile.TemporaryDirectory() as tmp:
        names = {t: f"cascade-{i}" for i, t in enumerate(thresholds)}
        cfg = Path(tmp) / "cascade.yaml"
        large_tier = {"deployment": "large"}
        engine = {"api_base": large.url + "/v1", "api_key_env": "ATOMR_BENCH_UNUSED_KEY", "retry": {"max_attempts": 1}}
        cfg.write_text(
            yaml.safe_dump(
                {
                    "deployments": [
                        {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
                        {"name": "large", "model": "openai/gpt-fake", "engine": engine, "cost": LARGE_COST},
                    ],
                    "cascades": [
                        {"name": names[t], "tiers": [{"deployment": "tiny", "threshold": t, "rule": rule}, large_tier]}
                        for t in thresholds
                    ],
                }
            )
        )
        env = {**os.environ, "OMP_NUM_THREADS": "1", "ATOMR_BENCH_UNUSED_KEY": "unused"}
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        with NodeProcess(config=cfg, env=env, cwd=REPO) as node, Client(node.address) as client:

            def ask(model: str, prompt: str) -> tuple[int, str, float]:
                t0 = time.perf_counter()
                r = client.generate(model, prompt=prompt, max_tokens=max_tokens)
                return r.tier, r.text, time.perf_counter() - t0

            for p, _ in labelled[:3]:  # warm-up: engines, connections
                ask("tiny", p)
                ask("large", p)
            reference = {p: ask("large", p) for p, _ in labelled}
            results: dict[float, list[Outcome]] = {}
            for t in thresholds:
                results[t] = [Outcome(p, label, *ask(names[t], p)) for p, label in labelled]
            deadline = time.time() + 15  # the gateway ships its counters about once a second
            while True:
                metrics = client.metrics()
                counted = [metric(metrics, "atomr_cascade_requests_total", names[t]) for t in thresholds]
                if min(counted) >= len(labelled) or time.time() > deadline:
                    break
                time.sleep(0.5)

    def agrees(o: Outcome) -> bool:
        return agree(o.text, reference[o.prompt][1], agree_words)

    details = [
        f"{t:g}\t{o.label}\ttier {o.tier}\t{'agree' if agrees(o) else 'differ'}\t{o.prompt!r} -> {o.text!r}"
        for t in thresholds
        for o in results[t]
    ]
    n_in = sum(1 for _, label in labelled if label == "in")
    n_out = len(labelled) - n_in
    rows = []
    for t in thresholds:
        outcomes = results[t]
        t1 = [o for o in outcomes if o.tier == 1]
        spent = metric(metrics, "atomr_cascade_cost_usd_total", names[t])
        baseline = metric(metrics, "atomr_cascade_baseline_cost_usd_total", names[t])
        rows.append(
            ThresholdRow(
                threshold=t,
                tier1=len(t1) / len(outcomes),
                in_at_tier1=sum(1 for o in t1 if o.label == "in") / n_in,
                out_at_tier2=sum(1 for o in outcomes if o.tier == 2 and o.label == "out") / n_out,
                cost=spent / baseline if baseline else None,
                agreement=sum(1 for o in outcomes if agrees(o)) / len(outcomes),
                p50_s=statistics.median(o.latency_s for o in outcomes),
            )
        )
    ref_p50 = statistics.median(v[2] for v in reference.values())
    return CascadeResult(n_in, n_out, ref_p50, rows, details)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--thresholds", default="0,-0.01,-0.05,-0.2,-1,-100")
    ap.add_argument("--rule", choices=("mean", "min"), default="min")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--large-delay-ms", type=float, default=150.0)
    ap.add_argument("--random-prompts", type=int, default=8)
    ap.add_argument("--agree-words", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="also print every prompt's tier and agreement")
    args = ap.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    res = run(
        thresholds,
        args.rule,
        args.max_tokens,
        args.large_delay_ms,
        args.random_prompts,
        args.agree_words,
        args.seed,
    )

    if args.verbose:
        for line in res.details:
            print(line)
    print(
        f"\n{res.n_in + res.n_out} prompts ({res.n_in} in-domain, {res.n_out} out-of-domain), max_tokens "
        f"{args.max_tokens}, rule {args.rule!r}, tier 2 delay {args.large_delay_ms:g} ms, tier 2 price "
        f"${LARGE_COST['prompt']}/${LARGE_COST['completion']} per 1M prompt/completion tokens\n"
    )
    print(
        "| threshold | tier 1 | tier 2 | in-domain at tier 1 | out-of-domain at tier 2 | cost vs all tier 2 "
        "| agreement with tier 2 | p50 latency |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| (all tier 2) | 0% | 100% | - | 100% | 100% | 100% | {res.reference_p50_s * 1000:.0f} ms |")
    for row in res.rows:
        cost = f"{row.cost:.0%}" if row.cost is not None else "-"
        print(
            f"| {row.threshold:g} | {row.tier1:.0%} | {1 - row.tier1:.0%} | {row.in_at_tier1:.0%} "
            f"| {row.out_at_tier2:.0%} | {cost} | {row.agreement:.0%} | {row.p50_s * 1000:.0f} ms |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
