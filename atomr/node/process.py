"""Run `python -m atomr.node` as a child process: start it, wait until it is ready, stop it.

For scripts, benchmarks and tests that need a real node in its own process tree. Stopping sends
SIGTERM (as an operator would) and then ends, by PID, anything the node's actor system left.
A head keeps its desired state in a state directory of its own, made here and removed when it
stops, unless `state_dir` names one (kept: a head started again on it comes back the same).

`prefix` runs the node through another command (``ip netns exec NS``: a node in a network
namespace, on `host`). Such a node's processes cannot be found by its port from here (another
namespace's sockets), nor by their environment (Thespian's process titles overwrite it): the
caller names them (`finder`, e.g. the processes of that namespace).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil

from atomr.cluster.system import end_processes, free_port, system_processes


class NodeProcess:
    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        config: str | Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        timeout: float = 120.0,
        python: str | None = None,
        state_dir: str | Path | None = None,
        port: int | None = None,
        prefix: Sequence[str] = (),
        host: str = "127.0.0.1",
        finder: Callable[[], list[psutil.Process]] | None = None,
    ) -> None:
        self.port = port or free_port()
        self._own_state = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="atomr-state-") if state_dir is None else state_dir)
        self.address = f"{host}:{self.port}"
        self.prefix = list(prefix)
        self._finder = finder
        fd, name = tempfile.mkstemp(prefix="atomr-node-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        cmd = [
            *self.prefix,
            python or sys.executable,
            "-m",
            "atomr.node",
            "--port",
            str(self.port),
            "--state-dir",
            str(self.state_dir),
        ]
        cmd += args
        if config is not None:
            cmd += ["--config", str(config)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=dict(env) if env is not None else None,
        )
        deadline = time.time() + timeout
        while "\nready\n" not in "\n" + self.output():
            if self.proc.poll() is not None or time.time() > deadline:
                out = self.output()
                self.stop()
                raise RuntimeError(f"node did not become ready:\n{out[-4000:]}")
            time.sleep(0.05)

    def processes(self) -> list[psutil.Process]:
        """Every process of this node that is still running (its actor system's included)."""
        if self._finder is None:
            return system_processes(self.port)
        return [p for p in self._finder() if p.pid != os.getpid()]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> list[int]:
        """SIGTERM the node; returns the PIDs that had to be ended by force (normally none)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        leftover = end_processes(self.processes())
        self._log.close()
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return leftover

    def __enter__(self) -> NodeProcess:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
