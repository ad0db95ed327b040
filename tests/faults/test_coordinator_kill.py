"""Fault 2: kill -9 of a deployment's coordinator under mixed load.

Finding it: status reports each deployment's `coordinator_pid`; the test also checks where that
process sits in the head's process tree (Thespian forks children from their parent actor, and
cmdlines are all `python -m atomr.node ...`, so the tree is what tells processes apart): its
parent is the deployment manager, a direct child of the actor system's admin (the one process of
the tree whose parent is outside it), and it is not a node agent (whose pids status lists, and
whose children are the runner hosts).

What must hold: the manager starts another coordinator at once, which adopts the running
replicas (same runner host processes, no restart) and the requests they hold; requests that
waited in the dead coordinator's queue are sent again by their callers: the Client (the route's
`since` tells it the coordinator was replaced) and the HTTP front (its gateway sees the route
change). Every request ends with the exact answer, none with an error.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
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
    write_config,
)

MAX_TOKENS = 160


def coordinator_pid(client: Client, node: Node, name: str) -> int:
    """The coordinator of `name`, checked against the head's process tree."""
    pid = deployment(client, name).coordinator_pid
    tree = {p.pid: p for p in system_processes(node.port)}
    (admin,) = [p for p in tree.values() if p.ppid() not in tree]
    agents = {n.pid for n in client.status()["nodes"]}
    manager = tree[pid].ppid()
    assert tree[manager].ppid() == admin.pid and manager not in agents, (pid, manager, admin.pid)
    return pid


def test_coordinator_sigkill_under_mixed_load(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "c.yaml",
        # few credits per replica: requests wait in the coordinator's queue when it dies
        tiny("c", replicas=2, limits={"max_inflight_per_replica": 2}),
        http={"port": 0, "request_timeout_s": 20},
    )
    node = Node(config=cfg)
    try:
        want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
        with Client(node.address) as client:
            victim = coordinator_pid(client, node, "c")
            hosts = {r.pid for r in deployment(client, "c").replicas}
            load = Load(client, "c", PROMPT, want, MAX_TOKENS, kinds=KINDS, workers=10, http=http_url(node))
            try:
                assert load.first_chunk.wait(30)
                load.wait_for(20)
                os.kill(victim, signal.SIGKILL)
                killed = time.time()
                assert process_gone(victim)
                wait_until(
                    lambda: deployment(client, "c").coordinator_pid not in (0, victim), RECOVERY_S, "a new coordinator"
                )
                assert coordinator_pid(client, node, "c") != victim
                assert serves_again(lambda: client.generate("c", prompt=PROMPT, max_tokens=8, timeout=5), killed) < 5
                back = time.time()
                load.wait_for(20, started_after=back)
            finally:
                load.stop()
            info = deployment(client, "c")
            assert info.state == "ready" and {r.pid for r in info.replicas} == hosts  # adopted, not restarted
            assert all(r.restarts == 0 for r in info.replicas)
            for p in hosts:
                assert psutil.pid_exists(p)
        try:
            print(load.check(set()))  # no error at all
        except AssertionError:  # keep the node's story of the failure (every line but the plain successes)
            print("\n".join(line for line in node.output().splitlines() if '"outcome": "ok"' not in line))
            raise
    finally:
        assert node.stop() == []
