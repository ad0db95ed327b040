"""Benchmark: thousands of requests in flight at once through the HTTP front, against a slow backend.

The fake backend (`fake_openai_backend.py --delay-s 1`) waits a second before each answer; a head
node's HTTP front serves deployment "gpt" (the `openai` runner pointed at it) with limits that let
every request be in flight at once (`replicas` x `max_inflight_per_replica` >= n, each replica its
own SDK client and connection pool). The load generator (`http_load.py`) opens n connections and
sends one request on each, all at once. Reported: errors (anything but a 200), wall time, p50 and
max latency, the wall time of the same load posted to the backend itself (the baseline, same run),
and the RSS of every atomr process (the node's own process tree and its actor system, `rss.py`)
summed: before the load, its peak while sampled every 0.1 s during the load, and after. With
``--workers N`` the front is N processes (``http.workers``).

    python scripts/bench/inflight.py [--requests 2000] [--delay-s 1] [--replicas 2] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_front import CHAT, start_backend, start_node, stop_backend  # noqa: E402
from http_load import run_load  # noqa: E402
from rss import MIB, RssSampler  # noqa: E402


@dataclass
class InflightResult:
    requests: int
    errors: int
    wall_s: float
    p50_s: float
    max_s: float
    processes: int  # atomr processes at the peak's last sample
    rss_before: int  # bytes, all atomr processes summed
    rss_peak: int
    rss_after: int
    direct_wall_s: float  # the same load posted to the backend itself, in the same run


def raise_fd_limit(needed: int) -> None:
    """Raise this process's soft limit on open files (children inherit it) to at least `needed`."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def run(requests: int = 2000, delay_s: float = 1.0, replicas: int = 2, workers: int = 1) -> InflightResult:
    """`requests` concurrent requests, one per connection, through the atomr front (`workers`
    processes) to a slow backend."""
    raise_fd_limit(2 * requests + 1024)  # before starting anything: the backend and the node inherit it
    per_replica = -(-requests // replicas)
    limits: dict[str, object] = {
        "max_inflight_per_replica": per_replica,
        "max_queue": requests,
        "request_timeout_s": 120.0,
    }
    backend, backend_port = start_backend(delay_s=delay_s)
    node = None
    try:
        node, front_port = start_node(
            backend_port,
            Path(tempfile.mkdtemp(prefix="atomr-bench-")),
            limits,
            replicas,
            {"timeout_s": 60.0},
            workers=workers,
            # every request on its own connection, all open at once: room for them past the cap
            config={"http": {"port": 0, "workers": workers, "max_connections": requests + 1024}},
        )
        body = json.dumps(CHAT).encode()
        direct = asyncio.run(run_load("127.0.0.1", backend_port, "/v1/chat/completions", body, requests, requests))
        warm = asyncio.run(run_load("127.0.0.1", front_port, "/v1/chat/completions", body, 2 * replicas, 2 * replicas))
        if warm.errors:
            raise SystemExit(f"warm-up failed: {warm.errors} errors\n{node.output()[-2000:]}")
        sampler = RssSampler(node, interval_s=0.1)
        before = sampler.sample()
        sampler.start()
        result = asyncio.run(run_load("127.0.0.1", front_port, "/v1/chat/completions", body, requests, requests))
        sampler.stop()
        after = sampler.sample()
        return InflightResult(
            requests=requests,
            errors=result.errors,
            wall_s=result.wall_s,
            p50_s=result.p50_ms / 1000,
            max_s=max(result.latencies, default=float("nan")),
            processes=len(sampler.last),
            rss_before=before,
            rss_peak=sampler.peak,
            rss_after=after,
            direct_wall_s=direct.wall_s,
        )
    finally:
        if node is not None:
            node.stop()
        stop_backend(backend)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--delay-s", type=float, default=1.0)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--workers", type=int, default=1, help="HTTP front processes (http.workers)")
    args = ap.parse_args()
    r = run(args.requests, args.delay_s, args.replicas, args.workers)
    print(f"\n{r.requests} requests in flight at once, backend delay {args.delay_s:g} s, {args.replicas} replicas\n")
    print(
        "| errors | wall s | backend alone, wall s | p50 s | max s | atomr processes "
        "| RSS before MiB | RSS peak MiB | RSS after MiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {r.errors} | {r.wall_s:.2f} | {r.direct_wall_s:.2f} | {r.p50_s:.2f} | {r.max_s:.2f} | {r.processes} "
        f"| {r.rss_before / MIB:.0f} | {r.rss_peak / MIB:.0f} | {r.rss_after / MIB:.0f} |"
    )


if __name__ == "__main__":
    main()
