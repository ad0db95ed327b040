"""Connections to an HTTP front of several worker processes, each traced to the worker that
accepted it (the gateway process holding the server side), so a test can cover every worker."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

import psutil

from atomr.cluster.system import system_processes
from tests.conftest import Node
from tests.faults.harness import wait_until


def listeners(node: Node, port: int) -> set[int]:
    """The pids of the node's processes listening on the HTTP port."""
    found = set()
    for p in system_processes(node.port):
        try:
            if any(c.status == "LISTEN" and c.laddr.port == port for c in p.net_connections("tcp")):
                found.add(p.pid)
        except psutil.Error:
            continue
    return found


class Conn:
    """A keep-alive connection to the front, and the pid of the worker that accepted it."""

    def __init__(self, port: int, workers: Callable[[], set[int]], key: str | None, within_s: float = 30.0) -> None:
        self.key = key
        self.http = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.http.connect()
        mine = self.http.sock.getsockname()[1]
        found: list[int] = []

        def accepted() -> bool:
            for pid in workers():
                try:
                    conns = psutil.Process(pid).net_connections("tcp")
                except psutil.Error:
                    continue
                if any(c.raddr and c.raddr.port == mine for c in conns):
                    found.append(pid)
                    return True
            return False

        try:
            wait_until(accepted, within_s, "the connection accepted by a worker")
        except AssertionError:
            self.http.close()
            raise
        self.worker = found[0]

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"content-type": "application/json"}
        if self.key is not None:
            headers["authorization"] = f"Bearer {self.key}"
        self.http.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        resp = self.http.getresponse()
        data = resp.read()
        return resp.status, json.loads(data) if data else None

    def close(self) -> None:
        self.http.close()


def one_on_each(port: int, workers: set[int], key: str | None, per_worker: int = 1) -> dict[int, list[Conn]]:
    """`per_worker` connections accepted by each worker (connections are opened until then)."""
    by_worker: dict[int, list[Conn]] = {pid: [] for pid in workers}
    extra: list[Conn] = []
    for _ in range(200):
        c = Conn(port, lambda: workers, key)
        (by_worker[c.worker] if len(by_worker[c.worker]) < per_worker else extra).append(c)
        if all(len(cs) == per_worker for cs in by_worker.values()):
            break
    for c in extra:
        c.close()
    assert all(len(cs) == per_worker for cs in by_worker.values()), "the kernel sent every connection to one worker"
    return by_worker
