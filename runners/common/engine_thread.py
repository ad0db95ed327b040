"""`EngineThread`: the one daemon thread a local runner's engine work runs on.

ONNX Runtime GenAI's generators and ONNX Runtime's sessions are driven from one thread each (the
event loop must never block on them); the runner's coroutines hand jobs to that thread and await
futures it settles. This class is the thread's life: started at load, `alive` for health, and a
job refused with `unavailable` once the thread has died, rather than waiting for ever. Subclasses
write `_main` (the thread's loop) and `_accept` (take a job in).
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

from atomr.core.errors import UnavailableError

J = TypeVar("J")


class EngineThread(Generic[J]):
    """A daemon thread named `name` that runs `_main`; `submit` hands it a job."""

    def __init__(self, name: str, what: str) -> None:
        self._what = what  # for the error when the thread has stopped: "the ORT batching thread"
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def submit(self, job: J) -> None:
        if not self.alive:
            raise UnavailableError(f"{self._what} has stopped")
        self._accept(job)

    def _accept(self, job: J) -> None:
        raise NotImplementedError

    def _main(self) -> None:
        raise NotImplementedError
