"""Hot swap under constant load: a new version of a deployment replaces the serving one with zero
failed requests, the old version's processes exit, a canary share reaches the new version first,
and a broken new version is rolled back while the old one keeps serving."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from atomr.client import Client
from atomr.core.errors import InferenceError
from tests.conftest import Node

PROMPT = "The actor model"


def tiny(version: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": "swap",
        "model": "builtin:tiny-llama",
        "version": version,
        "replicas": 2,
        "limits": {"max_inflight_per_replica": 16},
        **fields,
    }


class Load:
    """Requests at a steady rate from a few threads; records (send time, version or error) of each."""

    def __init__(self, client: Client, rate: float, threads: int = 4) -> None:
        self.client, self.period = client, threads / rate
        self.results: list[tuple[float, float, str]] = []  # (sent, done, version or "error: ...")
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()
            time.sleep(self.period / threads)

    def _run(self) -> None:
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                outcome = self.client.generate("swap", prompt=PROMPT, max_tokens=8, timeout=30).version
            except InferenceError as exc:
                outcome = f"error: {exc}"
            with self.lock:
                self.results.append((sent, time.monotonic(), outcome))
            time.sleep(max(0.0, self.period - (time.monotonic() - sent)))

    def finish(self) -> list[tuple[float, float, str]]:
        self.stop.set()
        for t in self.threads:
            t.join(60)
        return sorted(self.results)


def replica_pids(client: Client) -> dict[str, set[int]]:
    out: dict[str, set[int]] = {}
    for d in client.status()["deployments"]:
        if d.name == "swap":
            for r in d.replicas:
                out.setdefault(r.replica_id.split("-v")[-1].split("-r")[0], set()).add(r.pid)
    return out


@pytest.fixture
def node() -> Iterator[Node]:
    n = Node()
    yield n
    assert n.stop() == []


def test_new_version_takes_over_under_load_with_zero_failures(node: Node) -> None:
    with Client(node.address) as client:
        client.deploy(tiny("1"))
        v1_pids = replica_pids(client)["1"]
        assert len(v1_pids) == 2
        load = Load(client, rate=50)
        time.sleep(2)
        progress: list[str] = []
        watcher_stop = threading.Event()

        def watch() -> None:
            with Client(node.address) as c:
                while not watcher_stop.is_set():
                    for d in c.status()["deployments"]:
                        if d.name == "swap" and d.swap and (not progress or progress[-1] != d.swap):
                            progress.append(d.swap)
                    time.sleep(0.05)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t_deploy = time.monotonic()
        (info,) = client.deploy(tiny("2"))
        t_done = time.monotonic()
        time.sleep(2)
        results = load.finish()
        watcher_stop.set()
        watcher.join(10)
        assert info.version == "2" and info.state == "ready" and info.swap is None
        errors = [r for r in results if r[2].startswith("error")]
        assert not errors, errors[:3]
        assert len(results) > 100
        # v1 answered everything sent before the switch began, v2 everything sent after it ended
        assert {v for sent, _, v in results if sent < t_deploy} == {"1"}
        assert {v for sent, _, v in results if sent > t_done} == {"2"}
        assert any(p.startswith("starting version 2") for p in progress), progress
        # the old version's processes are gone, the new ones serve
        deadline = time.time() + 10
        while any(psutil.pid_exists(p) for p in v1_pids) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(psutil.pid_exists(p) for p in v1_pids)
        assert set(replica_pids(client)) == {"2"}
        assert client.generate("swap", prompt=PROMPT, max_tokens=4).version == "2"


def test_canary_share_then_all_traffic(node: Node) -> None:
    with Client(node.address) as client:
        client.deploy(tiny("1", replicas=1))
        load = Load(client, rate=40)
        time.sleep(1)
        (info,) = client.deploy(tiny("2", replicas=1, rollout={"canary_share": 0.5, "canary_s": 3}))
        time.sleep(1)
        results = load.finish()
        assert info.version == "2"
        assert not [r for r in results if r[2].startswith("error")]
        versions = [v for _, _, v in results]
        # during the canary both versions answered; at the end only v2
        assert versions.count("1") > 10 and versions.count("2") > 10
        assert set(versions[-10:]) == {"2"}


def test_broken_new_version_rolls_back_and_the_old_keeps_serving(node: Node, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "genai_config.json").write_text("{not json")
    with Client(node.address) as client:
        client.deploy(tiny("1"))
        v1_pids = replica_pids(client)["1"]
        load = Load(client, rate=50)
        time.sleep(1)
        with pytest.raises(InferenceError) as rolled:
            client.deploy({**tiny("2"), "model": str(broken), "runtime": "ort"})
        time.sleep(1)
        results = load.finish()
        assert "rolled back" in rolled.value.message and "version 1 keeps serving" in rolled.value.message
        assert "genai_config.json" in rolled.value.message  # the engine's reason
        assert not [r for r in results if r[2].startswith("error")]
        assert {v for _, _, v in results} == {"1"}
        (d,) = [d for d in client.status()["deployments"] if d.name == "swap"]
        assert d.version == "1" and d.state == "ready" and d.swap is None
        assert replica_pids(client) == {"1": v1_pids}
        # a later good version still switches
        (info,) = client.deploy(tiny("3"))
        assert info.version == "3" and client.generate("swap", prompt=PROMPT, max_tokens=4).version == "3"
