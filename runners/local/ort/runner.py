"""ONNX Runtime GenAI runner: local CPU (or GPU) inference of an exported ORT GenAI model folder.

The model folder is the one holding `genai_config.json`, or a folder whose `onnx/` subfolder does
(a built-in model such as `builtin:tiny-llama`). `onnxruntime_genai` is imported when a model is
loaded, never when `runners` is imported.

Engine options (`deployment.engine`; an unknown key is a ConfigError naming it):
  scheduler         "batch" (default), "engine" or "generators", see below
  max_batch_size    most requests in one batch ("batch") or in og.Engine ("engine"); default 16
  max_wait_ms       "batch": longest a request waits for others to join its batch (default 5)
  intra_op_threads  ORT intra-op threads per session (default 1; pinned, this is a shared CPU)

Scheduling. Three ways to serve many requests at once; all share tokenization, detokenization
(`TokenizerStream`), stop sequences (`atomr.runners.common.stops`) and chunk building:
- "batch" (default): dynamic batching (`atomr.runners.common.batching`). Requests are collected until
  `max_batch_size` are waiting or the first has waited `max_wait_ms` (the wait is skipped when no
  concurrency was seen, so a lone caller pays nothing), then run as one batched og.Generator with
  right-padded prompts. Each row streams to its own caller and ends on its own (EOS, stop, its
  max_tokens, caller gone); rows of one batch share sampling settings, so only alike requests are
  batched together. Logprobs work per row. Seeded sampling goes to the generators below (one
  seed per request cannot be honoured inside a shared batch).
- "engine": og.Engine on one driver thread. On CPU, ORT GenAI 0.18 offers static batching only
  (continuous batching needs a paged-attention export, which its builder makes for CUDA only),
  and it forms a batch from whatever is pending, with no wait. The Engine takes no per-request
  seed and gives no logits: requests with a seed (and temperature > 0) or with logprobs go to the
  generators.
- "generators": one og.Generator per request, all stepped round-robin by one thread, one token
  each per round: no batching (every forward pass has batch size 1), but a new request joins at
  the next round whatever else runs; seeded sampling and logprobs work. One thread on purpose:
  ORT GenAI 0.18 holds the GIL while it computes, so more stepping threads add no speed and starve
  the process's other threads.
Measured on this shared 2-core CPU, tiny-llama, one ORT thread, greedy 32-token requests from
closed-loop clients (`scripts/bench/batching.py`, medians of rounds, ratios within a round):
tokens/s against "generators" at concurrency 1 / 4 / 16: batch 0.9x / 1.6x / 4.8x, engine
1.4x / 1.7x / 2.1x; p50 latency at concurrency 1 rose by ~2 ms with "batch" (under its 5 ms
wait). Hence "batch" by default.

Token accounting: EOS is not a completion token and has no chunk; `usage.completion_tokens`
equals the sum of chunk `token_count`s and, with logprobs, the number of logprob entries. A stop
sequence ends the text before it, with finish_reason "stop"; the token that completed it counts.
Closing the stream early (aclose, task cancelled) cancels the ORT work at the next token.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import math
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.common.batching import BatchCollector
from atomr.runners.common.context import check_context
from atomr.runners.common.model_files import model_root
from atomr.runners.common.stops import StopMatcher
from atomr.runners.local.ort.spec import OrtOptions
from atomr.runners.spec import parse_engine_options

from atomr.core.errors import (
    InferenceError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from atomr.core.runner import ModelRunner, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Message, TokenLogprob, Usage

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment


def _import_og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InternalError(f"the ort runtime needs onnxruntime-genai (pip install onnxruntime-genai): {exc}") from None
    return og


def ort_model_dir(path: str | Path) -> Path:
    """The folder holding `genai_config.json`: `path` itself or its `onnx/` subfolder."""
    p = Path(path)
    for candidate in (p, p / "onnx"):
        if (candidate / "genai_config.json").is_file():
            return candidate
    raise NotFoundError(f"no ORT GenAI model at {p} (no genai_config.json there or in onnx/)", field="model")


def _resolve_model_dir(deployment: Deployment) -> Path:
    return ort_model_dir(model_root(deployment))


@dataclass(slots=True)
class _Model:
    """What `load` made: the ORT objects and the facts every request needs."""

    og: Any
    model: Any
    tokenizer: Any
    folder: Path
    context_length: int
    bos_id: int | None
    eos_ids: frozenset[int]
    pad_id: int
    vocab_size: int


def _open_model(folder: Path, intra_op_threads: int, engine_batch: int | None = None) -> _Model:
    og = _import_og()
    try:
        raw = json.loads((folder / "genai_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InternalError(f"cannot read {folder / 'genai_config.json'}: {exc}") from None
    overlay: dict[str, Any] = {
        "model": {
            "decoder": {
                "session_options": {
                    "intra_op_num_threads": intra_op_threads,
                    "inter_op_num_threads": 1,
                }
            }
        }
    }
    if engine_batch is not None:
        overlay["engine"] = {"static_batching": {"max_batch_size": engine_batch}}
    _check_files(folder, raw)
    try:
        config = og.Config(str(folder))
        config.overlay(json.dumps(overlay))
        model = og.Model(config)
        tokenizer = og.Tokenizer(model)
    except (RuntimeError, ValueError, OSError) as exc:
        _check_files(folder, raw)  # removed while loading
        if isinstance(exc, FileNotFoundError) or any(s in str(exc) for s in _MISSING_FILE_TEXTS):
            # ORT GenAI raises a plain RuntimeError; e.g. a missing external-data file (model.onnx.data)
            missing = f"ORT GenAI could not load {folder}: a model file is missing: {exc}"
            raise NotFoundError(missing, field="model") from None
        raise InternalError(f"ORT GenAI could not load {folder}: {exc}") from None
    mcfg = raw.get("model", {})
    context = int(raw.get("search", {}).get("max_length") or mcfg.get("context_length") or 0)
    if context <= 0:
        raise InternalError(f"{folder / 'genai_config.json'} gives no search.max_length or model.context_length")
    eos = mcfg.get("eos_token_id")
    eos_ids = frozenset(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
    if not eos_ids:
        eos_ids = frozenset(int(e) for e in tokenizer.eos_token_ids)
    bos = mcfg.get("bos_token_id")
    return _Model(
        og=og,
        model=model,
        tokenizer=tokenizer,
        folder=folder,
        context_length=context,
        bos_id=int(bos) if bos is not None else None,
        eos_ids=eos_ids,
        pad_id=int(mcfg.get("pad_token_id", min(eos_ids))),
        vocab_size=int(mcfg.get("vocab_size") or 0),
    )


# What ORT / ORT GenAI say (in a plain RuntimeError) when a file a model needs is not there.
_MISSING_FILE_TEXTS = ("does not exist", "doesn't exist", "No such file")


def _model_files(folder: Path, raw: dict[str, Any]) -> list[Path]:
    """The files ORT GenAI opens for a model: every `filename` its genai_config.json names, and the tokenizer."""
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "filename" and isinstance(value, str):
                    names.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(raw.get("model"))
    return [folder / n for n in names] + [folder / "tokenizer.json"]


def _check_files(folder: Path, raw: dict[str, Any]) -> None:
    """Fail with `not_found` (a restart cannot fix it) when a file the model needs is missing."""
    missing = [f for f in _model_files(folder, raw) if not f.is_file()]
    if missing:
        raise NotFoundError(f"model file missing: {missing[0]} (an ORT GenAI model needs it)", field="model")


def _render_chat(m: _Model, messages: Sequence[Message]) -> str:
    payload = json.dumps([{"role": msg.role, "content": msg.content} for msg in messages])
    try:
        return str(m.tokenizer.apply_chat_template(payload, add_generation_prompt=True))
    except (RuntimeError, ValueError) as exc:
        raise InvalidRequestError(f"the model's chat template failed: {exc}", field="messages") from None


def _prompt_ids(m: _Model, messages: Sequence[Message] | None, prompt: str | None) -> list[int]:
    """Token ids of a chat (template applied) or completion prompt, BOS first when the model has one."""
    text = _render_chat(m, messages) if messages is not None else (prompt or "")
    ids = [int(i) for i in m.tokenizer.encode(text)]
    if m.bos_id is not None and (not ids or ids[0] != m.bos_id):
        ids.insert(0, m.bos_id)
    return ids


_INT32_MAX = 2**31 - 1


def _seed(seed: int | None) -> int:
    """ORT GenAI takes a 31-bit seed; requests may give any 64-bit one (as OpenAI allows)."""
    return secrets.randbelow(_INT32_MAX) if seed is None else seed % _INT32_MAX


def _top_k(top_k: int, vocab_size: int) -> int:
    """ORT GenAI refuses a top_k past the vocabulary; such a top_k means no limit (0) anyway."""
    return 0 if vocab_size and top_k >= vocab_size else int(top_k)


def _log_softmax_at(logits: Any, index: int) -> float:
    import numpy as np

    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    top = float(row.max())
    return float(row[index] - top - math.log(float(np.exp(row - top).sum())))


class _Channel:
    """Worker thread -> asyncio consumer, waking the loop only when the consumer waits."""

    __slots__ = ("_items", "_lock", "_loop", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._items: collections.deque[Any] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, item: Any) -> None:
        with self._lock:
            self._items.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            try:
                self._loop.call_soon_threadsafe(_wake, waiter)
            except RuntimeError:  # loop closed: nobody is listening any more
                pass

    async def get_all(self) -> list[Any]:
        while True:
            with self._lock:
                if self._items:
                    items = list(self._items)
                    self._items.clear()
                    return items
                waiter = self._loop.create_future()
                self._waiter = waiter
            await waiter


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


_END = object()


class _Decoding:
    """One request's text side: detokenizer, stop matcher, logprobs, counts; emits the chunks."""

    __slots__ = ("channel", "finished", "generated", "logprobs", "max_tokens", "n_prompt", "stops", "stream")

    def __init__(self, m: _Model, request: InferenceRequest, n_prompt: int, channel: _Channel) -> None:
        self.channel = channel
        self.stream = m.tokenizer.create_stream()
        self.stops = StopMatcher(request.params.stop)
        self.logprobs = request.params.logprobs
        self.max_tokens = request.params.max_tokens
        self.n_prompt = n_prompt
        self.generated = 0
        self.finished = False

    def token(self, token: int, logits: Any = None) -> bool:
        """Emit one generated (non-EOS) token; True when a stop sequence ended the text."""
        self.generated += 1
        piece = self.stream.decode(token)
        lps = (TokenLogprob(piece, _log_softmax_at(logits, token)),) if logits is not None else None
        text, stopped = self.stops.feed(piece)
        if stopped:
            self.finished = True
            self.channel.put(Chunk(text, 1, lps, "stop", Usage(self.n_prompt, self.generated)))
            return True
        self.channel.put(Chunk(text, 1, lps))
        return False

    def finish(self, reason: str) -> None:
        """Emit the last chunk: held-back text, finish_reason and usage."""
        if self.finished:
            return
        self.finished = True
        self.channel.put(
            Chunk(self.stops.flush(), 0, () if self.logprobs else None, reason, Usage(self.n_prompt, self.generated))
        )


