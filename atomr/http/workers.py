"""Several processes serving one HTTP front: where each worker stands, and its listening socket.

With ``http.workers: N`` the head runs N gateway processes, each serving the whole front on the
same port: every worker binds its own socket with ``SO_REUSEPORT`` and the kernel spreads new
connections over them, so the front uses N cores with no process in between. What must stay exact
across the workers is shared: rate limits through the rate limiter's leases (as between any
gateways), the tenants' concurrency quotas and the Responses store through files in one folder
that the node makes for its workers (`shared_dir`, `atomr.http.quota`,
`atomr.http.responses_api.store`), metrics through the collector, which adds up every worker's
snapshot (each has its own source).

Any process of the same user may bind a port opened with ``SO_REUSEPORT`` as well and receive a
share of its connections; a single worker (the default) binds without it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """Which of the front's `workers` this process is, and the folder they share (None for one)."""

    worker: int = 0
    workers: int = 1
    shared_dir: str | None = None


def listening_socket(bind: str, port: int, *, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    """A TCP socket listening on bind:port (port 0: any free one), for uvicorn to serve."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((bind, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
