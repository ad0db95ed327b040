"""Fault 1: kill -9 of a runner host while Client streams, Client whole answers, HTTP SSE streams
and HTTP JSON answers run together against its deployment.

Its coordinator answers every request the replica held (re-dispatched when nothing had streamed,
`runner_crashed` after text), the node agent's supervision starts the replica again, and every
request sent once it is back succeeds."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

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


def test_runner_host_sigkill_under_mixed_load(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "k.yaml",
        tiny("k", replicas=2, limits={"max_inflight_per_replica": 8}, supervision={"backoff_initial_s": 0.05}),
        http={"port": 0, "request_timeout_s": 20},
    )
    node = Node(config=cfg)
    try:
        want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
        with Client(node.address) as client:
            victim = deployment(client, "k").replicas[0]
            load = Load(client, "k", PROMPT, want, MAX_TOKENS, kinds=KINDS, workers=8, http=http_url(node))
            try:
                assert load.first_chunk.wait(30)
                load.wait_for(16)
                os.kill(victim.pid, signal.SIGKILL)
                killed = time.time()
                assert process_gone(victim.pid)
                wait_until(
                    lambda: any(
                        r.replica_id == victim.replica_id and r.state == "ready" and r.pid != victim.pid
                        for r in deployment(client, "k").replicas
                    ),
                    RECOVERY_S,
                    "the killed replica is back",
                )
                back = time.time()
                assert serves_again(lambda: client.generate("k", prompt=PROMPT, max_tokens=8, timeout=5), killed) < 5
                load.wait_for(16, started_after=back)  # and it keeps serving the load
            finally:
                load.stop()
            summary = load.check({"runner_crashed"}, before=back)
            assert summary.ok >= 32, summary
            (restarted,) = [r for r in deployment(client, "k").replicas if r.replica_id == victim.replica_id]
            assert restarted.restarts == 1
            # nothing is left in flight anywhere (status refreshes its counts about once a second)
            wait_until(lambda: all(r.inflight == 0 for r in deployment(client, "k").replicas), 5, "in-flight drained")
            print(summary)
    finally:
        assert node.stop() == []
