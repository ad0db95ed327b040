"""What the HTTP front's connection limits cost (`atomr.http.connection_guard`).

Two uvicorn servers, each in its own process, serve the same trivial ASGI app (a small JSON
answer): one with uvicorn's plain httptools protocol, one with the guarded protocol atomr's front
uses (header bytes and count counted, header and body timers, the connection cap). A client
measures, interleaved in rounds so that the machine's noise falls on both alike: the p50 of
sequential requests on one keep-alive connection, and of requests each on a new connection
(where the guard's per-connection work is), and prints medians over rounds with their ratio.

    python scripts/bench/connection_guard.py [--rounds 5] [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

SERVER = r"""
import asyncio, sys, uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from atomr.http.connection_guard import ConnectionLimits, guarded_protocol

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b'{"ok":true}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")]})
    await send({"type": "http.response.body", "body": body})

limits = ConnectionLimits(1024, 32768, 128, 10.0, 60.0)
proto = guarded_protocol(limits, lambda reason: None) if sys.argv[2] == "guarded" else HttpToolsProtocol
uvicorn.run(
    app, host="127.0.0.1", port=int(sys.argv[1]), http=proto, log_level="warning", access_log=False, lifespan="off"
)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(kind: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), kind])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the {kind} server did not start")


def keep_alive_p50(port: int, n: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", "/", headers={"authorization": "Bearer x" * 4})
        conn.getresponse().read()
        times.append(time.perf_counter() - t0)
    conn.close()
    return statistics.median(times) * 1000


def new_connection_p50(port: int, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        conn.getresponse().read()
        conn.close()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def run(rounds: int, requests: int) -> dict[str, Any]:
    """Medians over `rounds` of each measure, for the plain and the guarded protocol."""
    servers = {kind: start(kind) for kind in ("plain", "guarded")}
    per: dict[str, list[float]] = {}
    try:
        for _ in range(rounds):
            for kind, (_, port) in servers.items():
                keep_alive_p50(port, requests // 10)  # warm up
                per.setdefault(f"{kind} keep-alive p50", []).append(keep_alive_p50(port, requests))
                per.setdefault(f"{kind} new-connection p50", []).append(new_connection_p50(port, requests // 4))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
    return {k: statistics.median(v) for k, v in per.items()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=2000)
    args = p.parse_args()
    med = run(args.rounds, args.requests)
    print("| measure | plain httptools (ms) | guarded (ms) | ratio |")
    print("|---|---|---|---|")
    for what in ("keep-alive p50", "new-connection p50"):
        plain, guarded = med[f"plain {what}"], med[f"guarded {what}"]
        print(f"| {what} | {plain:.4f} | {guarded:.4f} | {guarded / plain:.3f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
