"""A lean HTTP/1.1 load generator for the benchmarks: keep-alive connections on asyncio.

Each connection sends a POST and reads the whole response (Content-Length or chunked), so the
time measured is the server's and the network's, with very little client work in between (a
general-purpose client such as httpx costs more per request than the servers measured here).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass
class LoadResult:
    latencies: list[float]
    wall_s: float
    errors: int

    @property
    def req_s(self) -> float:
        return len(self.latencies) / self.wall_s if self.wall_s else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000 if self.latencies else float("nan")


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n{extra}\r\n"
        )
        self.writer.write(head.encode() + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, chunked = None, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if length is not None:
            return status, await self.reader.readexactly(length)
        if not chunked:
            return status, await self.reader.read()
        out = bytearray()
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size == 0:
                await self.reader.readline()
                return status, bytes(out)
            out += await self.reader.readexactly(size)
            await self.reader.readexactly(2)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (ConnectionError, OSError):
                pass
            self.writer = None


async def run_load(
    host: str, port: int, path: str, body: bytes, n: int, concurrency: int, headers: dict[str, str] | None = None
) -> LoadResult:
    """n POSTs from `concurrency` keep-alive connections (closed loop); latencies of the 200s."""
    latencies: list[float] = []
    errors = 0
    per_conn = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    conns = [Connection(host, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.open() for c in conns))

    async def worker(conn: Connection, k: int) -> None:
        nonlocal errors
        for _ in range(k):
            t = time.perf_counter()
            try:
                status, _ = await conn.post(path, body, headers)
            except (ConnectionError, OSError, ValueError, asyncio.IncompleteReadError):
                errors += 1
                await conn.close()
                continue
            if status == 200:
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(c, k) for c, k in zip(conns, per_conn, strict=True)))
    wall = time.perf_counter() - start
    await asyncio.gather(*(c.close() for c in conns))
    return LoadResult(latencies, wall, errors)
