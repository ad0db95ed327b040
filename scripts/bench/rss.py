"""Memory of a running atomr node: every process it consists of, and their RSS summed, sampled.

A node (`atomr.node.process.NodeProcess`) is the `python -m atomr.node` process with its children,
plus its Thespian actor system, whose admin detaches from its starter: `atomr.cluster.system.system_processes`
finds the admin through the node's port and everything below it (actors, runner hosts, logger).
`node_processes` is the union of both; `RssSampler` sums their resident set sizes every
`interval_s` seconds in a thread (finding the processes again every `refresh_s` seconds, so
processes started later count) and keeps every sample, the peak and the last value per process.
RSS counts pages shared between forked processes once per process, so the sum overstates what the
node holds: it is an upper bound.
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import psutil

from atomr.cluster.system import system_processes
from atomr.node.process import NodeProcess

MIB = 1 << 20


def node_processes(node: NodeProcess) -> list[psutil.Process]:
    """The node's own process, its descendants, and its actor system's processes."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        top = psutil.Process(node.proc.pid)
        for p in (top, *top.children(recursive=True)):
            found[p.pid] = p
    for p in system_processes(node.port):
        found.setdefault(p.pid, p)
    return list(found.values())


def label(p: psutil.Process, node: NodeProcess) -> str:
    """What a node process is, roughly: the node's own, the actor system's admin, or an actor
    (marked "ORT" when it has ONNX Runtime loaded: a local engine's runner)."""
    if p.pid == node.proc.pid:
        return "node"
    try:
        if p.ppid() == 1:
            return "actor system admin"
        maps = Path(f"/proc/{p.pid}/maps")
        engine = maps.exists() and "onnxruntime" in maps.read_text(errors="replace")
    except (psutil.Error, OSError):
        return "?"
    return "actor, ORT" if engine else "actor"


def rss_of(procs: list[psutil.Process]) -> dict[int, int]:
    """RSS in bytes per PID, for the processes still alive."""
    out: dict[int, int] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            rss = p.memory_info().rss
            if rss:  # 0: a zombie, already gone
                out[p.pid] = rss
    return out


class RssSampler:
    """Samples the node's total RSS in a background thread between `start` and `stop`."""

    def __init__(self, node: NodeProcess, interval_s: float = 0.2, refresh_s: float = 2.0) -> None:
        self.node, self.interval_s, self.refresh_s = node, interval_s, refresh_s
        self.samples: list[tuple[float, int]] = []  # (seconds since creation, total bytes)
        self.last: dict[int, int] = {}  # PID -> bytes at the last sample
        self.peak = 0
        self._procs: list[psutil.Process] = []
        self._found_at = float("-inf")
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> int:
        """One sample now, in bytes (also usable without the thread)."""
        if time.monotonic() - self._found_at > self.refresh_s:
            self._procs = node_processes(self.node)
            self._found_at = time.monotonic()
        self.last = rss_of(self._procs)
        total = sum(self.last.values())
        self.peak = max(self.peak, total)
        self.samples.append((time.monotonic() - self._t0, total))
        return total

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
