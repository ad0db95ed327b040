"""Soak test: moderate mixed load on one node for a bounded time, and the memory of every atomr process.

A head node (`atomr.node.process.NodeProcess`, its own processes) serves two deployments: ``tiny``
(the embedded tiny model on ONNX Runtime GenAI) and ``gpt`` (the `openai` remote runner pointed at
`scripts/bench/fake_openai_backend.py`, which answers after `--backend-delay-s`). Eight load threads,
one per combination of {HTTP front, `atomr.Client`} x {unary, streaming} x {tiny, gpt}, send
`--rate` requests per second in all (each thread paced at its share, one request at a time) for
`--minutes`. Every answer is checked: HTTP status 200 and, for streams, a final ``data: [DONE]``
with no error event; a `Client` call that raises, or ends without a finish reason, is an error.

Every `--sample-s` seconds the resident set size of every atomr process (the node's process tree
and its actor system's, `scripts/bench/rss.py`) is sampled and a line printed. Growth: the
*baseline* is the mean of the samples taken during the window that starts when the warm-up ends
(`--warmup-min`, default 3 minutes, or a fifth of a shorter run), the *end* is the mean of the
samples in the last window of the run, both windows `min(60 s, a quarter of the time after the
warm-up)` long; growth = end / baseline - 1, per process (processes present in both windows) and
for the sum of all processes. The script exits 1 when the total grew by 5 % or more, any request
failed, or any process outlived the node's stop (those are ended by PID and listed).

    python scripts/soak.py [--minutes 30] [--sample-s 10] [--rate 16] [--warmup-min 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "bench"))

from http_front import start_backend, stop_backend  # noqa: E402
from http_load import Connection  # noqa: E402
from rss import MIB, label, node_processes, rss_of  # noqa: E402

from atomr.client import Client  # noqa: E402
from atomr.cluster.system import end_processes  # noqa: E402
from atomr.node.process import NodeProcess  # noqa: E402

MODELS = ("tiny", "gpt")
MESSAGES = [{"role": "user", "content": "Tell me about the actor model"}]
GROWTH_LIMIT = 0.05


@dataclass
class Kind:
    """Counts of one load thread: what it sends and how it went."""

    name: str
    sent: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    first_error: str = ""

    def failed(self, why: str) -> None:
        self.errors += 1
        if not self.first_error:
            self.first_error = why[:300]


def write_config(folder: Path, backend_port: int) -> Path:
    (folder / "key").write_text("sk-soak")
    cfg = folder / "soak.yaml"
    engine = {"api_base": f"http://127.0.0.1:{backend_port}/v1", "api_key_file": str(folder / "key")}
    limits = {"max_inflight_per_replica": 64, "max_queue": 1024}
    cfg.write_text(
        yaml.safe_dump(
            {
                "http": {"port": 0},
                "node": {"log_level": "warning"},
                "deployments": [
                    {
                        "name": "tiny",
                        "model": "builtin:tiny-llama",
                        "limits": limits,
                        "engine": {"intra_op_threads": 1, "max_batch_size": 8},
                    },
                    {"name": "gpt", "model": "openai/fake", "engine": engine, "limits": limits},
                ],
            }
        )
    )
    return cfg


@dataclass(frozen=True)
class Pace:
    interval: float  # seconds between one thread's requests
    stop_at: float  # time.monotonic() at which the load ends
    stop: threading.Event  # set to end it sooner


def paced(kind: Kind, pace: Pace, one: Callable[[], None]) -> None:
    """Calls `one` every `pace.interval` seconds (back to back when it is slower) until the load ends."""
    next_at = time.monotonic()
    while not pace.stop.is_set() and time.monotonic() < pace.stop_at:
        t0 = time.perf_counter()
        kind.sent += 1
        try:
            one()
        except Exception as exc:  # noqa: BLE001 - any failure of a request is counted and reported
            kind.failed(f"{type(exc).__name__}: {exc}")
        else:
            kind.latencies.append(time.perf_counter() - t0)
        next_at = max(next_at + pace.interval, time.monotonic())
        pace.stop.wait(max(0.0, next_at - time.monotonic()))


def http_worker(kind: Kind, pace: Pace, port: int, model: str, stream: bool, max_tokens: int) -> None:
    """One request at a time to the HTTP front, on one keep-alive connection (`http_load.Connection`)."""
    body = json.dumps({"model": model, "messages": MESSAGES, "max_tokens": max_tokens, "stream": stream}).encode()
    loop = asyncio.new_event_loop()
    conn = Connection("127.0.0.1", port)

    def one() -> None:
        try:
            status, data = loop.run_until_complete(conn.post("/v1/chat/completions", body))
        except BaseException:
            loop.run_until_complete(conn.close())  # a fresh connection for the next request
            raise
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {data[:200]!r}")
        if stream and (not data.rstrip().endswith(b"data: [DONE]") or b'"error"' in data):
            raise RuntimeError(f"stream did not end well: {data[-200:]!r}")
        if not stream and not json.loads(data)["choices"][0]["message"]["content"]:
            raise RuntimeError(f"empty answer: {data[:200]!r}")

    try:
        paced(kind, pace, one)
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def client_worker(kind: Kind, pace: Pace, client: Client, model: str, stream: bool, max_tokens: int) -> None:
    """One request at a time through the Python client (one `Client`, shared by the client threads)."""

    def one() -> None:
        if stream:
            chunks = list(client.stream(model, MESSAGES, max_tokens=max_tokens))
            if not chunks or chunks[-1].finish_reason is None:
                raise RuntimeError(f"stream ended without a finish reason ({len(chunks)} chunks)")
        else:
            result = client.generate(model, MESSAGES, max_tokens=max_tokens)
            if result.finish_reason is None or not result.text:
                raise RuntimeError(f"incomplete answer: {result!r}"[:300])

    paced(kind, pace, one)


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def window_mean(samples: list[tuple[float, dict[int, int]]], start: float, end: float) -> dict[int, float]:
    """Mean RSS per PID (and under key -1, of the total) over the samples taken in [start, end]."""
    chosen = [s for t, s in samples if start <= t <= end]
    if not chosen:  # sampled more sparsely than the window: the nearest sample
        chosen = [min(samples, key=lambda ts: abs(ts[0] - (start + end) / 2))[1]]
    out: dict[int, float] = {-1: statistics.fmean(sum(s.values()) for s in chosen)}
    for pid in set().union(*chosen):
        values = [s[pid] for s in chosen if pid in s]
        if len(values) == len(chosen):
            out[pid] = statistics.fmean(values)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample-s", type=float, default=10.0)
    ap.add_argument("--warmup-min", type=float, default=None, help="default: 3, or a fifth of a shorter run")
    ap.add_argument("--rate", type=float, default=16.0, help="requests per second, all eight load threads together")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--backend-delay-s", type=float, default=0.05, help="the fake remote API's time per answer")
    args = ap.parse_args()
    run_s = args.minutes * 60
    warmup_s = (args.warmup_min if args.warmup_min is not None else min(3.0, args.minutes / 5)) * 60
    if not 0 <= warmup_s < run_s:
        ap.error("--warmup-min must be shorter than --minutes")
    window_s = min(60.0, (run_s - warmup_s) / 4)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    backend, backend_port = start_backend(delay_s=args.backend_delay_s)
    folder = Path(tempfile.mkdtemp(prefix="atomr-soak-"))
    node: NodeProcess | None = None
    client: Client | None = None
    samples: list[tuple[float, dict[int, int]]] = []
    seen: dict[int, psutil.Process] = {}
    labels: dict[int, str] = {}
    kinds: list[Kind] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        node = NodeProcess([], config=write_config(folder, backend_port))
        match = re.search(r"http front on http://[^:]+:(\d+)", node.output())
        assert match, node.output()
        port = int(match.group(1))
        client = Client(node.address)
        start = time.monotonic()
        pace = Pace(interval=8 / args.rate, stop_at=start + run_s, stop=stop)
        for via in ("http", "client"):
            for model in MODELS:
                for stream in (False, True):
                    kind = Kind(f"{via} {model} {'stream' if stream else 'unary'}")
                    kinds.append(kind)
                    if via == "http":
                        target: Callable[..., None] = http_worker
                        a: tuple[object, ...] = (kind, pace, port, model, stream, args.max_tokens)
                    else:
                        target, a = client_worker, (kind, pace, client, model, stream, args.max_tokens)
                    threads.append(threading.Thread(target=target, args=a, name=kind.name, daemon=True))
        for t in threads:
            t.start()
        print(
            f"soak: {args.minutes:g} min, {args.rate:g} requests/s over {len(kinds)} kinds, RSS every "
            f"{args.sample_s:g} s; baseline: mean of {warmup_s / 60:g}-{(warmup_s + window_s) / 60:g} min, end: mean "
            f"of the last {window_s:g} s\n",
            flush=True,
        )
        print("| elapsed | requests | errors | atomr processes | total RSS MiB | largest process MiB |")
        print("|---:|---:|---:|---:|---:|---:|", flush=True)
        next_sample = start
        while True:
            now = time.monotonic()
            procs = node_processes(node)
            for p in procs:
                if p.pid not in seen:
                    seen[p.pid], labels[p.pid] = p, label(p, node)
            rss = rss_of(procs)
            samples.append((now - start, rss))
            sent, errors = sum(k.sent for k in kinds), sum(k.errors for k in kinds)
            elapsed = int(now - start)
            print(
                f"| {elapsed // 60}:{elapsed % 60:02d} | {sent} | {errors} | {len(rss)} "
                f"| {sum(rss.values()) / MIB:.1f} | {max(rss.values(), default=0) / MIB:.1f} |",
                flush=True,
            )
            if now - start >= run_s:
                break
            next_sample = max(next_sample + args.sample_s, time.monotonic())
            time.sleep(max(0.0, min(next_sample, start + run_s) - time.monotonic()))
    except KeyboardInterrupt:
        print("interrupted: stopping", flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        if client is not None:
            client.close()
        if node is not None:
            node.stop()
        stop_backend(backend)
    left = end_processes([p for p in seen.values() if alive(p)])

    print("\n| load | requests | errors | p50 latency ms | first error |")
    print("|---|---:|---:|---:|---|")
    for k in kinds:
        p50 = f"{statistics.median(k.latencies) * 1000:.1f}" if k.latencies else "-"
        print(f"| {k.name} | {k.sent} | {k.errors} | {p50} | {k.first_error or '-'} |")
    errors = sum(k.errors for k in kinds)
    if not samples or samples[-1][0] < warmup_s + window_s:
        print("\nthe run ended before a baseline could be taken: no growth figure")
        return 1
    end_t = samples[-1][0]
    base = window_mean(samples, warmup_s, warmup_s + window_s)
    last = window_mean(samples, end_t - window_s, end_t)
    print(
        f"\nRSS growth: baseline = mean over {warmup_s:.0f}-{warmup_s + window_s:.0f} s, "
        f"end = mean over {end_t - window_s:.0f}-{end_t:.0f} s\n"
    )
    print("| process | baseline MiB | end MiB | growth |")
    print("|---|---:|---:|---:|")
    for pid in sorted(set(base) & set(last) - {-1}):
        growth_pid = f"{last[pid] / base[pid] - 1:+.2%}" if base[pid] else "-"
        print(f"| {pid} {labels.get(pid, '')} | {base[pid] / MIB:.1f} | {last[pid] / MIB:.1f} | {growth_pid} |")
    for pid in sorted((set(base) ^ set(last)) - {-1}):
        b, e = base.get(pid, 0) / MIB, last.get(pid, 0) / MIB
        print(f"| {pid} {labels.get(pid, '')} (in one window only) | {b:.1f} | {e:.1f} | - |")
    growth = last[-1] / base[-1] - 1
    print(f"| **total** | {base[-1] / MIB:.1f} | {last[-1] / MIB:.1f} | {growth:+.2%} |")
    ok = growth < GROWTH_LIMIT and errors == 0 and not left
    print(
        f"\ntotal RSS growth {growth:+.2%} (limit {GROWTH_LIMIT:.0%}), {errors} request errors, "
        f"processes left behind: {left or 'none'} -> {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
