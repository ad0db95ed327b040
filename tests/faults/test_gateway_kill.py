"""Fault 4: kill -9 of the gateway process (which also serves the HTTP front) under mixed load.

The gateway is found as the process that listens on the HTTP front's port (the front runs on the
gateway's sidecar loop), below the head's actor system admin.

What must hold: Client requests that the gateway had already forwarded finish normally; those it
held when it died are sent again by the Client once it finds the gateway's global name bound to a
new process (the head's watchdog, or the Client itself, re-creates it); no Client request hangs
past its deadline. HTTP callers connected to the dead process lose their connection (nothing can
answer them), and the head serves HTTP again on the same port within the recovery target.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from atomr.cluster.system import processes_on_port, system_processes
from tests.conftest import Node
from tests.faults.harness import (
    KINDS,
    MODEL,
    PROMPT,
    Load,
    http_completion,
    http_url,
    process_gone,
    serves_again,
    tiny,
    write_config,
)

MAX_TOKENS = 160


def gateway_pid(node: Node, base: str) -> int:
    """The gateway: the one process of the head's actor system listening on the HTTP port."""
    port = int(base.rpartition(":")[2])
    (holder,) = processes_on_port(port)
    assert holder.pid in {p.pid for p in system_processes(node.port)}
    return holder.pid


def test_gateway_sigkill_under_mixed_load(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "g.yaml",
        tiny("g", replicas=2, limits={"max_inflight_per_replica": 8}),
        http={"port": 0, "request_timeout_s": 20},
    )
    node = Node(config=cfg)
    try:
        want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
        base = http_url(node)
        with Client(node.address) as client:
            load = Load(client, "g", PROMPT, want, MAX_TOKENS, kinds=KINDS, workers=8, http=base, timeout=15)
            try:
                assert load.first_chunk.wait(30)
                load.wait_for(16)
                victim = gateway_pid(node, base)
                os.kill(victim, signal.SIGKILL)
                killed = time.time()
                assert process_gone(victim)
                # the Client finds the new gateway by name; HTTP is served again on the same port
                serves_again(lambda: client.generate("g", prompt=PROMPT, max_tokens=8, timeout=3), killed)
                via_http = serves_again(lambda: http_completion(node, "g"), killed)
                back = time.time()
                assert gateway_pid(node, base) != victim
                load.wait_for(16, started_after=back)
            finally:
                load.stop()
            # HTTP callers of the dead process lost their connection; Client callers lost nothing
            summary = load.check({"http-transport"}, before=back)
            for o in load.outcomes:
                assert o.error is None or o.kind.startswith("http"), o
            print(summary, f"HTTP back after {via_http:.1f} s")
    finally:
        assert node.stop() == []
