"""Client scenarios run on a host that runs no node (a network namespace of its own).

    python -m tests.remote_client ADDRESS deploy-stream-undeploy   # deploy on the gpu node, stream, undeploy
    python -m tests.remote_client ADDRESS wrong-key KEYFILE        # a client with another key
    python -m tests.remote_client ADDRESS node-fault FLAG HTTP     # load while the test kills the gpu node
    python -m tests.remote_client ADDRESS no-spare-gpu FLAGS       # degrade when the only gpu host dies, then restore

Each prints JSON lines: what it saw (node ids, where the deployment ran, its text, the error kinds
it met), for the test in the head's host to check.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import psutil

from atomr.client import Client
from atomr.config import deployment_from_dict
from atomr.core.errors import InferenceError

PROMPT = "Once upon a time"
FAR = {"name": "far", "model": "builtin:tiny-llama", "placement": {"role": "gpu"}, "engine": {"intra_op_threads": 1}}


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def deploy_stream_undeploy(address: str) -> None:
    with Client(address) as client:
        deadline = time.monotonic() + 60
        while len(client.status()["nodes"]) < 2:  # the gpu node has joined
            assert time.monotonic() < deadline, client.status()["nodes"]
            time.sleep(0.2)
        nodes = sorted(n.node_id for n in client.status()["nodes"])
        (info,) = client.deploy(deployment_from_dict(FAR))
        placed = sorted({r.node_id for r in info.replicas})
        stream = client.stream("far", prompt=PROMPT, max_tokens=16)
        text = "".join(chunk.text for chunk in stream)
        whole = client.generate("far", prompt=PROMPT, max_tokens=16)
        gone = client.undeploy("far")
        left = [d.name for d in client.list_deployments()]
        say(
            nodes=nodes,
            placed=placed,
            text=text,
            whole=whole.text,
            replica=whole.replica,
            undeployed=gone.name,
            left=left,
        )
    # the light member is stopped with the last client: nothing of it is left in this process's tree
    say(children=[p.pid for p in psutil.Process(os.getpid()).children(recursive=True)])


def wrong_key(address: str, key_file: str) -> None:
    t0 = time.monotonic()
    try:
        Client(address, cluster_key_file=key_file)
    except InferenceError as exc:
        say(kind=exc.kind, message=exc.message, seconds=round(time.monotonic() - t0, 3))
    else:
        say(kind=None)
    say(children=[p.pid for p in psutil.Process(os.getpid()).children(recursive=True)])


def node_fault(address: str, flag: str, http: str) -> None:
    """Deploy one replica (placed on the gpu node: the first by name), load it from this host,
    say "loaded", wait for the test to kill the gpu node (it writes the time to `flag`), then
    check the fault suite's invariants and how soon the head's host served again. The load is the
    fault suite's: streams and whole answers through this Client and through the head's HTTP
    front at `http`."""
    from pathlib import Path

    from atomr.runners.local.ort.runner import ort_greedy_reference

    from tests.faults.harness import KINDS, MODEL, RECOVERY_S, Load, deployment, serves_again, tiny, wait_until

    want = ort_greedy_reference(MODEL, PROMPT, 120)
    with Client(address) as client:
        wait_until(lambda: len(client.status()["nodes"]) == 2, 60, "the gpu node joined")
        client.deploy(tiny("n", limits={"max_inflight_per_replica": 8}))
        say(placed=[r.node_id for r in deployment(client, "n").replicas])
        load = Load(client, "n", PROMPT, want, 120, kinds=KINDS, workers=8, http=http)
        try:
            assert load.first_chunk.wait(60)
            load.wait_for(12)
            say(loaded=True)
            wait_until(lambda: Path(flag).exists() and Path(flag).read_text(), 120, "the kill")
            killed = float(Path(flag).read_text())
            wait_until(
                lambda: [(r.node_id, r.state) for r in deployment(client, "n").replicas] == [("head", "ready")],
                RECOVERY_S + 30,
                "the replica serving on the head's host",
            )
            back = time.time()
            again = serves_again(lambda: client.generate("n", prompt=PROMPT, max_tokens=8, timeout=5), killed)
            load.wait_for(12, started_after=back)
        finally:
            load.stop()
        summary = load.check({"runner_crashed", "unavailable", "timeout"}, before=back)
        say(
            recovered_s=back - killed,
            served_again_s=again,
            requests=summary.sent,
            ok=summary.ok,
            errors=dict(summary.errors),
        )
    say(children=[p.pid for p in psutil.Process(os.getpid()).children(recursive=True)])


def no_spare_gpu(address: str, flags: str) -> None:
    """The supervision scenario across hosts: a one-GPU deployment on the only gpu host streams
    80 requests; the test kills that host ("killed" appears in `flags`); the replica is isolated,
    the deployment degraded, every request got one end (text, then runner_crashed; or
    unavailable before any), and a new request is refused at once; the test starts another gpu
    host ("joined"), where the replica is placed and serves."""
    from pathlib import Path

    from atomr.runners.local.ort.runner import ort_greedy_reference

    from tests.faults.harness import MODEL, tiny, wait_until
    from tests.test_supervision import Tracker, replicas

    folder = Path(flags)
    with Client(address) as client:
        wait_until(lambda: len(client.status()["nodes"]) == 2, 60, "the gpu host joined")
        # one request at a time, unbatched: the 80 take far longer than the test needs to kill the host
        spec = tiny(
            "alone",
            gpus_per_replica=1,
            placement={"role": "gpu"},
            supervision={"backoff_initial_s": 0.05},
            limits={"max_inflight_per_replica": 1},
            engine={"intra_op_threads": 1, "scheduler": "generators"},
        )
        client.deploy(spec)
        track = Tracker(client, "alone", 80, 200)
        assert track.streaming.acquire(timeout=60)
        say(streaming=True)
        wait_until(lambda: (folder / "killed").exists(), 120, "the kill")
        wait_until(lambda: "gpu-a" not in {n.node_id for n in client.status()["nodes"]}, 15, "gpu-a declared lost")
        wait_until(lambda: replicas(client, "alone")[0].state == "isolated", 10, "the replica isolated")
        (r,) = replicas(client, "alone")
        state = next(d for d in client.list_deployments() if d.name == "alone").state
        track.wait(60)
        want = ort_greedy_reference(MODEL, PROMPT, 200)
        ends = []
        for chunks, outcome in zip(track.chunks, track.outcome, strict=True):
            if isinstance(outcome, InferenceError):
                ends.append([outcome.kind, chunks > 0])
            else:
                ends.append(["ok" if outcome == want else "other text", chunks > 0])
        t0 = time.monotonic()
        try:
            client.generate("alone", prompt=PROMPT, max_tokens=4)
            refused = None
        except InferenceError as exc:
            refused = [exc.kind, round(time.monotonic() - t0, 3)]
        say(error=r.error, restarts=r.restarts, state=state, finals=track.finals, ends=ends, refused=refused)
        wait_until(lambda: (folder / "joined").exists(), 120, "the new gpu host")
        wait_until(lambda: replicas(client, "alone")[0].state == "ready", 60, "the replica on the new host")
        (r,) = replicas(client, "alone")
        state = next(d for d in client.list_deployments() if d.name == "alone").state
        text = client.generate("alone", prompt=PROMPT, max_tokens=8).text
        say(node=r.node_id, gpus=r.gpu_ids, error=r.error, state=state, text=text)
    say(children=[p.pid for p in psutil.Process(os.getpid()).children(recursive=True)])


def main() -> None:
    address, what = sys.argv[1], sys.argv[2]
    if what == "deploy-stream-undeploy":
        deploy_stream_undeploy(address)
    elif what == "wrong-key":
        wrong_key(address, sys.argv[3])
    elif what == "no-spare-gpu":
        no_spare_gpu(address, sys.argv[3])
    elif what == "node-fault":
        node_fault(address, sys.argv[3], sys.argv[4])
    else:
        raise SystemExit(f"unknown scenario {what!r}")


if __name__ == "__main__":
    main()
