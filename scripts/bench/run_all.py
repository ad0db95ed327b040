"""The whole benchmark set in one go: one markdown table, with ratios against baselines from the same run.

Runs, one after the other, each benchmark script's `run` function and writes one table (to stdout
and to `--out`) with, per row, the baseline measured in this run, atomr's number, LiteLLM's proxy's
where it applies, the ratio, the target and whether it was met:
- actor path (`actor_path.py`): p50 at concurrency 1 and requests/s at 32, against the same ORT
  runner called in this process;
- HTTP front (`http_front.py`): the atomr front, LiteLLM's proxy (`litellm_proxy.py`, in its own
  venv, made when missing) and the zero-delay fake backend called directly, measured alike and
  interleaved in rounds: added p50 / p99 at c=1, requests/s at c=64, a 20-chunk stream's added time
  (the streaming overhead);
- batching gain (`batching.py`): tokens/s at concurrency 16 with dynamic batching vs without;
- 2,000 requests in flight (`inflight.py`) against a backend that waits 1 s: errors, wall time
  with a front of one process and of two (``http.workers: 2``), each against the same load posted
  to the backend alone in the same run, RSS of all atomr processes summed (peak);
- cascade (`cascade.py`): cost against sending everything to the large model, and agreement;
- tracing (`tracing_cost.py`): the same front with OpenTelemetry tracing off and on (every
  request sampled, exported to a local receiver that discards), interleaved: the p50 that tracing
  on adds, and what tracing off runs per request;
- connection limits (`connection_guard.py`): uvicorn's httptools protocol plain and with the
  front's limits, on a trivial app, interleaved: what the limits add per request.
Targets: the HTTP front adds <= 1.0 ms p50 and <= 3 ms p99 at c=1, within 1.3x of a bare relay
proxy's added p50 (the floor), >= 1,000 requests/s at c=64, <= 1.5 ms to a 20-chunk stream; the
actor path adds <= 1.5 ms p50 and keeps >= 0.8x the in-process requests/s at c=32; 2,000 in
flight with zero errors, <= 1.8 s of wall time and <= 1 GiB RSS in total; tracing on adds <= 0.2 ms
p50 to the front, and off its per-request checks cost < 1% of the front's added p50. A benchmark
that fails is reported in its rows and makes the exit status 1 (so does a missed target with `--strict`).

    python scripts/bench/run_all.py [--quick] [--out bench-results.md] [--litellm-venv PATH | --no-litellm]
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import actor_path  # noqa: E402
import batching  # noqa: E402
import cascade  # noqa: E402
import connection_guard  # noqa: E402
import http_front  # noqa: E402
import inflight  # noqa: E402
import tracing_cost  # noqa: E402
from litellm_proxy import DEFAULT_VENV, venv_python  # noqa: E402
from rss import MIB  # noqa: E402

GIB = 1 << 30
COLUMNS = ("benchmark", "measure", "baseline (same run)", "atomr", "LiteLLM proxy", "ratio", "target", "met")


@dataclass
class Row:
    benchmark: str
    measure: str
    baseline: str
    atomr: str
    litellm: str = "-"
    ratio: str = "-"
    target: str = "-"
    met: str = "-"

    def cells(self) -> tuple[str, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class Sizes:
    actor_requests: int
    actor_rounds: int
    front_rounds: int
    front_requests: int
    batch_rounds: int
    batch_requests: int
    batch_max_tokens: int
    inflight: int
    cascade_delay_ms: float
    cascade_random_prompts: int
    tracing_rounds: int
    tracing_requests: int
    guard_rounds: int
    guard_requests: int


FULL = Sizes(200, 3, 3, 400, 3, 64, 32, 2000, 150.0, 8, 5, 400, 5, 2000)
QUICK = Sizes(20, 1, 1, 40, 1, 8, 8, 200, 10.0, 2, 1, 40, 1, 200)


def yes_no(ok: bool) -> str:
    return "yes" if ok else "**no**"


def failed(benchmark: str, measures: list[str], exc: BaseException) -> list[Row]:
    reason = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''}"
    return [Row(benchmark, m, "-", reason, met="**no**") for m in measures]


def actor_rows(s: Sizes) -> list[Row]:
    med = actor_path.run(s.actor_requests, s.actor_rounds)
    base1, actor1 = med[("in-process runner", 1)], med[("actor path", 1)]
    base32, actor32 = med[("in-process runner", 32)], med[("actor path", 32)]
    return [
        Row(
            "actor path (tiny ORT model)",
            "p50 latency at c=1, ms",
            f"in-process runner {base1[0] * 1e3:.2f}",
            f"{actor1[0] * 1e3:.2f}",
            ratio=f"+{(actor1[0] - base1[0]) * 1e3:.2f} ms",
            target="<= +1.5 ms",
            met=yes_no(actor1[0] - base1[0] <= 1.5e-3),
        ),
        Row(
            "actor path (tiny ORT model)",
            "requests/s at c=32",
            f"in-process runner {base32[2]:.0f}",
            f"{actor32[2]:.0f}",
            ratio=f"{actor32[2] / base32[2]:.2f}x",
            target=">= 0.8x",
            met=yes_no(actor32[2] >= 0.8 * base32[2]),
        ),
    ]


def front_rows(s: Sizes, litellm_venv: Path | None) -> list[Row]:
    med = http_front.run(s.front_rounds, s.front_requests, litellm_venv)
    have = "litellm p50" in med
    bench = "HTTP front (zero-delay fake backend)"
    direct = f"direct {med['direct p50']:.2f} ms"

    def lit(key: str, fmt: str) -> str:
        return format(med[f"litellm {key}"], fmt) if have else "not measured"

    def vs_litellm(key: str) -> str:
        other = med.get(f"litellm {key}", math.nan)
        return f"{med[f'atomr {key}'] / other:.2f}x LiteLLM's added" if have and other > 0 else "-"

    added_p50, floor = med["atomr added p50"], med["bare added p50"]
    rows = [
        Row(
            bench,
            "added p50 latency at c=1, ms (over the backend)",
            direct,
            f"+{added_p50:.2f}",
            f"+{lit('added p50', '.2f')}" if have else "not measured",
            vs_litellm("added p50"),
            "<= 1.0 ms",
            yes_no(added_p50 <= 1.0),
        ),
        Row(
            bench,
            "the floor: a bare Python relay proxy on the same stack (no atomr), added p50, ms",
            direct,
            f"+{floor:.2f}",
            "-",
            f"atomr {added_p50 / floor:.2f}x the floor" if floor > 0 else "-",
            "atomr <= 1.3x the floor",
            yes_no(floor > 0 and added_p50 <= 1.3 * floor),
        ),
        Row(
            bench,
            "atomr on the openai SDK transport (engine.transport: sdk), added p50, ms",
            direct,
            f"+{med['atomr-sdk added p50']:.2f}",
            "-",
            f"lean saves {med['atomr-sdk added p50'] - added_p50:.2f} ms",
        ),
        Row(
            bench,
            "a bare proxy making the SDK call (no atomr), added p50, ms",
            direct,
            f"+{med['bare-sdk added p50']:.2f}",
            "-",
            f"the SDK call alone in a loop: +{med['sdk added p50']:.2f}",
        ),
        Row(
            bench,
            "added p99 latency at c=1, ms",
            f"direct {med['direct p99']:.2f} ms",
            f"+{med['atomr added p99']:.2f} (SDK transport +{med['atomr-sdk added p99']:.2f})",
            f"+{lit('added p99', '.2f')}" if have else "not measured",
            vs_litellm("added p99"),
            "<= 3 ms",
            yes_no(med["atomr added p99"] <= 3.0),
        ),
    ]
    rps = med["atomr req/s"]
    lit_rps = med.get("litellm req/s", math.nan)
    rows.append(
        Row(
            bench,
            "requests/s at c=64",
            f"direct {med['direct req/s']:.0f}",
            f"{rps:.0f} (SDK transport {med['atomr-sdk req/s']:.0f}; floor {med['bare req/s']:.0f})",
            lit("req/s", ".0f"),
            f"{rps / lit_rps:.2f}x LiteLLM's" if have else f"{rps / med['direct req/s']:.2f}x direct",
            ">= 1000",
            yes_no(rps >= 1000),
        )
    )
    stream = med["atomr added stream"]
    others = f"SDK transport +{med['atomr-sdk added stream']:.2f}; floor +{med['bare added stream']:.2f}"
    rows.append(
        Row(
            "streaming (same front)",
            "20-chunk stream at c=1, added ms (whole stream)",
            f"direct {med['direct stream']:.2f} ms",
            f"+{stream:.2f} ({others})",
            f"+{lit('added stream', '.2f')}" if have else "not measured",
            vs_litellm("added stream"),
            "<= 1.5 ms",
            yes_no(stream <= 1.5),
        )
    )
    return rows


def batching_rows(s: Sizes) -> list[Row]:
    cells = batching.run(s.batch_rounds, s.batch_requests, s.batch_max_tokens)
    c = max(batching.CONCURRENCY)
    off, batch, engine = cells[("off", c)], cells[("batch", c)], cells[("engine", c)]
    return [
        Row(
            "batching (tiny ORT model)",
            f"tokens/s at c={c}, dynamic batching",
            f"batching off {off.tok_s:.0f}",
            f"{batch.tok_s:.0f}",
            ratio=f"{batch.gain:.2f}x (og.Engine: {engine.gain:.2f}x)",
        )
    ]


def inflight_rows(s: Sizes) -> list[Row]:
    one = inflight.run(s.inflight, workers=1)
    two = inflight.run(s.inflight, workers=2)
    bench = f"{s.inflight:,} in flight (1 s backend)"

    def wall(r: inflight.InflightResult, label: str) -> Row:
        return Row(
            bench,
            f"wall time, s, {label}",
            f"backend alone {r.direct_wall_s:.2f} (delay 1.00)",
            f"{r.wall_s:.2f}",
            ratio=f"{r.wall_s / r.direct_wall_s:.2f}x the backend alone (p50 {r.p50_s:.2f} s, max {r.max_s:.2f} s)",
            target="<= 1.8",
            met=yes_no(r.wall_s <= 1.8),
        )

    return [
        Row(bench, "errors", "-", str(one.errors + two.errors), target="0", met=yes_no(one.errors + two.errors == 0)),
        wall(one, "front of 1 process"),
        wall(two, "front of 2 processes (http.workers: 2)"),
        Row(
            bench,
            f"RSS of all atomr processes ({two.processes}) summed, peak, MiB, 2 front processes",
            f"idle, before the load {two.rss_before / MIB:.0f}",
            f"{two.rss_peak / MIB:.0f}",
            ratio=f"{two.rss_peak / two.rss_before:.2f}x idle",
            target="<= 1024 (1 GiB)",
            met=yes_no(two.rss_peak <= GIB),
        ),
    ]


def cascade_rows(s: Sizes, threshold: float) -> list[Row]:
    res = cascade.run([threshold], large_delay_ms=s.cascade_delay_ms, random_prompts=s.cascade_random_prompts)
    row = res.rows[0]
    cost = f"{row.cost:.0%}" if row.cost is not None else "n/a"
    saved = f"{1 - row.cost:.0%} saved" if row.cost is not None else "-"
    return [
        Row(
            f"cascade (tiny -> large, min logprob >= {threshold:g})",
            f"cost vs all tier 2, {res.n_in + res.n_out} prompts",
            "all tier 2 100%",
            cost,
            ratio=f"{saved}; {row.tier1:.0%} at tier 1, {row.agreement:.0%} agree with tier 2",
        )
    ]


def tracing_rows(s: Sizes) -> list[Row]:
    med = tracing_cost.run(s.tracing_rounds, s.tracing_requests)
    bench = "tracing (same front, zero-delay fake backend)"
    added, target = med["on minus off p50"], tracing_cost.TARGET_ADDED_MS
    hooks_ms = med["off hooks us"] / 1000
    return [
        Row(
            bench,
            "p50 at c=1, ms, tracing on (every request sampled, OTLP/HTTP to a local receiver) vs off",
            f"off {med['off p50']:.3f}",
            f"{med['on p50']:.3f}",
            ratio=f"{added:+.3f} ms ({med['on/off p50']:.3f}x)",
            target=f"<= +{target} ms",
            met=yes_no(added <= target),
        ),
        Row(
            bench,
            "requests/s at c=64, tracing on vs off",
            f"off {med['off req/s']:.0f}",
            f"{med['on req/s']:.0f}",
            ratio=f"{med['on req/s'] / med['off req/s']:.2f}x",
        ),
        Row(
            bench,
            "tracing off: its per-request checks, us (in-process)",
            f"the front's added p50 {med['off added p50']:.3f} ms",
            f"{med['off hooks us']:.3f}",
            ratio=f"{hooks_ms / med['off added p50']:.4%} of it" if med["off added p50"] > 0 else "-",
            target="< 1% of the front's added p50",
            met=yes_no(hooks_ms < 0.01 * med["off added p50"]),
        ),
    ]


def guard_rows(s: Sizes) -> list[Row]:
    med = connection_guard.run(s.guard_rounds, s.guard_requests)
    bench = "connection limits (uvicorn httptools, trivial app)"
    rows = []
    for what, label in (
        ("keep-alive p50", "p50 per request, one keep-alive connection, ms"),
        ("new-connection p50", "p50 per request on a new connection, ms"),
    ):
        plain, guarded = med[f"plain {what}"], med[f"guarded {what}"]
        rows.append(
            Row(
                bench,
                f"{label}: guarded vs plain",
                f"plain {plain:.4f}",
                f"{guarded:.4f}",
                ratio=f"{(guarded - plain) * 1000:+.1f} us ({guarded / plain:.3f}x)",
            )
        )
    return rows


def litellm_version(venv: Path) -> str:
    try:
        out = subprocess.run(
            [str(venv_python(venv)), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def render(rows: list[Row], header: str) -> str:
    lines = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test (about a minute), not numbers")
    ap.add_argument("--out", type=Path, default=Path("bench-results.md"), help="also write the table here")
    ap.add_argument("--litellm-venv", type=Path, default=DEFAULT_VENV, help="LiteLLM's venv (made when missing)")
    ap.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy (its targets: not measured)")
    ap.add_argument("--cascade-threshold", type=float, default=-0.2)
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sizes = QUICK if args.quick else FULL
    venv = None if args.no_litellm else args.litellm_venv.resolve()

    sections: list[tuple[str, list[str], Callable[[], list[Row]]]] = [
        ("actor path", ["p50 at c=1", "requests/s at c=32"], lambda: actor_rows(sizes)),
        ("HTTP front", ["added p50", "added p99", "requests/s at c=64", "stream"], lambda: front_rows(sizes, venv)),
        ("batching", ["tokens/s"], lambda: batching_rows(sizes)),
        (
            "in flight",
            ["errors", "wall time, 1 process", "wall time, 2 processes", "RSS"],
            lambda: inflight_rows(sizes),
        ),
        ("cascade", ["cost"], lambda: cascade_rows(sizes, args.cascade_threshold)),
        ("tracing", ["p50 on vs off", "requests/s on vs off", "off checks"], lambda: tracing_rows(sizes)),
        ("connection limits", ["keep-alive p50", "new-connection p50"], lambda: guard_rows(sizes)),
    ]
    rows: list[Row] = []
    status = 0
    started = time.time()
    for name, measures, fn in sections:
        t0 = time.time()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        try:
            rows += fn()
        except Exception as exc:  # noqa: BLE001 - one failed benchmark is reported in the table; the rest still run
            traceback.print_exc()
            rows += failed(name, measures, exc)
            status = 1
        print(f"  {name}: {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    if args.strict and any(r.met.startswith("**no") for r in rows):
        status = 1

    lit = f"LiteLLM {litellm_version(venv)} proxy" if venv is not None else "no LiteLLM"
    header = (
        f"atomr benchmarks{' (--quick: smoke-test sizes, not numbers)' if args.quick else ''}, "
        f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, Python {platform.python_version()}, {lit}; "
        f"medians over interleaved rounds; took {time.time() - started:.0f} s"
    )
    table = render(rows, header)
    print("\n" + table)
    args.out.write_text(table)
    return status


if __name__ == "__main__":
    sys.exit(main())
