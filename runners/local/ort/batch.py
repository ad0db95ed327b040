"""The "batch" scheduler (the default): dynamic batching into one batched og.Generator per batch.

Requests are collected (`atomr.runners.common.batching.BatchCollector`) until `max_batch_size` are
waiting or the first has waited `max_wait_ms`, then run together with right-padded prompts. See
`atomr.runners.local.ort.runner` for the measured trade-offs between the schedulers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from atomr.runners.common.batching import BatchCollector
from atomr.runners.common.engine_thread import EngineThread
from atomr.runners.local.ort.jobs import Job
from atomr.runners.local.ort.model import OrtModel, search_seed, search_top_k

from atomr.core.errors import InternalError


def _batch_key(job: Job) -> tuple[Any, ...]:
    """Rows of one batched generator share its search options: batch only alike requests."""
    p = job.request.params
    return (True,) if p.greedy else (False, *p.sampling)


class BatchWorker(EngineThread[Job]):
    """Dynamic batching: runs batches from a `BatchCollector`, one batched og.Generator each.

    The prompts of a batch are right-padded into one tensor; every step makes one token for each
    row. A row whose request ends (EOS, stop sequence, its own max_tokens, caller gone) is answered
    at once and its later tokens are ignored; the batch ends when its last row does. Requests that
    arrive meanwhile wait for the next batch (static batching: og.Generator cannot add rows).
    """

    def __init__(self, m: OrtModel, on_done: Callable[[Job], None], max_batch_size: int, max_wait_s: float) -> None:
        super().__init__("atomr-ort-batches", "the ORT batching thread")
        self._m = m
        self._on_done = on_done
        self._collector: BatchCollector[Job] = BatchCollector(max_batch_size, max_wait_s, key=_batch_key)
        self.batches = 0  # batches run, and requests in them: rows / batches is the mean batch size
        self.rows = 0

    def _accept(self, job: Job) -> None:
        self._collector.submit(job)

    def cancel(self, job: Job) -> None:
        self._collector.wake()  # a waiting job is dropped when the next batch is formed

    def stop(self) -> None:
        for job in self._collector.close():
            self._on_done(job)
        self.join()

    def _drop_cancelled(self, job: Job) -> bool:
        if job.cancel.is_set():
            self._on_done(job)
            return True
        return False

    def _main(self) -> None:
        while (batch := self._collector.next_batch(self._drop_cancelled)) is not None:
            try:
                self._run(batch)
            except Exception as exc:  # noqa: BLE001 - answer every row with the engine's reason
                error = InternalError(f"ORT GenAI failed on a batch: {type(exc).__name__}: {exc}")
                for job in batch:
                    if not job.decoding.finished:
                        job.channel.put(error)
                        job.decoding.finished = True
                        self._on_done(job)

    def _run(self, jobs: list[Job]) -> None:
        import numpy as np

        m, og = self._m, self._m.og
        self.batches += 1
        self.rows += len(jobs)
        width = max(len(j.ids) for j in jobs)
        tokens_in = np.full((len(jobs), width), m.pad_id, dtype=np.int32)
        for row, job in enumerate(jobs):
            tokens_in[row, : len(job.ids)] = job.ids
        params = jobs[0].request.params
        search: dict[str, Any] = {
            "batch_size": len(jobs),
            "max_length": width + max(j.request.params.max_new_tokens for j in jobs),
            "min_length": 0,
        }
        if params.greedy:
            search["do_sample"] = False
        else:
            search.update(
                do_sample=True,
                temperature=params.sampling[0],
                top_p=params.sampling[1],
                top_k=search_top_k(params.sampling[2], m.vocab_size),
                random_seed=search_seed(None),
            )
        gp = og.GeneratorParams(m.model)
        gp.set_search_options(**search)
        gen = og.Generator(m.model, gp)
        gen.append_tokens(tokens_in)
        live = list(range(len(jobs)))
        want_logits = any(j.request.params.logprobs for j in jobs)
        while live:
            logits = gen.get_logits() if want_logits else None
            gen.generate_next_token()
            next_tokens = gen.get_next_tokens()
            ended = gen.is_done()
            still: list[int] = []
            for row in live:
                job = jobs[row]
                if job.cancel.is_set():
                    self._on_done(job)
                elif self._advance(job, int(next_tokens[row]), logits, row, ended):
                    self._on_done(job)
                else:
                    still.append(row)
            live = still

    def _advance(self, job: Job, token: int, logits: Any, row: int, ended: bool) -> bool:
        """Feed one row's token to its request; True when that request is finished."""
        decoding = job.decoding
        if token in self._m.eos_ids:
            decoding.finish("stop")
            return True
        row_logits = logits[row] if logits is not None and job.request.params.logprobs else None
        if decoding.token(token, row_logits):
            return True
        if decoding.generated >= job.request.params.max_new_tokens or ended:
            decoding.finish("length")
            return True
        return False
