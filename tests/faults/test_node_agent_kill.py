"""Fault 3: kill -9 of a node agent under load: the head's own agent, and a joined cpu node's.

A node agent's pid is in status (`NodeInfo.pid`); its runner hosts are its child processes.

What must hold: the agent's runner hosts do not outlive it unsupervised (they exit when orphaned);
a new agent is started on the same node (the head process watches its own agent; the deployment
manager, the parent of joined nodes' agents, replaces those) and registers again; the
coordinator answers the requests the old replicas held (re-dispatched, or `runner_crashed` after
text) and starts the replicas again on the new agent; the node serves again within the recovery
target, and no process is left behind.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from tests.conftest import Node
from tests.faults.harness import (
    KINDS,
    MODEL,
    PROMPT,
    RECOVERY_S,
    Load,
    deployment,
    http_url,
    process_gone,
    serves_again,
    tiny,
    wait_until,
    write_config,
)

MAX_TOKENS = 160


def kill_agent_under_load(client: Client, node_id: str, name: str, http: str | None) -> None:
    """Kill `node_id`'s agent while `name` serves a load; check recovery and the invariants."""
    want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
    (agent,) = [n for n in client.status()["nodes"] if n.node_id == node_id]
    before = deployment(client, name).replicas
    assert {r.node_id for r in before} == {node_id}
    hosts = {r.pid for r in before}
    assert {p.pid for p in psutil.Process(agent.pid).children()} >= hosts  # the runner hosts are its children
    kinds = KINDS if http else ("stream", "unary")
    load = Load(client, name, PROMPT, want, MAX_TOKENS, kinds=kinds, workers=8, http=http)
    try:
        assert load.first_chunk.wait(30)
        load.wait_for(16)
        os.kill(agent.pid, signal.SIGKILL)
        killed = time.time()
        assert process_gone(agent.pid)
        for pid in hosts:  # orphaned runner hosts end themselves
            assert process_gone(pid, timeout=5), f"runner host {pid} outlived its node agent"
        wait_until(
            lambda: any(n.node_id == node_id and n.pid not in (0, agent.pid) for n in client.status()["nodes"]),
            RECOVERY_S,
            "a new agent registered",
        )
        wait_until(
            lambda: all(r.state == "ready" and r.pid not in hosts for r in deployment(client, name).replicas),
            RECOVERY_S,
            "the replicas are back",
        )
        back = time.time()
        assert back - killed < RECOVERY_S
        assert serves_again(lambda: client.generate(name, prompt=PROMPT, max_tokens=8, timeout=5), killed) < RECOVERY_S
        load.wait_for(16, started_after=back)
    finally:
        load.stop()
    summary = load.check({"runner_crashed"}, before=back)
    print(summary, f"replicas back after {back - killed:.1f} s")
    (new_agent,) = [n for n in client.status()["nodes"] if n.node_id == node_id]
    children = {p.pid for p in psutil.Process(new_agent.pid).children()}
    assert {r.pid for r in deployment(client, name).replicas} <= children


def test_sigkill_of_the_heads_node_agent(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "a.yaml",
        tiny("a", replicas=2, limits={"max_inflight_per_replica": 8}, supervision={"backoff_initial_s": 0.05}),
        http={"port": 0, "request_timeout_s": 20},
    )
    node = Node("--node-id", "head-a", config=cfg)
    try:
        with Client(node.address) as client:
            kill_agent_under_load(client, "head-a", "a", http_url(node))
    finally:
        assert node.stop() == []


def test_sigkill_of_a_joined_nodes_agent(tmp_path: Path) -> None:
    head = Node("--role", "head", "--node-id", "head-b")
    cpu = None
    try:
        cpu = Node("--role", "cpu", "--node-id", "cpu-b", "--join", head.address)
        with Client(head.address) as client:
            wait_until(lambda: "cpu-b" in {n.node_id for n in client.status()["nodes"]}, 30, "cpu node joined")
            client.deploy(
                tiny(
                    "b",
                    replicas=2,
                    placement={"role": "cpu"},
                    limits={"max_inflight_per_replica": 8},
                    supervision={"backoff_initial_s": 0.05},
                )
            )
            kill_agent_under_load(client, "cpu-b", "b", None)
    finally:
        left = cpu.stop() if cpu is not None else []
        assert head.stop() == [] and left == []
