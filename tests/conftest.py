"""Shared fixtures: real atomr nodes in their own processes, and a leak guard that ends by PID
every process a test run left behind (found through an environment marker every node inherits).

The run keeps its own per-user state (``XDG_STATE_HOME``, where the default loopback cluster key
is created) in a temporary folder, so tests neither need nor touch the user's own key."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import pytest

from atomr.cluster.system import end_processes
from atomr.node.process import NodeProcess

REPO = Path(__file__).resolve().parents[1]
SESSION_MARK = "ATOMR_TEST_SESSION"
SESSION_ID = uuid.uuid4().hex
THREAD_ENV = {"OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# One state folder per test run, shared by every process of the run (processes that import this
# module again, e.g. `python -c "from tests... import main"`, find it in the environment).
_OWN_STATE_DIR = "ATOMR_TEST_STATE_DIR" not in os.environ
STATE_DIR = os.environ.setdefault(
    "ATOMR_TEST_STATE_DIR", tempfile.mkdtemp(prefix="atomr-test-state-") if _OWN_STATE_DIR else ""
)
os.environ["XDG_STATE_HOME"] = STATE_DIR  # this process and every process it starts
os.environ["XDG_DATA_HOME"] = STATE_DIR  # where a head started without --state-dir keeps its state


def node_env(**extra: str) -> dict[str, str]:
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


class Node(NodeProcess):
    """A node for tests: its processes carry the session marker the leak guard looks for."""

    def __init__(
        self,
        *args: str,
        config: str | Path | None = None,
        timeout: float = 120.0,
        python: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | Path = REPO,
        state_dir: str | Path | None = None,
        port: int | None = None,
        prefix: Sequence[str] = (),
        host: str = "127.0.0.1",
        finder: Callable[[], list[psutil.Process]] | None = None,
    ) -> None:
        """`env`: variables set in the node's environment besides node_env()'s; `state_dir`: the
        head's (default: one of its own, removed when it stops); `port`: its admin port (default:
        a free one)."""
        super().__init__(
            args,
            config=config,
            env=node_env(**dict(env or {})),
            cwd=cwd,
            timeout=timeout,
            python=python,
            state_dir=state_dir,
            port=port,
            prefix=prefix,
            host=host,
            finder=finder,
        )


@pytest.fixture(scope="session", autouse=True)
def leak_guard() -> Iterator[None]:
    yield
    left = session_processes()
    pids = end_processes(left)
    if _OWN_STATE_DIR:
        shutil.rmtree(STATE_DIR, ignore_errors=True)
    assert not pids, f"processes left behind by the test run (ended now): {pids}"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop for a module that drives a runner in this process (one loop: a runner stays
    bound to the loop that loaded it)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def local_node() -> Iterator[Node]:
    """A head node serving system_config/local.yaml (the embedded tiny model)."""
    node = Node("--http-port", "0", config=REPO / "system_config" / "local.yaml")
    yield node
    assert node.stop() == []


def require_engine(module: str, extra: str) -> None:
    """Skip the calling test when an engine package is missing, naming the extra that installs it.

    Where ``$ATOMR_REQUIRE_ENGINES`` lists the module (CI installs every CPU engine), a missing
    engine fails the test instead, so that an install problem can never pass as a skip.
    """
    import importlib.util

    if importlib.util.find_spec(module) is not None:
        return
    required = {m.strip() for m in os.environ.get("ATOMR_REQUIRE_ENGINES", "").split(",") if m.strip()}
    reason = f"{module} is not installed (pip install 'atomr[{extra}]')"
    if module in required:
        pytest.fail(reason + " but ATOMR_REQUIRE_ENGINES requires it")
    pytest.skip(reason)
