"""Benchmark: what batching gains on the ORT GenAI tiny model, at concurrency 1, 4 and 16.

Three schedulers of the same ORT runner, loaded in this process and driven by closed-loop clients
(each sends its next request when the previous one ends), all greedy, `--max-tokens` each:
- off: "generators", one og.Generator per request, every forward pass has batch size 1;
- batch: dynamic batching, up to `max_batch_size` requests or `max_wait_ms` of waiting, one
  batched og.Generator per batch;
- engine: og.Engine (ORT GenAI's own scheduler; static batching on CPU).
Schedulers run interleaved in rounds in this one invocation; the table gives medians over rounds
and ratios against "off" measured in the same round. One ORT thread (this CPU is shared).

    python scripts/bench/batching.py [--rounds 3] [--requests 64] [--max-tokens 32] [--max-wait-ms 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass

from atomr.runners.local.ort.runner import OrtRunner

from atomr.core.deployment import Deployment
from atomr.core.types import InferenceRequest, SamplingParams

PROMPTS = ["The actor model", "To bake bread,", "The weather today", "In winter", "A small garden", "Count to"]
CONCURRENCY = (1, 4, 16)


@dataclass
class Sample:
    req_s: float
    tok_s: float
    p50_ms: float


def scheduler_options(name: str, max_wait_ms: int) -> dict[str, object]:
    base: dict[str, object] = {"intra_op_threads": 1, "max_batch_size": 16}
    if name == "off":
        return base | {"scheduler": "generators"}
    if name == "batch":
        return base | {"scheduler": "batch", "max_wait_ms": max_wait_ms}
    return base | {"scheduler": "engine"}


async def drive(runner: OrtRunner, concurrency: int, n: int, max_tokens: int) -> Sample:
    latencies: list[float] = []
    tokens = 0
    per_client = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    async def client(k: int, offset: int) -> None:
        nonlocal tokens
        for i in range(k):
            prompt = PROMPTS[(offset + i) % len(PROMPTS)]
            req = InferenceRequest(model="bench", prompt=prompt, params=SamplingParams(max_tokens=max_tokens))
            t = time.perf_counter()
            async for chunk in runner.generate(req):
                tokens += chunk.token_count
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*(client(k, i) for i, k in enumerate(per_client)))
    wall = time.perf_counter() - start
    return Sample(n / wall, tokens / wall, statistics.median(latencies) * 1000)


NAMES = ("off", "batch", "engine")


@dataclass
class Cell:
    """Medians over rounds for one scheduler at one concurrency; `gain`: tokens/s vs "off" (same round)."""

    req_s: float
    tok_s: float
    p50_ms: float
    gain: float


def run(rounds: int = 3, requests: int = 64, max_tokens: int = 32, max_wait_ms: int = 5) -> dict[tuple[str, int], Cell]:
    """Every scheduler of `NAMES` at every concurrency of `CONCURRENCY`, interleaved in rounds."""
    runners: dict[str, OrtRunner] = {}
    results: dict[tuple[str, int], list[Sample]] = {}
    ratios: dict[tuple[str, int], list[float]] = {}
    try:
        for name in NAMES:
            dep = Deployment(
                name="bench", model="builtin:tiny-llama", runtime="ort", engine=scheduler_options(name, max_wait_ms)
            )
            runners[name] = OrtRunner(dep)
            asyncio.run(runners[name].load())
        for name in NAMES:  # warm-up: the first requests of a fresh runner are slower
            asyncio.run(drive(runners[name], 4, 8, max_tokens))
        for _ in range(rounds):
            for c in CONCURRENCY:
                this_round = {n: asyncio.run(drive(runners[n], c, requests, max_tokens)) for n in NAMES}
                for name, sample in this_round.items():
                    results.setdefault((name, c), []).append(sample)
                    ratios.setdefault((name, c), []).append(sample.tok_s / this_round["off"].tok_s)
    finally:
        for r in runners.values():
            asyncio.run(r.unload())
    return {
        key: Cell(
            statistics.median(x.req_s for x in s),
            statistics.median(x.tok_s for x in s),
            statistics.median(x.p50_ms for x in s),
            statistics.median(ratios[key]),
        )
        for key, s in results.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=64, help="requests per cell (per round)")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=int, default=5)
    args = ap.parse_args()
    cells = run(args.rounds, args.requests, args.max_tokens, args.max_wait_ms)

    print(
        f"\nORT GenAI tiny-llama, greedy, {args.max_tokens} tokens/request, {args.requests} requests/cell, "
        f"medians of {args.rounds} rounds; batch: max_batch_size 16, max_wait_ms {args.max_wait_ms}\n"
    )
    print("| scheduler | concurrency | req/s | tokens/s | p50 latency ms | tokens/s vs off (same round) |")
    print("|---|---:|---:|---:|---:|---:|")
    for c in CONCURRENCY:
        for name in NAMES:
            cell = cells[(name, c)]
            print(f"| {name} | {c} | {cell.req_s:.0f} | {cell.tok_s:.0f} | {cell.p50_ms:.1f} | {cell.gain:.2f}x |")


if __name__ == "__main__":
    main()
