"""Client scenarios that the multi-host tests run inside a host's network namespace.

    python -m tests.multihost_client ADDRESS deploy-far   # deploy "far" on the cpu node, answer once
    python -m tests.multihost_client ADDRESS check-far    # wait until "far" serves again, answer once

Each prints one JSON line: the replicas' pids and their process start times, and the answer's
text (greedy, so the test compares it with the reference).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import psutil

from atomr.client import Client
from atomr.config import deployment_from_dict

PROMPT = "Once upon a time"
FAR = {"name": "far", "model": "builtin:tiny-llama", "replicas": 2, "placement": {"role": "cpu"}}


def far(client: Client) -> Any:
    return next((d for d in client.status()["deployments"] if d.name == "far"), None)


def main() -> None:
    address, what = sys.argv[1], sys.argv[2]
    with Client(address) as client:
        if what == "deploy-far":
            deadline = time.monotonic() + 60
            while len(client.status()["nodes"]) < 2:  # the cpu node has joined
                assert time.monotonic() < deadline, client.status()["nodes"]
                time.sleep(0.2)
            client.deploy(deployment_from_dict({**FAR, "engine": {"intra_op_threads": 1}}))
        deadline = time.monotonic() + 60
        while (info := far(client)) is None or info.state != "ready":
            assert time.monotonic() < deadline, info
            time.sleep(0.2)
        text = "".join(c.text for c in client.stream("far", prompt=PROMPT, max_tokens=16))
        hosts = {r.pid: psutil.Process(r.pid).create_time() for r in info.replicas}
        print(json.dumps({"hosts": hosts, "text": text, "nodes": sorted(n.node_id for n in client.status()["nodes"])}))


if __name__ == "__main__":
    main()
