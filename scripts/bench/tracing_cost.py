"""Benchmark: what OpenTelemetry tracing costs the HTTP front.

Two head nodes with the same front and deployment "gpt" (the `openai` runner on its lean
transport, served in the front's process) in front of the zero-delay fake backend
(`fake_openai_backend.py`): one with tracing off (no ``tracing:`` section, the default), one with
tracing on, every request sampled and exported over OTLP/HTTP to a local receiver that accepts
and discards (this script with ``--sink``, its own process). Measured alike and interleaved in
rounds, the order of the two alternating (medians over rounds; this machine is shared and
noisy): p50 / p99 at concurrency 1, the per-round difference on - off, requests/s at 64. With
``--base-tree PATH`` (a checkout of atomr from before tracing existed), a third node from that
tree is measured the same way: off against the code without tracing at all.

Off, a request runs a handful of checks (a ContextVar read at the front, None checks where the
runner and the log line are): `off_hooks_us` times them in this process, since no end-to-end
measurement on these machines resolves a fraction of a microsecond.

    python scripts/bench/tracing_cost.py [--rounds 5] [--requests 400] [--base-tree /tmp/atomr-before]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import timeit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.request import urlopen

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_front import CHAT, measure, start_backend, start_node, start_script, stop_backend  # noqa: E402

from atomr.node.process import NodeProcess  # noqa: E402

TARGET_ADDED_MS = 0.2  # tracing on may add at most this to the front's p50


def sink(port: int) -> None:
    """An OTLP/HTTP receiver that accepts every export and discards it; GET tells how many came."""
    counts = {"exports": 0, "bytes": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            self.rfile.read(n)
            counts["exports"] += 1
            counts["bytes"] += n
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            body = json.dumps(counts).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"port {server.server_address[1]}", flush=True)
    server.serve_forever()


def sink_counts(port: int) -> dict[str, int]:
    with urlopen(f"http://127.0.0.1:{port}/", timeout=10) as r:
        counts: dict[str, int] = json.loads(r.read())
    return counts


def off_hooks_us(n: int = 200_000) -> float:
    """Microseconds per request of what tracing off runs on the front's in-process path: the
    front's span lookup, the session's and the log line's None checks (measured in this process)."""
    from atomr.observability import tracing

    assert not tracing.enabled(), "measure the off state with $ATOMR_TRACING unset"
    headers = {"content-type": "application/json"}
    trace: str | None = None
    empty: dict[str, str] = {}

    def hooks() -> None:
        span = tracing.http_span(headers, "/v1/chat/completions")
        if span is not None:
            raise AssertionError
        if trace is not None:
            raise AssertionError
        dict(**(empty if trace is None else {"trace_id": trace}))

    def nothing() -> None:
        if trace is not None:
            raise AssertionError

    best = min(timeit.repeat(hooks, number=n, repeat=5)) - min(timeit.repeat(nothing, number=n, repeat=5))
    return max(best, 0.0) / n * 1e6