@dataclass(slots=True, eq=False)
class _Job:
    request: InferenceRequest
    channel: _Channel
    cancel: threading.Event
    ids: list[int]
    decoding: _Decoding
    og_request: Any = None
    turn_id: int = 0


def _uses_engine(request: InferenceRequest) -> bool:
    """Requests og.Engine (CPU static batching) can serve: no logprobs, no seeded sampling."""
    p = request.params
    return not p.logprobs and (p.greedy or p.seed is None)


class _GenState:
    """One request being stepped by a `_Stepper`."""

    __slots__ = ("gen", "job", "want_logits")

    def __init__(self, m: _Model, job: _Job) -> None:
        params = job.request.params
        gp = m.og.GeneratorParams(m.model)
        search: dict[str, Any] = {"max_length": len(job.ids) + params.max_tokens, "min_length": 0}
        if params.greedy:
            search["do_sample"] = False
        else:
            search.update(
                do_sample=True,
                temperature=float(params.temperature),
                top_p=float(params.top_p),
                top_k=_top_k(params.top_k, m.vocab_size),  # 0 disables top-k in ORT GenAI
                random_seed=_seed(params.seed),
            )
        gp.set_search_options(**search)
        self.gen = m.og.Generator(m.model, gp)
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
        if decoding.generated >= self.job.request.params.max_tokens or self.gen.is_done():
            decoding.finish("length")
            return True
        return False


