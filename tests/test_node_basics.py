"""The node process and its small parts: it prints where it listens and stops cleanly on SIGINT
with no process left; GPU ids come from --gpus, else CUDA_VISIBLE_DEVICES, else nvidia-smi;
the restart backoff doubles from its initial delay up to its cap."""

from __future__ import annotations

import signal
import stat
import subprocess
from pathlib import Path

import psutil
import pytest

from atomr.cluster.system import system_processes
from atomr.core.deployment import Supervision
from atomr.node.main import detect_gpus
from tests.conftest import Node


def test_the_node_says_where_it_listens_and_sigint_stops_it_with_nothing_left() -> None:
    node = Node("--node-id", "basics")
    try:
        assert f"atomr node basics (head) listening on 127.0.0.1:{node.port}\n" in node.output()
        actors = system_processes(node.port)
        assert actors  # the actor system runs in processes of its own
        node.proc.send_signal(signal.SIGINT)
        assert node.proc.wait(30) == 0
        assert node.output().rstrip().endswith("atomr node stopped")
        assert "Traceback" not in node.output()
        assert system_processes(node.port) == []
        alive = psutil.wait_procs(actors, timeout=5)[1]
        assert alive == [], alive  # every actor process has ended, none by force
    finally:
        assert node.stop() == []


def test_gpus_flag_first_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert detect_gpus("0,1") == ["0", "1"]
    assert detect_gpus("") == []  # --gpus "" means none, whatever the environment says
    assert detect_gpus(None) == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_gpus(None) == []  # set but empty: no GPU visible (nvidia-smi is not asked)


NVIDIA_SMI = """#!/bin/sh
# What the real tool prints for exactly these arguments on a two-GPU host; anything else fails.
if [ "$*" = "--query-gpu=index --format=csv,noheader" ]; then
    printf '0\\n1\\n'
    exit 0
fi
echo "unexpected arguments: $*" >&2
exit 9
"""


def _tool(folder: Path, body: str) -> None:
    folder.mkdir()
    tool = folder / "nvidia-smi"
    tool.write_text(body)
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)


def test_nvidia_smi_is_asked_when_nothing_else_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    _tool(tmp_path / "smi", NVIDIA_SMI)
    monkeypatch.setenv("PATH", str(tmp_path / "smi"))
    assert subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 9  # the stub is strict
    assert detect_gpus(None) == ["0", "1"]
    _tool(tmp_path / "broken", "#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    monkeypatch.setenv("PATH", str(tmp_path / "broken"))
    assert detect_gpus(None) == []  # a failing tool means no GPUs, not a crash
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert detect_gpus(None) == []


def test_backoff_doubles_from_its_initial_delay_up_to_its_cap() -> None:
    sup = Supervision(backoff_initial_s=0.1, backoff_max_s=1.0)
    assert [sup.backoff(n) for n in range(1, 8)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert sup.backoff(0) == pytest.approx(0.1)  # never below the initial delay
    assert sup.backoff(200) == 1.0  # no overflow far past the cap
    default = Supervision()
    assert (default.backoff(1), default.backoff(2), default.backoff(50)) == (0.1, 0.2, 10.0)
    assert Supervision(backoff_initial_s=0.0).backoff(5) == 0.0
