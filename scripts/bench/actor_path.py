"""Benchmark: what the actor path adds over calling the runner in-process.

Path measured: client -> gateway -> coordinator -> runner host -> client, against a node in its
own processes serving the embedded tiny model on ONNX Runtime GenAI; baseline: the same runner
class loaded in this process and called directly. Both run in the same invocation, interleaved
in rounds, and the table reports medians over rounds (this machine is shared and noisy).

    python scripts/bench/actor_path.py [--requests 200] [--rounds 3] [--max-tokens 4]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

from atomr.client import Client
from atomr.config import deployment_from_dict
from atomr.core.types import InferenceRequest, SamplingParams
from atomr.node.process import NodeProcess

PROMPT = "The actor"
DEPLOYMENT = {
    "name": "bench",
    "model": "builtin:tiny-llama",
    "replicas": 1,
    "limits": {"max_inflight_per_replica": 64, "max_queue": 4096},
    "engine": {"intra_op_threads": 1, "max_batch_size": 32},
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_load(call: Callable[[], object], n: int, concurrency: int) -> tuple[list[float], float]:
    """Latencies of n calls made by `concurrency` threads, and the wall time."""
    latencies: list[float] = []
    lock = threading.Lock()
    per_worker = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    def worker(k: int) -> None:
        for _ in range(k):
            t = time.perf_counter()
            call()
            dt = time.perf_counter() - t
            with lock:
                latencies.append(dt)

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, per_worker))
    return latencies, time.perf_counter() - start


class InProcess:
    """The runner called directly on an asyncio loop in a background thread."""

    def __init__(self, max_tokens: int) -> None:
        from atomr.runners.local.ort.runner import OrtRunner

        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.runner = OrtRunner(deployment_from_dict(DEPLOYMENT))
        asyncio.run_coroutine_threadsafe(self.runner.load(), self.loop).result()
        self.params = SamplingParams(max_tokens=max_tokens)

    async def _one(self) -> str:
        req = InferenceRequest(model="bench", prompt=PROMPT, params=self.params)
        return "".join([c.text async for c in self.runner.generate(req)])

    def call(self) -> str:
        return asyncio.run_coroutine_threadsafe(self._one(), self.loop).result()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.unload(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


PATHS = ("in-process runner", "actor path")
CONCURRENCY = (1, 32)


def run(requests: int = 200, rounds: int = 3, max_tokens: int = 4) -> dict[tuple[str, int], tuple[float, float, float]]:
    """Medians over rounds of (p50 s, p99 s, requests/s) per (path, concurrency); paths are `PATHS`."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = Path(tempfile.mkdtemp()) / "bench.yaml"
    cfg.write_text(yaml.safe_dump({"deployments": [DEPLOYMENT]}))
    direct = InProcess(max_tokens)
    with NodeProcess(config=cfg) as node, Client(node.address) as client:

        def via_actors() -> str:
            return client.generate("bench", prompt=PROMPT, max_tokens=max_tokens).text

        assert via_actors() == direct.call(), "the two paths disagree"
        rows: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
        for _ in range(rounds):
            for conc in CONCURRENCY:
                for name, call in zip(PATHS, (direct.call, via_actors), strict=True):
                    run_load(call, min(20, requests), conc)  # warm-up
                    lat, wall = run_load(call, requests, conc)
                    rows.setdefault((name, conc), []).append(
                        (statistics.median(lat), percentile(lat, 0.99), requests / wall)
                    )
    direct.close()
    out: dict[tuple[str, int], tuple[float, float, float]] = {}
    for key, samples in rows.items():
        p50s, p99s, rates = zip(*samples, strict=True)
        out[key] = (statistics.median(p50s), statistics.median(p99s), statistics.median(rates))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=4)
    args = ap.parse_args()
    med = run(args.requests, args.rounds, args.max_tokens)

    print(
        f"\nactor path vs in-process runner; tiny model, max_tokens={args.max_tokens}, "
        f"{args.requests} requests x {args.rounds} rounds (medians over rounds)\n"
    )
    print(f"{'path':20} {'conc':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'added p50 ms':>13} {'req/s ratio':>11}")
    for conc in CONCURRENCY:
        base = med[(PATHS[0], conc)]
        for name in PATHS:
            p50, p99, rps = med[(name, conc)]
            print(
                f"{name:20} {conc:>4} {p50 * 1e3:>8.2f} {p99 * 1e3:>8.2f} {rps:>8.0f} "
                f"{(p50 - base[0]) * 1e3:>13.2f} {rps / base[2]:>11.2f}"
            )


if __name__ == "__main__":
    main()
