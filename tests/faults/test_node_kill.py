"""Fault 5: kill -9 of a whole joined node (its node process and every process of its actor
system at once, as a host that dies) under mixed load, with the invariants of the suite.

What must hold: the head declares the node lost after its heartbeats stop
(`ATOMR_NODE_TIMEOUT_S`, 3 s here); the requests its replica held are answered (re-dispatched, or
`runner_crashed` after text) and none hangs; the replica is started again on the other node, so
the deployment is back to full strength within the recovery target; nothing is left behind.
"""

from __future__ import annotations

import time

import psutil
import pytest
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from atomr.cluster.system import system_processes
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
)

MAX_TOKENS = 160
NODE_TIMEOUT_S = 3


def test_sigkill_of_a_whole_joined_node_under_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATOMR_NODE_TIMEOUT_S", str(NODE_TIMEOUT_S))
    nodes: list[Node] = []
    try:
        head = Node("--role", "head", "--node-id", "head-n", "--http-port", "0")
        nodes.append(head)
        for name in ("cpu-a", "cpu-b"):
            nodes.append(Node("--role", "cpu", "--node-id", name, "--join", head.address))
        _, a, b = nodes
        want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
        with Client(head.address) as client:
            wait_until(lambda: {"cpu-a", "cpu-b"} <= {n.node_id for n in client.status()["nodes"]}, 30, "nodes joined")
            spec = tiny("n", replicas=2, placement={"role": "cpu"}, limits={"max_inflight_per_replica": 8})
            client.deploy(spec)
            assert sorted(r.node_id for r in deployment(client, "n").replicas) == ["cpu-a", "cpu-b"]
            load = Load(client, "n", PROMPT, want, MAX_TOKENS, kinds=KINDS, workers=8, http=http_url(head))
            try:
                assert load.first_chunk.wait(30)
                load.wait_for(16)
                doomed = [*system_processes(b.port), psutil.Process(b.proc.pid)]
                for p in doomed:
                    p.kill()
                killed = time.time()
                for p in doomed:
                    assert process_gone(p.pid)
                wait_until(
                    lambda: "cpu-b" not in {n.node_id for n in client.status()["nodes"]},
                    NODE_TIMEOUT_S + 5,
                    "node b declared lost",
                )
                wait_until(
                    lambda: (
                        [(r.node_id, r.state) for r in deployment(client, "n").replicas].count(("cpu-a", "ready")) == 2
                    ),
                    RECOVERY_S,
                    "both replicas serving on node a",
                )
                back = time.time()
                assert back - killed < RECOVERY_S
                assert serves_again(lambda: client.generate("n", prompt=PROMPT, max_tokens=8, timeout=5), killed) < 5
                load.wait_for(16, started_after=back)
            finally:
                load.stop()
            print(load.check({"runner_crashed"}, before=back), f"full strength after {back - killed:.1f} s")
            a_pids = {p.pid for p in system_processes(a.port)}
            assert {r.pid for r in deployment(client, "n").replicas} <= a_pids
    finally:
        left = [n.stop() for n in reversed(nodes)]
        assert left == [[]] * len(nodes), left
