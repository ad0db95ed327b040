"""The "engine" scheduler: an og.Engine driven from its own thread.

On CPU, ORT GenAI 0.18's Engine offers static batching only and forms a batch from whatever is
pending, with no wait; it takes no per-request seed and gives no logits, so such requests go to
the generators (`uses_engine`). See `atomr.runners.local.ort.runner` for the measured trade-offs.
"""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable
from typing import Any

from atomr.runners.local.ort.jobs import Job
from atomr.runners.local.ort.model import OrtModel, search_top_k

from atomr.core.errors import InferenceError, InternalError, UnavailableError
from atomr.core.types import InferenceRequest


def uses_engine(request: InferenceRequest) -> bool:
    """Requests og.Engine (CPU static batching) can serve: no logprobs, no seeded sampling."""
    p = request.params
    return not p.logprobs and (p.greedy or p.seed is None)


class EngineDriver:
    """Owns an og.Engine on its own thread (Engine calls must come from its owner thread).

    The asyncio side only appends to the inbox and sets the wake event; the driver begins turns,
    runs engine steps, hands tokens to each request's `Decoding` and cancels turns whose caller
    went away or whose stop sequence was reached.
    """

    def __init__(self, m: OrtModel, on_done: Callable[[Job], None]) -> None:
        self._m = m
        self._on_done = on_done
        self._inbox: collections.deque[tuple[str, Job | None]] = collections.deque()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._live: dict[int, Job] = {}
        self._thread = threading.Thread(target=self._main, name="atomr-ort-engine", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise InternalError(f"ORT GenAI could not start its engine: {self._start_error}")

    def submit(self, job: Job) -> None:
        if not self.alive:
            raise UnavailableError("the ORT engine thread has stopped")
        self._inbox.append(("add", job))
        self._wake.set()

    def cancel(self, job: Job) -> None:
        self._inbox.append(("cancel", job))
        self._wake.set()

    def stop(self) -> None:
        self._inbox.append(("stop", None))
        self._wake.set()
        self._thread.join()

    def _main(self) -> None:
        og = self._m.og
        try:
            engine = og.Engine(self._m.model)
        except (RuntimeError, ValueError) as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop(og, engine)
        except BaseException as exc:  # a bug or engine crash: answer every caller, never hang one
            error = InternalError(f"ORT GenAI engine thread failed: {type(exc).__name__}: {exc}")
            for live_job in list(self._live.values()):
                self._fail(live_job, error)
            while self._inbox:
                op, queued = self._inbox.popleft()
                if op == "add" and queued is not None:
                    queued.channel.put(error)
                    self._on_done(queued)
            raise

    def _loop(self, og: Any, engine: Any) -> None:
        buf = engine.create_event_buffer(1024)
        live = self._live
        token_flag, finished_flag = int(og.EngineEventFlags.TOKEN), int(og.EngineEventFlags.TURN_FINISHED)
        failed_flag = int(og.EngineEventFlags.FAILED)
        reasons = {og.FinishReason.EOS: "stop", og.FinishReason.STOP_STRING: "stop"}
        running = True
        while True:
            while self._inbox:
                op, job = self._inbox.popleft()
                if op == "stop":
                    running = False
                elif job is not None and op == "add":
                    self._begin(og, engine, job)
                # "cancel" only wakes us: cancelled jobs are dropped just below
            for job in [j for j in live.values() if j.cancel.is_set() or not running]:
                self._drop(job)
            if not engine.has_pending_requests():
                for job in list(live.values()):  # the engine forgot them: answer rather than hang
                    self._fail(job, InternalError("ORT GenAI engine ended the request without finishing it"))
                if not running:
                    return
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                engine.run(buf)
            except (RuntimeError, ValueError) as exc:  # the engine broke: fail what is in flight, start anew
                for job in list(live.values()):
                    self._fail(job, InternalError(f"ORT GenAI engine failed: {exc}"))
                engine = og.Engine(self._m.model)
                buf = engine.create_event_buffer(1024)
                continue
            for i in range(len(buf)):
                ev = buf[i]
                job = live.get(id(ev.request))
                if job is None:
                    continue
                flags = int(ev.flags)
                if flags & failed_flag:
                    self._fail(job, InternalError(f"ORT GenAI engine failed the request: {ev.error_code}"))
                    continue
                if flags & token_flag and ev.token not in self._m.eos_ids and job.decoding.token(int(ev.token)):
                    self._drop(job)
                    continue
                if flags & finished_flag:
                    job.decoding.finish(reasons.get(ev.finish_reason, "length"))
                    self._close(job)

    def _begin(self, og: Any, engine: Any, job: Job) -> None:
        if job.cancel.is_set():
            self._on_done(job)
            return
        import numpy as np

        p = job.request.params
        try:
            req = engine.create_request()
            opts = og.TurnOptions(req)
            opts.set_max_generated_tokens(p.max_new_tokens)
            if p.greedy:
                opts.set_do_sample(False)
            else:
                opts.set_do_sample(True)
                opts.set_temperature(p.sampling[0])
                opts.set_top_p(p.sampling[1])
                opts.set_top_k(search_top_k(p.sampling[2], self._m.vocab_size))  # 0 disables top-k
            job.turn_id = int(req.begin_turn(np.asarray(job.ids, dtype=np.int32), opts))
        except (RuntimeError, ValueError) as exc:
            job.channel.put(InternalError(f"ORT GenAI engine refused the request: {exc}"))
            self._on_done(job)
            return
        job.og_request = req
        self._live[id(req)] = job

    def _drop(self, job: Job) -> None:
        """End a request early (stop sequence reached, caller gone, or shutting down)."""
        with contextlib.suppress(RuntimeError, ValueError):  # already finished: nothing to cancel
            job.og_request.cancel_turn(job.turn_id)
        self._close(job)

    def _fail(self, job: Job, exc: InferenceError) -> None:
        job.channel.put(exc)
        self._close(job)

    def _close(self, job: Job) -> None:
        self._live.pop(id(job.og_request), None)
        with contextlib.suppress(RuntimeError, ValueError):
            job.og_request.close()
        self._on_done(job)
