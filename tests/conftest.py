"""Shared fixtures: real atomr nodes in their own processes, and a leak guard that ends by PID
every process a test run left behind (found through an environment marker every node inherits)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from atomr.system import end_processes, free_port, system_processes

REPO = Path(__file__).resolve().parents[1]
SESSION_MARK = "ATOMR_TEST_SESSION"
SESSION_ID = uuid.uuid4().hex
THREAD_ENV = {"OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_env(**extra: str) -> dict[str, str]:
    """Environment for processes a test starts: one thread per engine, the session marker."""
    env = dict(os.environ)
    env.update(THREAD_ENV)
    env[SESSION_MARK] = SESSION_ID
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def session_processes() -> list[psutil.Process]:
    """Every process (but this one) started with this test session's marker."""
    found = []
    for p in psutil.process_iter(["pid"]):
        if p.pid == os.getpid():
            continue
        try:
            if p.environ().get(SESSION_MARK) == SESSION_ID:
                found.append(p)
        except (psutil.Error, OSError):
            continue
    return found


class Node:
    """`python -m atomr.node` in its own process, stopped with SIGTERM like an operator would."""

    def __init__(self, *args: str, config: str | Path | None = None, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="atomr-node-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "atomr.node", "--port", str(self.port), *args]
        if config is not None:
            cmd += ["--config", str(config)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, env=test_env()
        )
        deadline = time.time() + timeout
        while "\nready\n" not in "\n" + self.output():
            if self.proc.poll() is not None or time.time() > deadline:
                out = self.output()
                self.stop()
                raise RuntimeError(f"node did not become ready:\n{out[-4000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM the node; returns PIDs that had to be ended by force (should be none)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        leftover = end_processes(system_processes(self.port))
        self._log.close()
        return leftover


@pytest.fixture(scope="session", autouse=True)
def leak_guard() -> Iterator[None]:
    yield
    left = session_processes()
    pids = end_processes(left)
    assert not pids, f"processes left behind by the test run (ended now): {pids}"


@pytest.fixture(scope="module")
def local_node() -> Iterator[Node]:
    """A head node serving system_config/local.yaml (the embedded tiny model)."""
    node = Node(config=REPO / "system_config" / "local.yaml")
    yield node
    assert node.stop() == []
