"""Each tenant's requests in flight on the HTTP front, against its `max_concurrency`.

One worker counts in its own memory. Several workers (`atomr.http.workers`) count in one shared
file, mapped into each: a row of counters per worker, one per tenant; a worker admits a request
when the sum over all rows is under the quota, reading and writing under an exclusive `lockf`
lock on the file, so the quota is exact across processes. A worker that is started again
(its process died with requests in flight) clears its own row, so the dead process's requests
stop counting. Measured here: the locked check and update costs a few microseconds.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from collections.abc import Sequence
from typing import Any

from atomr.core.errors import RateLimitedError
from atomr.core.tenants import Tenant

COUNTER_BYTES = 8


class Quota:
    """Requests in flight per tenant (`tenants`: every tenant's name, in the same order in every
    worker); shared with the other workers through `path` when given."""

    def __init__(
        self, tenants: Sequence[str] = (), *, worker: int = 0, workers: int = 1, path: str | None = None
    ) -> None:
        self._index = {name: i for i, name in enumerate(tenants)}
        self._width = max(1, len(self._index))
        self._rows = workers
        self._row = worker * self._width
        size = COUNTER_BYTES * self._width * workers
        self._fd: int | None = None
        self._mem: Any
        if path is None:
            self._mem = bytearray(size)
        else:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            if os.fstat(self._fd).st_size < size:
                os.ftruncate(self._fd, size)
            self._mem = mmap.mmap(self._fd, size)
        self._counts = memoryview(self._mem).cast("q")
        with self._locked():
            for t in range(self._width):
                self._counts[self._row + t] = 0  # a worker started again: its predecessor's requests ended

    def inflight(self, tenant: str) -> int:
        """Requests of `tenant` in flight on every worker."""
        t = self._index.get(tenant)
        if t is None:
            return 0
        return sum(self._counts[r * self._width + t] for r in range(self._rows))

    def enter(self, tenant: Tenant | None) -> None:
        """Count one more request of `tenant`, or refuse it (rate_limited) at its quota. A tenant
        that only runtime keys name has no quota here (a key's own cap is the key keeper's)."""
        t = self._index.get(tenant.name) if tenant is not None else None
        if tenant is None or t is None:
            return
        with self._locked():
            n = self.inflight(tenant.name)
            if n >= tenant.max_concurrency:
                raise RateLimitedError(
                    f"tenant {tenant.name!r} already has {n} requests in flight (max_concurrency)", retry_after=1.0
                )
            self._counts[self._row + t] += 1

    def leave(self, tenant: Tenant | None) -> None:
        t = self._index.get(tenant.name) if tenant is not None else None
        if t is None:
            return
        with self._locked():
            self._counts[self._row + t] -= 1

    def close(self) -> None:
        self._counts.release()
        if self._fd is not None:
            self._mem.close()
            os.close(self._fd)
            self._fd = None

    def _locked(self) -> _FileLock:
        return _FileLock(self._fd)


class _FileLock:
    """An exclusive lock on the shared file for a `with` block (nothing to lock with one worker)."""

    __slots__ = ("fd",)

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_UN)
