"""The "generators" scheduler: one og.Generator per request, all stepped round-robin by one thread.

Used for every request when `scheduler: generators`, and by the other schedulers for what they
cannot serve (seeded sampling; logprobs with "engine"). See `atomr.runners.local.ort.runner` for
the measured trade-offs between the schedulers.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Any

from atomr.runners.common.engine_thread import EngineThread
from atomr.runners.local.ort.jobs import Job
from atomr.runners.local.ort.model import OrtModel, search_seed, search_top_k

from atomr.core.errors import InferenceError, InternalError, InvalidRequestError


class _GenState:
    """One request being stepped by a `Stepper`."""

    __slots__ = ("gen", "job", "want_logits")

    def __init__(self, m: OrtModel, job: Job) -> None:
        params = job.request.params
        gp = m.og.GeneratorParams(m.model)
        search: dict[str, Any] = {"max_length": len(job.ids) + params.max_new_tokens, "min_length": 0}
        if params.greedy:
            search["do_sample"] = False
        else:
            search.update(
                do_sample=True,
                temperature=params.sampling[0],
                top_p=params.sampling[1],
                top_k=search_top_k(params.sampling[2], m.vocab_size),  # 0 disables top-k in ORT GenAI
                random_seed=search_seed(params.seed),
            )
        gp.set_search_options(**search)
        guidance = job.guidance
        if guidance is None:
            self.gen = m.og.Generator(m.model, gp)
        else:
            gp.set_guidance(guidance.kind, guidance.data)
            try:
                self.gen = m.og.Generator(m.model, gp)  # llguidance builds the grammar here
            except RuntimeError as exc:
                if "grammar" not in str(exc):
                    raise
                why = f"ORT GenAI cannot constrain the output so: {exc}"
                raise InvalidRequestError(why, field=guidance.field) from None
        self.gen.append_tokens(job.ids)  # the prompt's forward pass
        self.job = job
        self.want_logits = params.logprobs

    def step(self, eos_ids: frozenset[int]) -> bool:
        """Generate one token; True when the request is finished."""
        decoding = self.job.decoding
        logits = self.gen.get_logits() if self.want_logits else None
        self.gen.generate_next_token()
        token = int(self.gen.get_next_tokens()[0])
        if token in eos_ids:
            decoding.finish("stop")
            return True
        if decoding.token(token, logits):
            return True
        if decoding.generated >= self.job.request.params.max_new_tokens or self.gen.is_done():
            decoding.finish("length")
            return True
        return False


class Stepper(EngineThread[Job]):
    """Steps one og.Generator per request, round-robin, on one thread.

    A new request joins at the next round (its prompt pass runs then), so requests start at once
    whatever else is running; every active request gets one token per round.
    """

    def __init__(self, m: OrtModel, on_done: Callable[[Job], None]) -> None:
        super().__init__("atomr-ort-generators", "the ORT generator thread")
        self._m = m
        self._on_done = on_done
        self._inbox: collections.deque[Job | None] = collections.deque()
        self._wake = threading.Event()

    def _accept(self, job: Job) -> None:
        self._inbox.append(job)
        self._wake.set()

    def cancel(self, job: Job) -> None:
        self._wake.set()  # cancelled jobs are dropped at the start of the next round

    def stop(self) -> None:
        self._inbox.append(None)
        self._wake.set()
        self.join()

    def _main(self) -> None:
        active: list[_GenState] = []
        running = True
        eos_ids = self._m.eos_ids
        while True:
            while self._inbox:
                job = self._inbox.popleft()
                if job is None:
                    running = False
                elif job.cancel.is_set():
                    self._on_done(job)
                else:
                    try:
                        active.append(_GenState(self._m, job))
                    except Exception as exc:  # noqa: BLE001 - answer the caller with the engine's reason
                        self._fail(job, exc)
            if not running:
                for st in active:
                    self._on_done(st.job)
                return
            if not active:
                self._wake.wait()
                self._wake.clear()
                continue
            still: list[_GenState] = []
            for st in active:
                if st.job.cancel.is_set():
                    self._on_done(st.job)
                    continue
                try:
                    finished = st.step(eos_ids)
                except Exception as exc:  # noqa: BLE001 - one request failing must not stop the others
                    self._fail(st.job, exc)
                    continue
                if finished:
                    self._on_done(st.job)
                else:
                    still.append(st)
            active = still

    def _fail(self, job: Job, exc: BaseException) -> None:
        if not isinstance(exc, InferenceError):
            exc = InternalError(f"ORT GenAI failed: {type(exc).__name__}: {exc}")
        job.channel.put(exc)
        self._on_done(job)