def run(rounds: int = 5, requests: int = 400, base_tree: Path | None = None) -> dict[str, float]:
    """Tracing off vs on (vs the code before tracing, with `base_tree`): medians over rounds.

    Keys: "<name> p50", "<name> p99", "<name> added p50" (over the backend, ms, c=1),
    "<name> req/s" (c=64) for "direct", "off", "on" (and "base"); "on minus off p50" and
    "off minus base p50" (medians of per-round differences, ms), "on/off p50" (ratio),
    "off hooks us", "exports" (what the receiver got from the traced node).
    """
    backend, backend_port = start_backend()
    sink_proc, sink_port = start_script("tracing_cost.py", "--sink")
    folder = Path(tempfile.mkdtemp(prefix="atomr-bench-tracing-"))
    nodes: list[NodeProcess] = []
    try:
        off, off_port = start_node(backend_port, folder / "off")
        nodes.append(off)
        traced: dict[str, object] = {
            "tracing": {"otlp_endpoint": f"http://127.0.0.1:{sink_port}/v1/traces", "sample_ratio": 1.0}
        }
        on, on_port = start_node(backend_port, folder / "on", config=traced)
        nodes.append(on)
        ports = {"off": off_port, "on": on_port}
        if base_tree is not None:
            env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ATOMR_TRACING")}
            base, ports["base"] = start_node(backend_port, folder / "base", cwd=base_tree, env=env)
            nodes.append(base)
        exports_before = sink_counts(sink_port)["exports"]
        rows: dict[str, list[float]] = {}

        def add(key: str, value: float) -> None:
            rows.setdefault(key, []).append(value)

        for port in (backend_port, *ports.values()):  # warm-up: connections, the runner's client, the exporter
            measure(port, CHAT, 100, 4)
        names = list(ports)
        for r in range(rounds):
            order = names if r % 2 == 0 else names[::-1]
            direct = measure(backend_port, CHAT, requests, 1)
            add("direct p50", direct.p50_ms)
            unary = {name: measure(ports[name], CHAT, requests, 1) for name in order}
            for name, res in unary.items():
                add(f"{name} p50", res.p50_ms)
                add(f"{name} p99", res.percentile(0.99) * 1000)
                add(f"{name} added p50", res.p50_ms - direct.p50_ms)
            add("on minus off p50", unary["on"].p50_ms - unary["off"].p50_ms)
            add("on/off p50", unary["on"].p50_ms / unary["off"].p50_ms)
            if "base" in unary:
                add("off minus base p50", unary["off"].p50_ms - unary["base"].p50_ms)
            for name in order:
                add(f"{name} req/s", measure(ports[name], CHAT, requests * 4, 64).req_s)
        med = {k: statistics.median(v) for k, v in rows.items()}
        med["exports"] = float(sink_counts(sink_port)["exports"] - exports_before)
        if med["exports"] <= 0:
            raise SystemExit("the traced node exported nothing: tracing was not on")
        med["off hooks us"] = off_hooks_us()
        return med
    finally:
        for node in nodes:
            node.stop()
        stop_backend(sink_proc)
        stop_backend(backend)


def print_table(med: dict[str, float], rounds: int) -> None:
    names = [("off", "tracing off"), ("on", "tracing on")]
    names += [("base", "before tracing")] if "base p50" in med else []

    def cells(key: str, fmt: str) -> str:
        return " | ".join(format(med[f"{n} {key}"], fmt) for n, _ in names)

    print(f"\nHTTP front, tracing off vs on (every request sampled, OTLP/HTTP to a local sink), {rounds} rounds\n")
    print("| measure | direct | " + " | ".join(title for _, title in names) + " |")
    print("|---|---:|" + "---:|" * len(names))
    print(f"| p50 at c=1 (ms) | {med['direct p50']:.3f} | {cells('p50', '.3f')} |")
    print(f"| added p50 over the backend (ms) | - | {cells('added p50', '.3f')} |")
    print(f"| p99 at c=1 (ms) | - | {cells('p99', '.3f')} |")
    print(f"| requests/s at c=64 | - | {cells('req/s', '.0f')} |")
    added, ratio = med["on minus off p50"], med["on/off p50"]
    print(f"\non - off, p50: {added:+.3f} ms (ratio {ratio:.3f}x; target <= +{TARGET_ADDED_MS} ms)")
    print(f"requests/s on/off {med['on req/s'] / med['off req/s']:.2f}x; {med['exports']:.0f} exports received")
    if "off minus base p50" in med:
        print(f"off - before tracing, p50: {med['off minus base p50']:+.3f} ms")
    print(f"off, the per-request hooks in-process: {med['off hooks us']:.3f} us")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--base-tree", type=Path, default=None, help="a checkout of atomr without tracing, measured too")
    ap.add_argument("--sink", action="store_true", help="(internal) run the discarding OTLP receiver")
    ap.add_argument("--port", type=int, default=0, help="(with --sink) its port")
    args = ap.parse_args()
    if args.sink:
        sink(args.port)
        return
    print_table(run(args.rounds, args.requests, args.base_tree), args.rounds)


if __name__ == "__main__":
    main()