class _Stepper:
    """Steps one og.Generator per request, round-robin, on one thread.

    A new request joins at the next round (its prompt pass runs then), so requests start at once
    whatever else is running; every active request gets one token per round.
    """

    def __init__(self, m: _Model, on_done: Callable[[_Job], None]) -> None:
        self._m = m
        self._on_done = on_done
        self._inbox: collections.deque[_Job | None] = collections.deque()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._main, name="atomr-ort-generators", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: _Job) -> None:
        if not self.alive:
            raise UnavailableError("the ORT generator thread has stopped")
        self._inbox.append(job)
        self._wake.set()

    def cancel(self, job: _Job) -> None:
        self._wake.set()  # cancelled jobs are dropped at the start of the next round

    def stop(self) -> None:
        self._inbox.append(None)
        self._wake.set()
        self._thread.join()

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

    def _fail(self, job: _Job, exc: BaseException) -> None:
        if not isinstance(exc, InferenceError):
            exc = InternalError(f"ORT GenAI failed: {type(exc).__name__}: {exc}")
        job.channel.put(exc)
        self._on_done(job)


class _EngineDriver:
    """Owns an og.Engine on its own thread (Engine calls must come from its owner thread).

    The asyncio side only appends to the inbox and sets the wake event; the driver begins turns,
    runs engine steps, hands tokens to each request's `_Decoding` and cancels turns whose caller
    went away or whose stop sequence was reached.
    """

    def __init__(self, m: _Model, on_done: Callable[[_Job], None]) -> None:
        self._m = m
        self._on_done = on_done
        self._inbox: collections.deque[tuple[str, _Job | None]] = collections.deque()
        self._wake = threading.Event()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._live: dict[int, _Job] = {}
        self._thread = threading.Thread(target=self._main, name="atomr-ort-engine", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise InternalError(f"ORT GenAI could not start its engine: {self._start_error}")

    def submit(self, job: _Job) -> None:
        if not self.alive:
            raise UnavailableError("the ORT engine thread has stopped")
        self._inbox.append(("add", job))
        self._wake.set()

    def cancel(self, job: _Job) -> None:
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

    def _begin(self, og: Any, engine: Any, job: _Job) -> None:
        if job.cancel.is_set():
            self._on_done(job)
            return
        import numpy as np

        p = job.request.params
        try:
            req = engine.create_request()
            opts = og.TurnOptions(req)
            opts.set_max_generated_tokens(p.max_tokens)
            if p.greedy:
                opts.set_do_sample(False)
            else:
                opts.set_do_sample(True)
                opts.set_temperature(float(p.temperature))
                opts.set_top_p(float(p.top_p))
                opts.set_top_k(_top_k(p.top_k, self._m.vocab_size))  # 0 disables top-k
            job.turn_id = int(req.begin_turn(np.asarray(job.ids, dtype=np.int32), opts))
        except (RuntimeError, ValueError) as exc:
            job.channel.put(InternalError(f"ORT GenAI engine refused the request: {exc}"))
            self._on_done(job)
            return
        job.og_request = req
        self._live[id(req)] = job

    def _drop(self, job: _Job) -> None:
        """End a request early (stop sequence reached, caller gone, or shutting down)."""
        with contextlib.suppress(RuntimeError, ValueError):  # already finished: nothing to cancel
            job.og_request.cancel_turn(job.turn_id)
        self._close(job)

    def _fail(self, job: _Job, exc: InferenceError) -> None:
        job.channel.put(exc)
        self._close(job)

    def _close(self, job: _Job) -> None:
        self._live.pop(id(job.og_request), None)
        with contextlib.suppress(RuntimeError, ValueError):
            job.og_request.close()
        self._on_done(job)


def _batch_key(job: _Job) -> tuple[Any, ...]:
    """Rows of one batched generator share its search options: batch only alike requests."""
    p = job.request.params
    return (True,) if p.greedy else (False, p.temperature, p.top_p, p.top_k)


class _BatchWorker:
    """Dynamic batching: runs batches from a `BatchCollector`, one batched og.Generator each.

    The prompts of a batch are right-padded into one tensor; every step makes one token for each
    row. A row whose request ends (EOS, stop sequence, its own max_tokens, caller gone) is answered
    at once and its later tokens are ignored; the batch ends when its last row does. Requests that
    arrive meanwhile wait for the next batch (static batching: og.Generator cannot add rows).
    """

    def __init__(self, m: _Model, on_done: Callable[[_Job], None], max_batch_size: int, max_wait_s: float) -> None:
        self._m = m
        self._on_done = on_done
        self._collector: BatchCollector[_Job] = BatchCollector(max_batch_size, max_wait_s, key=_batch_key)
        self._thread = threading.Thread(target=self._main, name="atomr-ort-batches", daemon=True)
        self.batches = 0  # batches run, and requests in them: rows / batches is the mean batch size
        self.rows = 0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, job: _Job) -> None:
        if not self.alive:
            raise UnavailableError("the ORT batching thread has stopped")
        self._collector.submit(job)

    def cancel(self, job: _Job) -> None:
        self._collector.wake()  # a waiting job is dropped when the next batch is formed

    def stop(self) -> None:
        for job in self._collector.close():
            self._on_done(job)
        self._thread.join()

    def _drop_cancelled(self, job: _Job) -> bool:
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

    def _run(self, jobs: list[_Job]) -> None:
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
            "max_length": width + max(j.request.params.max_tokens for j in jobs),
            "min_length": 0,
        }
        if params.greedy:
            search["do_sample"] = False
        else:
            search.update(
                do_sample=True,
                temperature=float(params.temperature),
                top_p=float(params.top_p),
                top_k=_top_k(params.top_k, m.vocab_size),
                random_seed=_seed(None),
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

    def _advance(self, job: _Job, token: int, logits: Any, row: int, ended: bool) -> bool:
        """Feed one row's token to its request; True when that request is finished."""
        decoding = job.decoding
        if token in self._m.eos_ids:
            decoding.finish("stop")
            return True
        row_logits = logits[row] if logits is not None and job.request.params.logprobs else None
        if decoding.token(token, row_logits):
            return True
        if decoding.generated >= job.request.params.max_tokens or ended:
            decoding.finish("length")
            return True
        return False


class OrtRunner(ModelRunner):
    """Serves one ORT GenAI model; many `generate` calls run at once."""

    # batching: concurrent generate calls are scheduled together by the runner itself.
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True, logprobs=True, batching=True, chat=True, completion=True, needs_gpu=False
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        options = parse_engine_options("ort", deployment.engine, OrtOptions)
        self.intra_op_threads = options.intra_op_threads
        self.max_batch_size = options.max_batch_size
        self.max_wait_ms = options.max_wait_ms
        self.scheduler: str = options.scheduler
        self._m: _Model | None = None
        self._stepper: _Stepper | None = None
        self._engine: _EngineDriver | None = None
        self._batcher: _BatchWorker | None = None
        self._jobs: set[_Job] = set()
        self._active = 0
        self._active_lock = threading.Lock()
        # Running totals, for metrics and tests: requests finished, completion tokens generated
        # (EOS not counted), and requests whose caller went away before the end.
        self.stats = {"requests": 0, "tokens": 0, "cancelled": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        folder = _resolve_model_dir(self.deployment)
        batch = self.max_batch_size if self.scheduler == "engine" else None
        m = await asyncio.to_thread(_open_model, folder, self.intra_op_threads, batch)
        if self.scheduler == "engine":
            driver = _EngineDriver(m, self._job_done)
            await asyncio.to_thread(driver.start)
            self._engine = driver
        elif self.scheduler == "batch":
            batcher = _BatchWorker(m, self._job_done, self.max_batch_size, self.max_wait_ms / 1000.0)
            batcher.start()
            self._batcher = batcher
        stepper = _Stepper(m, self._job_done)
        stepper.start()
        self._stepper = stepper
        self._m = m

    async def health(self) -> bool:
        if self._m is None or self._stepper is None or not self._stepper.alive:
            return False
        return all(w is None or w.alive for w in (self._engine, self._batcher))

    async def unload(self) -> None:
        for job in list(self._jobs):  # callers still reading get an error, not a truncated stream
            job.channel.put(UnavailableError("the ORT runner was unloaded during the generation"))
            job.cancel.set()
        workers = (self._engine, self._batcher, self._stepper)
        self._engine = self._batcher = self._stepper = None
        for worker in workers:
            if worker is not None:
                await asyncio.to_thread(worker.stop)
        self._m = None

    @property
    def context_length(self) -> int:
        return self._loaded().context_length

    @property
    def batch_counts(self) -> tuple[int, int]:
        """(batches run, requests in them) by the "batch" scheduler; (0, 0) for the others."""
        b = self._batcher
        return (b.batches, b.rows) if b is not None else (0, 0)

    @property
    def active_generations(self) -> int:
        """Requests accepted and not yet finished on the ORT side (for tests and metrics)."""
        return self._active

    def _loaded(self) -> _Model:
        if self._m is None:
            raise UnavailableError("the ORT model is not loaded")
        return self._m

    def count_prompt_tokens(self, request: InferenceRequest) -> int:
        """Prompt tokens of `request` as the runner feeds them (template and BOS included)."""
        return len(_prompt_ids(self._loaded(), request.messages, request.prompt))

    def _job_done(self, job: _Job) -> None:
        with self._active_lock:
            self._active -= 1
            self.stats["requests"] += 1
            self.stats["tokens"] += job.decoding.generated
            if job.cancel.is_set() and not job.decoding.finished:
                self.stats["cancelled"] += 1
        job.channel.put(_END)

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        m = self._loaded()
        stepper = self._stepper
        if stepper is None:
            raise UnavailableError("the ORT runner is unloaded")
        ids = _prompt_ids(m, request.messages, request.prompt)
        check_context(request, len(ids), m.context_length)
        channel = _Channel(asyncio.get_running_loop())
        job = _Job(request, channel, threading.Event(), ids, _Decoding(m, request, len(ids), channel))
        worker = self._worker_for(request, stepper)
        with self._active_lock:
            self._active += 1
        self._jobs.add(job)
        try:
            worker.submit(job)
        except UnavailableError:  # its thread has stopped
            self._jobs.discard(job)
            self._job_done(job)
            raise UnavailableError("the ORT runner is unloading or its engine stopped") from None
        done = False
        try:
            while not done:
                for item in await channel.get_all():
                    if item is _END:
                        done = True
                        break
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            self._jobs.discard(job)
            if not done:  # the caller went away (aclose, cancelled task) or an error: stop the work
                job.cancel.set()
                worker.cancel(job)

    def _worker_for(self, request: InferenceRequest, stepper: _Stepper) -> _EngineDriver | _BatchWorker | _Stepper:
        if self._engine is not None and _uses_engine(request):
            return self._engine
        if self._batcher is not None and (request.params.greedy or request.params.seed is None):
            return self._batcher
        return stepper


def ort_greedy_reference(
    model_dir: str | Path,
    prompt_or_messages: str | Sequence[Message] | Sequence[dict[str, str]],
    max_tokens: int,
    *,
    intra_op_threads: int = 1,
) -> str:
    """Greedy text from ORT GenAI called directly, for comparing against the actor path.

    Only tokenization and the chat template are shared with the runner: a plain `og.Generator`
    loop, stopped at EOS or `max_tokens`, decoded in one `Tokenizer.decode` call.
    """
    m = _open_model(ort_model_dir(model_dir), intra_op_threads)
    if isinstance(prompt_or_messages, str):
        ids = _prompt_ids(m, None, prompt_or_messages)
    else:
        msgs = [x if isinstance(x, Message) else Message(x["role"], x["content"]) for x in prompt_or_messages]
        ids = _prompt_ids(m, msgs, None)
    og = m.og
    gp = og.GeneratorParams(m.model)
    gp.set_search_options(do_sample=False, max_length=min(m.context_length, len(ids) + max_tokens))
    gen = og.Generator(m.model, gp)
    gen.append_tokens(ids)
    out: list[int] = []
    while len(out) < max_tokens and not gen.is_done():
        gen.generate_next_token()
        token = int(gen.get_next_tokens()[0])
        if token in m.eos_ids:
            break
        out.append(token)
    import numpy as np

    return str(m.tokenizer.decode(np.array(out, dtype=np.int32))) if out else ""
