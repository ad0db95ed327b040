"""Benchmark: what atomr's HTTP front adds in front of a zero-delay OpenAI-compatible backend.

Two paths to the same backend (`fake_openai_backend.py`, its own process), measured in the same
run, interleaved in rounds (medians over rounds; this machine is shared and noisy):
- direct: the load generator posts to the backend itself;
- atomr: the load generator posts to a head node's HTTP front, whose deployment is the `openai`
  remote runner pointed at the backend (HTTP front -> gateway -> coordinator -> runner host ->
  backend, and back).
Reported: p50 / p99 latency at concurrency 1 and what atomr adds, requests/s at concurrency 64,
and the total time of a 20-chunk stream with what atomr adds.

    python scripts/bench/http_front.py [--rounds 3] [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_load import LoadResult, run_load  # noqa: E402

from atomr.node_process import NodeProcess  # noqa: E402

CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}
STREAM = {**CHAT, "stream": True}


def start_backend() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "fake_openai_backend.py"), "--port", "0", "--chunks", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.split()[1])


def start_node(backend_port: int, folder: Path) -> tuple[NodeProcess, int]:
    (folder / "key").write_text("sk-bench")
    cfg = folder / "front.yaml"
    engine = {"api_base": f"http://127.0.0.1:{backend_port}/v1", "api_key_file": str(folder / "key")}
    cfg.write_text(
        yaml.safe_dump(
            {
                "http": {"port": 0},
                "node": {"log_level": "warning"},
                "deployments": [
                    {
                        "name": "gpt",
                        "model": "openai/fake",
                        "engine": engine,
                        "limits": {"max_inflight_per_replica": 256, "max_queue": 4096},
                    }
                ],
            }
        )
    )
    node = NodeProcess([], config=cfg)
    match = re.search(r"http front on http://[^:]+:(\d+)", node.output())
    assert match, node.output()
    return node, int(match.group(1))


def measure(port: int, body: dict[str, object], n: int, concurrency: int) -> LoadResult:
    result = asyncio.run(run_load("127.0.0.1", port, "/v1/chat/completions", json.dumps(body).encode(), n, concurrency))
    if result.errors:
        raise SystemExit(f"{result.errors} requests failed against port {port}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    backend, backend_port = start_backend()
    folder = Path(tempfile.mkdtemp(prefix="atomr-bench-"))
    node, front_port = start_node(backend_port, folder)
    ports = {"direct": backend_port, "atomr": front_port}
    rows: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    try:
        for port in ports.values():  # warm-up: connections, the runner's client, caches
            measure(port, CHAT, 100, 4)
            measure(port, STREAM, 20, 1)
        for _ in range(args.rounds):
            unary = {name: measure(port, CHAT, args.requests, 1) for name, port in ports.items()}
            for name, r in unary.items():
                add(f"{name} p50", r.p50_ms)
                add(f"{name} p99", r.percentile(0.99) * 1000)
            add("added p50", unary["atomr"].p50_ms - unary["direct"].p50_ms)
            add("added p99", (unary["atomr"].percentile(0.99) - unary["direct"].percentile(0.99)) * 1000)
            busy = {name: measure(port, CHAT, args.requests * 4, 64) for name, port in ports.items()}
            for name, r in busy.items():
                add(f"{name} req/s", r.req_s)
            streams = {name: measure(port, STREAM, max(20, args.requests // 4), 1) for name, port in ports.items()}
            for name, r in streams.items():
                add(f"{name} stream", r.p50_ms)
            add("added stream", streams["atomr"].p50_ms - streams["direct"].p50_ms)
    finally:
        node.stop()
        backend.terminate()
        backend.wait(10)

    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nHTTP front vs direct, zero-delay OpenAI-compatible backend, medians of {args.rounds} rounds\n")
    print("| measure | direct | atomr front | atomr adds | target |")
    print("|---|---:|---:|---:|---|")
    rows_out = [
        ("p50 latency, c=1 (ms)", "p50", "adds <= 1.5"),
        ("p99 latency, c=1 (ms)", "p99", ""),
        ("20-chunk stream, total (ms)", "stream", "adds <= 4"),
    ]
    for title, key, target in rows_out:
        direct, atomr, added = med["direct " + key], med["atomr " + key], med["added " + key]
        print(f"| {title} | {direct:.2f} | {atomr:.2f} | {added:.2f} | {target} |")
    ratio = med["atomr req/s"] / med["direct req/s"]
    print(f"| requests/s, c=64 | {med['direct req/s']:.0f} | {med['atomr req/s']:.0f} | {ratio:.2f}x | >= 400 |")


if __name__ == "__main__":
    main()
