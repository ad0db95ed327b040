"""Client scenarios run on a host that runs no node (a network namespace of its own).

    python -m tests.remote_client ADDRESS deploy-stream-undeploy   # deploy on the gpu node, stream, undeploy
    python -m tests.remote_client ADDRESS wrong-key KEYFILE        # a client with another key
    python -m tests.remote_client ADDRESS load SECONDS             # stream and generate until told to stop

Each prints JSON lines: what it saw (node ids, where the deployment ran, its text, the error kinds
it met), for the test in the head's host to check.
"""

from __future__ import annotations

import json
import os
import sys
import threading
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


def load(address: str, model: str, seconds: float) -> None:
    """Streams and whole answers from several threads for `seconds`; one JSON line per request's end."""
    stop = time.monotonic() + seconds
    lock = threading.Lock()

    def worker(stream: bool) -> None:
        while time.monotonic() < stop:
            text, error = "", None
            try:
                if stream:
                    for chunk in client.stream(model, prompt=PROMPT, max_tokens=24, timeout=30):
                        text += chunk.text
                else:
                    text = client.generate(model, prompt=PROMPT, max_tokens=24, timeout=30).text
            except InferenceError as exc:
                error = exc.kind
            except Exception as exc:  # noqa: BLE001 - anything unstructured is a failure the test reports
                error = f"unstructured {type(exc).__name__}: {exc}"
            with lock:
                say(at=time.time(), stream=stream, text=text, error=error)
            if error is not None:
                time.sleep(0.2)

    with Client(address) as client:
        threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    say(done=True, children=[p.pid for p in psutil.Process(os.getpid()).children(recursive=True)])


def main() -> None:
    address, what = sys.argv[1], sys.argv[2]
    if what == "deploy-stream-undeploy":
        deploy_stream_undeploy(address)
    elif what == "wrong-key":
        wrong_key(address, sys.argv[3])
    elif what == "load":
        load(address, sys.argv[3], float(sys.argv[4]))
    else:
        raise SystemExit(f"unknown scenario {what!r}")


if __name__ == "__main__":
    main()
