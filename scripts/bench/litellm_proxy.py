"""LiteLLM's proxy as a comparison point for the HTTP front benchmark, in a venv of its own.

`litellm[proxy]` is never installed into atomr's environment: `ensure_venv` makes a separate
virtual environment (default ``.bench-venvs/litellm`` in the repository, git-ignored) with
``python -m venv`` and ``pip install 'litellm[proxy]'`` when it is missing. `LiteLLMProxy` starts
the proxy's own CLI (``litellm --config cfg.yaml --host 127.0.0.1 --port N``) with one model,
``openai/<model>`` with ``api_base`` pointing at an OpenAI-compatible backend; no database,
``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no fetch of the cost map), minimal logging, no auth (like
the atomr front in the benchmark; LiteLLM refuses to start without a master key unless its
``dangerously_permit_weak_or_unset_master_key`` is set). It is stopped by PID, with whatever
processes it started.

    python scripts/bench/litellm_proxy.py --backend-port N [--venv PATH]   # serves until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psutil
import yaml

from atomr.cluster.system import end_processes, free_port, port_open

REPO = Path(__file__).resolve().parents[2]
DEFAULT_VENV = REPO / ".bench-venvs" / "litellm"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_ready(venv: Path) -> bool:
    """Whether `venv` has the proxy's CLI (litellm with its proxy extra installed)."""
    return (venv / "bin" / "litellm").exists() and venv_python(venv).exists()


def ensure_venv(venv: Path) -> Path:
    """The venv's `litellm` CLI; creates the venv and installs ``litellm[proxy]`` when missing."""
    if not venv_ready(venv):
        print(f"creating {venv} with litellm[proxy] for the LiteLLM comparison (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv_python(venv)), "-m", "pip", "install", "-q", "litellm[proxy]"],
            check=True,
            stdout=sys.stderr,
        )
    return venv / "bin" / "litellm"


class LiteLLMProxy:
    """LiteLLM's proxy serving model `model` from an OpenAI-compatible backend on `backend_port`."""

    def __init__(self, venv: Path, backend_port: int, model: str = "gpt", timeout: float = 180.0) -> None:
        cli = ensure_venv(venv)
        self.folder = Path(tempfile.mkdtemp(prefix="atomr-bench-litellm-"))
        self.port = free_port()
        cfg = self.folder / "litellm.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "model_list": [
                        {
                            "model_name": model,
                            "litellm_params": {
                                "model": "openai/fake",
                                "api_base": f"http://127.0.0.1:{backend_port}/v1",
                                "api_key": "sk-bench",
                            },
                        }
                    ],
                    "litellm_settings": {"set_verbose": False, "telemetry": False},
                    "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
                }
            )
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LITELLM_", "DATABASE_URL"))}
        env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR", "PYTHONUNBUFFERED": "1"})
        self.log_path = self.folder / "litellm.log"
        self._log = self.log_path.open("wb")
        cmd = [str(cli), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(self.port), "--num_workers", "1"]
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.folder
        )
        deadline = time.time() + timeout
        while not port_open("127.0.0.1", self.port):
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f"LiteLLM's proxy did not start:\n{self.output()[-4000:]}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        try:
            top = psutil.Process(self.proc.pid)
            return [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        end_processes(self.processes(), grace=5.0)
        self.proc.wait(5)
        self._log.close()

    def __enter__(self) -> LiteLLMProxy:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend-port", type=int, required=True)
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    args = ap.parse_args()
    with LiteLLMProxy(args.venv, args.backend_port) as proxy:
        print(f"LiteLLM proxy on http://127.0.0.1:{proxy.port} (model 'gpt'); Ctrl-C stops it", flush=True)
        try:
            proxy.proc.wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
