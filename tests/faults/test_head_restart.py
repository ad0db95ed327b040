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

import json
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from atomr.cluster.system import free_port, system_processes
from atomr.config import deployment_from_dict
from atomr.core.errors import InferenceError, RateLimitedError
from atomr.core.tenants import new_key
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI
from tests.faults.harness import (
    KINDS,
    MODEL,
    PROMPT,
    Load,
    deployment,
    process_gone,
    tiny,
    wait_until,
    write_config,
)
from tests.multihost import Hosts

MAX_TOKENS = 24
KEY, KEY_HASH = new_key()
PROVIDER_KEY = "sk-provider-" + "r" * 32


def kill_head(node: Node) -> list[int]:
    """SIGKILL the node's process and every process of its actor system, all at once."""
    pids = [node.proc.pid, *(p.pid for p in node.processes())]
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


def test_replicas_on_a_member_node_are_adopted_by_the_head_started_again(tmp_path: Path) -> None:
    """The runner hosts of a member node outlive the head: the new head adopts them (same pids,
    same process start times: no engine reload), and serving resumes."""
    state, port = tmp_path / "state", free_port()
    cfg = write_config(tmp_path / "head.yaml")
    want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
    node = Node(config=cfg, state_dir=state, port=port, env={"ATOMR_NODE_TIMEOUT_S": "30"})
    member: Node | None = None
    try:
        member = Node("--role", "cpu", "--join", node.address)
        with Client(node.address) as client:
            wait_until(lambda: len(client.status()["nodes"]) == 2, 60, "the member node joined")
            client.deploy(deployment_from_dict(tiny("far", replicas=2, placement={"role": "cpu"})))
            hosts = {r.pid: psutil.Process(r.pid).create_time() for r in deployment(client, "far").replicas}
            assert len(hosts) == 2 and all(p in {q.pid for q in system_processes(member.port)} for p in hosts)
            load = Load(client, "far", PROMPT, want, MAX_TOKENS, kinds=("stream", "unary"), workers=4)
            try:
                assert load.first_chunk.wait(30)
                load.wait_for(8)
                kill_head(node)
                node = Node(config=cfg, state_dir=state, port=port, env={"ATOMR_NODE_TIMEOUT_S": "30"})
                ready = time.time()
                load.wait_for(8, started_after=ready)
            finally:
                load.stop()
            info = deployment(client, "far")
            assert info.state == "ready"
            assert {r.pid: psutil.Process(r.pid).create_time() for r in info.replicas} == hosts  # adopted
            assert all(r.restarts == 0 for r in info.replicas)
        print(load.check({"unavailable", "timeout", "runner_crashed"}, before=ready))
    finally:
        left = (member.stop() if member is not None else []) + node.stop()  # both stopped, then checked
        assert left == []


def test_a_member_stops_its_replicas_when_no_head_comes_back_within_the_adopt_window(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "head.yaml", node={"adopt_window_s": 2})
    node = Node(config=cfg)
    member: Node | None = None
    try:
        member = Node("--role", "cpu", "--join", node.address)
        with Client(node.address) as client:
            wait_until(lambda: len(client.status()["nodes"]) == 2, 60, "the member node joined")
            client.deploy(deployment_from_dict(tiny("far", placement={"role": "cpu"})))
            (host,) = [r.pid for r in deployment(client, "far").replicas]
        kill_head(node)
        assert process_gone(host, timeout=60)  # the window (2 s) passed with no head: stopped
        assert "no head within the adopt window" in member.output()
    finally:
        left = member.stop() if member is not None else []
        node.stop()  # the killed head: what is left of it was ended by its stop
        assert left == []


def test_adoption_across_real_addresses(tmp_path: Path) -> None:
    """The same across hosts: the head and a cpu node each in a network namespace of its own
    (their own addresses, the cluster key), the client in the head's; the head killed whole and
    started again adopts the cpu node's replicas."""
    hosts = Hosts(["head", "cpu"], tmp_path)
    try:
        state = tmp_path / "state"
        head = hosts.node("head", state_dir=state)
        hosts.node("cpu", "--role", "cpu", "--join", head.address)
        first = hosts.run("head", ["-m", "tests.multihost_client", head.address, "deploy-far"])
        assert first.returncode == 0, first.stderr[-3000:]
        before = json.loads(first.stdout.strip().splitlines()[-1])
        want = ort_greedy_reference(MODEL, PROMPT, 16)
        assert before["text"] == want and len(before["hosts"]) == 2
        kill_head(head)
        hosts.nodes.remove(head)
        head = hosts.node("head", state_dir=state)
        again = hosts.run("head", ["-m", "tests.multihost_client", head.address, "check-far"])
        assert again.returncode == 0, again.stderr[-3000:]
        after = json.loads(again.stdout.strip().splitlines()[-1])
        assert after["hosts"] == before["hosts"] and after["text"] == want  # the same processes serve
        assert "running replicas adopted" in head.output()
    finally:
        assert hosts.close() == []


def test_a_rate_limit_is_not_exceeded_across_a_head_restart(tmp_path: Path) -> None:
    """rpm 4 on a fake provider: 3 requests served, the head killed whole and started again on its
    state directory, then 4 more: only 1 is served (the window still holds the first 3); the
    provider saw 4 calls in all."""
    key_file = tmp_path / "provider.key"
    key_file.write_text(PROVIDER_KEY)
    with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
        engine = {"api_base": fake.url + "/v1", "api_key_file": str(key_file), "retry": {"max_attempts": 1}}
        limited = {"name": "limited", "model": "openai/gpt-fake", "engine": engine, "rate_limits": {"rpm": 4}}
        cfg = write_config(tmp_path / "limits.yaml", limited)
        state, port = tmp_path / "state", free_port()
        node = Node(config=cfg, state_dir=state, port=port)
        try:
            with Client(node.address) as client:
                for _ in range(3):
                    client.generate("limited", prompt="Hello", max_tokens=4)
            assert fake.count("/completions") == 3
            kill_head(node)
            node = Node(config=cfg, state_dir=state, port=port)
            with Client(node.address) as client:
                results = client.generate_many(
                    [client.make_request("limited", "Hello", max_tokens=4) for _ in range(4)]
                )
            served = [r for r in results if not isinstance(r, InferenceError)]
            assert len(served) == 1 and all(isinstance(r, RateLimitedError) for r in results if r not in served), (
                results
            )
            assert fake.count("/completions") == 4
        finally:
            assert node.stop() == []
