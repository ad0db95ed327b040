"""Benchmark: Thespian's transport with and without atomr's speed patches (atomr.cluster.thespian_patches).

Each measurement runs in a fresh process whose ``ATOMR_THESPIAN_PATCHES`` selects the patches; it
starts its own multiprocTCPBase system on a free port, and a driver actor measures, actor to actor:
- blast: n small messages sent in one handler to a sink actor, until the sink has them all;
- 1 outstanding: ping/pong round trips with an echo actor, one at a time;
- 100 outstanding: requests to the echo actor with 100 in flight, until n replies are back.
Modes run interleaved in rounds (the order alternating) and the table reports medians over rounds
with ratios against the first mode (this machine is shared and noisy), and the CPU time the
system's processes spent per operation.

``--calls`` counts instead the Python function calls (including calls into C) that the three actor
processes make per operation, through a profile hook the forked processes inherit. That count does
not depend on how busy the machine is, so it shows what each patch saves where timings are too
noisy to; it says nothing about time spent in system calls (what the ``poll`` patch saves).

    python scripts/bench/thespian_transport.py [--rounds 5] [--blast 5000] [--mode 0 --mode 1] [--calls]

A mode is a value for ``ATOMR_THESPIAN_PATCHES``: ``0`` (unpatched), ``1`` (all patches), or a
comma-separated list of patch names (``expiry,read``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from thespian.actors import Actor, ActorAddress

from atomr.cluster.system import end_processes, free_port, start_system, stop_system, system_processes
from atomr.cluster.thespian_patches import ENV_VAR, applied_patches

REPO = Path(__file__).resolve().parents[2]
METRICS = (("blast", "blast"), ("rt1", "1 outstanding"), ("rt100", "100 outstanding"))
UNITS = {"blast": "msg/s", "rt1": "rt/s", "rt100": "req/s"}

_calls = [0]  # function calls made by this process while the --calls hook is set


def _count_call(frame: Any, event: str, arg: Any) -> None:
    if event in ("call", "c_call"):
        _calls[0] += 1


# --- actors (they run in the worker's actor system; the forked processes share its __main__) ----


@dataclass(frozen=True)
class Expect:
    count: int
    report_to: ActorAddress


@dataclass(frozen=True)
class Blast:
    count: int
    sink: ActorAddress


@dataclass(frozen=True)
class Requests:
    count: int
    outstanding: int
    echo: ActorAddress


@dataclass(frozen=True)
class Received:
    count: int
    in_order: bool


@dataclass(frozen=True)
class Measured:
    count: int
    seconds: float
    ok: bool


@dataclass(frozen=True)
class CallCount:
    """Asks an actor for the number of function calls its process has made."""


class Counted(Actor):
    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, CallCount):
            self.send(sender, _calls[0])


class Sink(Counted):
    """Counts numbered messages and reports once the expected number arrived (in order or not)."""

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        super().receiveMessage(msg, sender)
        if isinstance(msg, Expect):
            self.expect, self.report_to, self.next, self.in_order = msg.count, msg.report_to, 0, True
        elif isinstance(msg, int):
            self.in_order = self.in_order and msg == self.next
            self.next += 1
            if self.next == self.expect:
                self.send(self.report_to, Received(self.next, self.in_order))


class Echo(Counted):
    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        super().receiveMessage(msg, sender)
        if isinstance(msg, int):
            self.send(sender, msg)


class Driver(Counted):
    """Runs one measurement per request and answers the requester with a Measured."""

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        super().receiveMessage(msg, sender)
        if isinstance(msg, Blast):
            self.client, self.started = sender, time.perf_counter()
            self.send(msg.sink, Expect(msg.count, self.myAddress))
            for i in range(msg.count):
                self.send(msg.sink, i)
        elif isinstance(msg, Received):
            self.send(self.client, Measured(msg.count, time.perf_counter() - self.started, msg.in_order))
        elif isinstance(msg, Requests):
            self.client, self.started, self.echo = sender, time.perf_counter(), msg.echo
            self.total, self.sent, self.seen = msg.count, 0, set()
            for _ in range(min(msg.outstanding, msg.count)):
                self.send(self.echo, self.sent)
                self.sent += 1
        elif isinstance(msg, int):
            self.seen.add(msg)
            if self.sent < self.total:
                self.send(self.echo, self.sent)
                self.sent += 1
            elif len(self.seen) == self.total:
                ok = self.seen == set(range(self.total))
                self.send(self.client, Measured(self.total, time.perf_counter() - self.started, ok))


# --- worker: one process, one system, one mode --------------------------------------------------


def cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def measure(asys: Any, driver: ActorAddress, request: Any, procs: list[psutil.Process]) -> tuple[float, float]:
    """Operations (messages, round trips, requests) per second, and CPU microseconds per operation."""
    cpu = cpu_seconds(procs)
    reply = asys.ask(driver, request, 300.0)
    if not isinstance(reply, Measured) or not reply.ok:
        raise RuntimeError(f"measurement failed: {request} -> {reply}")
    return reply.count / reply.seconds, (cpu_seconds(procs) - cpu) / reply.count * 1e6


def calls_made(asys: Any, actors: list[ActorAddress]) -> int:
    counts = [asys.ask(a, CallCount(), 60.0) for a in actors]
    if not all(isinstance(c, int) for c in counts):
        raise RuntimeError(f"call counts not answered: {counts}")
    return sum(counts)


def worker(args: argparse.Namespace) -> None:
    port = args.port
    if args.calls:
        sys.setprofile(_count_call)  # the admin forks with it, and the actors from the admin
    asys = start_system(port)
    sys.setprofile(None)
    try:
        sink, echo, driver = actors = [asys.createActor(cls) for cls in (Sink, Echo, Driver)]
        procs = system_processes(port)  # admin, logger and the three actors
        for request in (Blast(200, sink), Requests(200, 1, echo), Requests(200, 100, echo)):  # warm-up
            measure(asys, driver, request, procs)
        result: dict[str, Any] = {"applied": list(applied_patches())}
        requests = (
            ("blast", Blast(args.blast, sink)),
            ("rt1", Requests(args.roundtrips, 1, echo)),
            ("rt100", Requests(args.requests, 100, echo)),
        )
        for key, request in requests:
            before = calls_made(asys, actors) if args.calls else 0
            result[key], result[key + "_cpu"] = measure(asys, driver, request, procs)
            if args.calls:
                # the counting asks themselves cost a few hundred calls: negligible per operation
                result[key + "_calls"] = (calls_made(asys, actors) - before) / request.count
        Path(args.worker).write_text(json.dumps(result))
    finally:
        stop_system(asys, port)


# --- parent: rounds of workers ------------------------------------------------------------------


def run_worker(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        port = free_port()
        cmd = [sys.executable, __file__, "--worker", str(out), "--port", str(port)]
        cmd += ["--blast", str(args.blast), "--roundtrips", str(args.roundtrips), "--requests", str(args.requests)]
        cmd += ["--calls"] if args.calls else []
        env = {**os.environ, ENV_VAR: mode}
        # Output to a file, not a pipe: Thespian's admin inherits it and outlives the worker briefly.
        with open(Path(tmp) / "log", "w+b") as log:
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            try:
                rc = proc.wait(timeout=args.timeout)
            finally:
                # A worker that failed or hung may leave its system running: end it by PID.
                left = system_processes(port)
                if proc.poll() is None:
                    left.append(psutil.Process(proc.pid))
                end_processes(left)
            log.seek(0)
            text = log.read().decode(errors="replace")
        if rc != 0 or not out.exists():
            raise RuntimeError(f"worker for mode {mode!r} failed (rc {rc}):\n{text[-3000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def label(mode: str) -> str:
    return {"0": "unpatched", "1": "patched (all)"}.get(mode, mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--blast", type=int, default=5000, help="messages per blast")
    ap.add_argument("--roundtrips", type=int, default=2000, help="round trips with 1 outstanding")
    ap.add_argument("--requests", type=int, default=5000, help="requests with 100 outstanding")
    ap.add_argument("--mode", action="append", help="ATOMR_THESPIAN_PATCHES value (repeat; default 0 and 1)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per worker")
    ap.add_argument("--calls", action="store_true", help="count function calls per operation instead of timing")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    modes: list[str] = args.mode or ["0", "1"]
    results: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(args.rounds):
        order = modes if r % 2 == 0 else modes[::-1]
        for mode in order:
            res = run_worker(mode, args)
            results[mode].append(res)
            applied = ",".join(res["applied"]) or "-"
            print(f"round {r + 1} {label(mode):>24}: {summary(res, args.calls)}  (applied: {applied})")
            sys.stdout.flush()
    print_table(modes, results, args)


def summary(res: dict[str, Any], calls: bool) -> str:
    if calls:
        return "  ".join(f"{key} {res[key + '_calls']:,.0f} calls" for key, _ in METRICS)
    return "  ".join(f"{key} {res[key]:,.0f}/s {res[key + '_cpu']:,.0f}us" for key, _ in METRICS)


def print_table(modes: list[str], results: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    what = "Python function calls per operation" if args.calls else "throughput and CPU microseconds per operation"
    print(
        f"\nThespian transport, actor to actor: {what}; blast of {args.blast}, {args.roundtrips} round trips, "
        f"{args.requests} requests; medians of {args.rounds} interleaved rounds; ratios vs {label(modes[0])}\n"
    )
    suffixes = ["_calls"] if args.calls else ["", "_cpu"]
    med = {
        m: {key + x: statistics.median(r[key + x] for r in results[m]) for key, _ in METRICS for x in suffixes}
        for m in modes
    }
    base = med[modes[0]]
    if args.calls:
        titles = [f"{title} calls/op" for _, title in METRICS]
    else:
        titles = [f"{title} {t}" for key, title in METRICS for t in (UNITS[key], "CPU us/op")]
    print("| mode | " + " | ".join(titles) + " |")
    print("|" + "---|" * (1 + len(titles)))
    for m in modes:
        cells = []
        for key, _ in METRICS:
            if args.calls:
                calls = med[m][key + "_calls"]
                cells.append(f"{calls:,.0f} ({base[key + '_calls'] / calls:.2f}x fewer)")
            else:
                cpu = med[m][key + "_cpu"]
                cells.append(f"{med[m][key]:,.0f} ({med[m][key] / base[key]:.2f}x)")
                cells.append(f"{cpu:,.0f} ({base[key + '_cpu'] / cpu:.2f}x less)")
        print(f"| {label(m)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
