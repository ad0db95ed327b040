"""The vLLM engine core process: starting it with its output captured (`EngineOutput`, so that a
failure is reported with vLLM's own reason), stopping it (`shutdown`), and `LoadedEngine`, what
`load` made (the engine, its tokenizer, its loop, why its core died).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomr.runners.local.vllm.engine import Vllm, error_text

from atomr.core.errors import InternalError

_OUTPUT_LOCK = threading.Lock()  # one engine start at a time redirects this process's fds 1 and 2
_EXCEPTION_LINE = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Fault)): (.+)$")


class EngineOutput:
    """Copies what the engine core process prints through to this process's stdout/stderr and
    keeps the last lines, to say why the engine failed.

    The engine core is started (spawned) inside `capture()`, so it inherits the pipes as its fds 1
    and 2 and keeps writing through them for its whole life; outside `capture()` this process
    writes to its own fds as usual.
    """

    def __init__(self, keep: int = 400) -> None:
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._count = 0
        self._last_data = 0.0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        with _OUTPUT_LOCK:
            _flush_std()
            restore: list[tuple[int, int]] = []
            try:
                for fd in (1, 2):
                    try:
                        saved = os.dup(fd)
                    except OSError:  # no such stream in this process: nothing to copy
                        continue
                    read_end, write_end = os.pipe()
                    os.dup2(write_end, fd)
                    os.close(write_end)
                    restore.append((fd, saved))
                    threading.Thread(
                        target=self._pump, args=(read_end, saved), name=f"atomr-vllm-output-{fd}", daemon=True
                    ).start()
                yield
            finally:
                _flush_std()
                for fd, saved in restore:
                    os.dup2(saved, fd)  # the pump thread keeps `saved` to write what the engine prints

    def _pump(self, read_end: int, out: int) -> None:
        pending = b""
        try:
            while data := os.read(read_end, 65536):
                with contextlib.suppress(OSError):
                    _write_all(out, data)
                pending += data
                *lines, pending = pending.split(b"\n")
                pending = pending[-65536:]
                with self._lock:
                    self._last_data = time.monotonic()
                    for line in lines:
                        self._lines.append(line.decode("utf-8", "replace"))
                        self._count += 1
        finally:
            os.close(read_end)
            os.close(out)

    def mark(self) -> int:
        """Lines seen so far: pass to `reason` to look only at what came later."""
        with self._lock:
            return self._count

    def settle(self, quiet: float = 0.15, limit: float = 1.5) -> None:
        """Wait (a little) until nothing new has come for `quiet` seconds: a dead process's last words."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            with self._lock:
                if time.monotonic() - self._last_data >= quiet:
                    return
            time.sleep(0.05)

    def reason(self, since: int = 0) -> str:
        """The last exception line printed (after `since`), e.g. 'ValueError: ...'; '' if none."""
        with self._lock:
            fresh = min(len(self._lines), self._count - since)
            lines = list(self._lines)[len(self._lines) - fresh :] if fresh > 0 else []
        for line in reversed(lines):
            m = _EXCEPTION_LINE.search(line)
            if m and not m.group(1).endswith("EngineDeadError"):
                return f"{m.group(1)}: {m.group(2).strip()}"
        return ""


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def core_processes(engine: Any) -> list[Any]:
    """The engine core processes of an AsyncLLM (vLLM internals; empty if they moved)."""
    resources = getattr(getattr(engine, "engine_core", None), "resources", None)
    return list(getattr(getattr(resources, "engine_manager", None), "processes", None) or [])


def _exit_status(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def start_engine(v: Vllm, config: Any, kwargs: Mapping[str, Any], folder: Path, output: EngineOutput) -> Any:
    try:
        with output.capture():
            return v.AsyncLLM.from_vllm_config(
                config,
                disable_log_stats=bool(kwargs.get("disable_log_stats", True)),
                enable_log_requests=bool(kwargs.get("enable_log_requests", False)),
            )
    except Exception as exc:  # noqa: BLE001 - the engine core's reason is in its output, not in exc
        output.settle()
        reason = output.reason()
        said = error_text(exc)
        detail = f"{reason} ({said})" if reason else said
        raise InternalError(f"vLLM could not start its engine for {folder}: {detail}") from None


async def shutdown(engine: Any) -> None:
    """Stop an AsyncLLM and its engine core process (~3-4 s here: the core process is slow to exit)."""
    # Its output handler first, on this loop: stopped later by `shutdown` from another thread, it
    # would first see the closed sockets and log a spurious "output_handler failed" traceback.
    handler = getattr(engine, "output_handler", None)
    if isinstance(handler, asyncio.Task) and not handler.done():
        handler.cancel()
        await asyncio.gather(handler, return_exceptions=True)
    await asyncio.to_thread(engine.shutdown)
    await asyncio.sleep(0)  # vLLM closes its sockets in a callback on this loop


_STOPPING: set[asyncio.Future[None]] = set()  # shutdowns nobody awaits, kept from the garbage collector


def stop_when_started(starting: asyncio.Future[Any]) -> None:
    """Done-callback for an engine start whose `load` was cancelled: stop that engine."""
    if not starting.cancelled() and starting.exception() is None:
        stopping = asyncio.ensure_future(shutdown(starting.result()))
        _STOPPING.add(stopping)
        stopping.add_done_callback(_STOPPING.discard)


@dataclass(slots=True, eq=False)
class LoadedEngine:
    """What `load` made."""

    v: Vllm
    engine: Any
    tokenizer: Any
    loop: asyncio.AbstractEventLoop
    context_length: int
    output: EngineOutput
    loaded_mark: int = 0
    unloading: bool = False

    def engine_prompt(self, ids: list[int]) -> Any:
        prompt = self.v.TokensPrompt(prompt_token_ids=ids)
        renderer = getattr(self.engine, "renderer", None)
        if renderer is not None and hasattr(renderer, "render_cmpl"):
            return renderer.render_cmpl([prompt])[0]  # vLLM 0.32's engine input for a token prompt
        return prompt  # older vLLM takes the prompt itself

    def death_reason(self) -> str:
        status = ", ".join(f"{p.name} {_exit_status(p.exitcode)}" for p in core_processes(self.engine))
        parts = [s for s in (self.output.reason(self.loaded_mark), f"engine core: {status}" if status else "") if s]
        return "; ".join(parts) or "no reason printed"
