"""Fault: the head killed whole (SIGKILL of every process it has) under mixed load, and started again.

The first head starts from a config with one deployment, a tenant and a route; a deployment is
added at runtime and switched to a new version, all while the head records its desired state in a
state directory. With Client threads and HTTP callers (the tenant's key) on the runtime-added
deployment, every process of the head is killed at once. A new head on the same ports and state
directory, from a config with none of it, comes back with both deployments (the runtime one at
its new version), the route and the tenant, and serves again.

What must hold: every request ends once, with the expected text or a structured error (those that
met the dead head), and every request started after the new head is ready succeeds; the tenant's
key is still required on the HTTP front.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from atomr.cluster.system import free_port, system_processes
from atomr.config import deployment_from_dict
from atomr.core.tenants import new_key
from tests.conftest import Node
from tests.faults.harness import KINDS, MODEL, PROMPT, Load, deployment, process_gone, tiny, write_config

MAX_TOKENS = 24
KEY, KEY_HASH = new_key()


def kill_head(node: Node) -> list[int]:
    """SIGKILL the node's process and every process of its actor system, all at once."""
    pids = [node.proc.pid, *(p.pid for p in system_processes(node.port))]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    node.proc.wait(10)
    for pid in pids:
        assert process_gone(pid), pid
    return pids


def test_a_killed_head_comes_back_from_its_state_directory(tmp_path: Path) -> None:
    state, port, http_port = tmp_path / "state", free_port(), free_port()
    base = f"http://127.0.0.1:{http_port}"
    first = write_config(
        tmp_path / "first.yaml",
        tiny("base"),
        http={"port": http_port, "request_timeout_s": 20},
        tenants=[{"name": "team", "key_sha256": KEY_HASH, "models": ["*"]}],
        routes=[{"name": "smart", "policy": "fixed", "deployments": ["base"]}],
    )
    want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
    node = Node(config=first, state_dir=state, port=port)
    try:
        with Client(node.address) as client:
            extra = tiny("extra", version="1")
            client.deploy(deployment_from_dict(extra))
            client.deploy(deployment_from_dict({**extra, "version": "2"}))  # a version switch, at runtime
            assert deployment(client, "extra").version == "2"
            load = Load(
                client,
                "extra",
                PROMPT,
                want,
                MAX_TOKENS,
                kinds=KINDS,
                workers=6,
                http=base,
                headers={"authorization": f"Bearer {KEY}"},
            )
            try:
                assert load.first_chunk.wait(30)
                load.wait_for(12)
                kill_head(node)
                # a config with none of it: what comes back is what the state directory recorded
                again = write_config(tmp_path / "again.yaml", http={"port": http_port, "request_timeout_s": 20})
                restarted = time.time()
                node = Node(config=again, state_dir=state, port=port)
                ready = time.time()
                load.wait_for(12, started_after=ready)
            finally:
                load.stop()
            print(f"ready {ready - restarted:.1f} s after the restart began")
            infos = {d.name: d for d in client.status()["deployments"]}
            assert {n: (d.version, d.state) for n, d in infos.items()} == {
                "base": ("1", "ready"),
                "extra": ("2", "ready"),
            }
            assert client.generate("smart", prompt=PROMPT, max_tokens=MAX_TOKENS).text == want  # the route is back
        summary = load.check({"unavailable", "timeout", "http-transport", "runner_crashed"}, before=ready)
        print(summary)
        assert "recorded it is kept" not in node.output()
        body = {"model": "extra", "prompt": PROMPT, "max_tokens": 4}
        assert httpx.post(base + "/v1/completions", json=body, timeout=30).status_code == 401  # the tenant is back
        ok = httpx.post(base + "/v1/completions", json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=30)
        assert ok.status_code == 200, ok.text
    finally:
        assert node.stop() == []
