"""ONNX Runtime GenAI runner: local CPU (or GPU) inference of an exported ORT GenAI model folder.

The model folder is the one holding `genai_config.json`, or a folder whose `onnx/` subfolder does
(a built-in model such as `builtin:tiny-llama`). `onnxruntime_genai` is imported on `load`, never
when `runners` is imported.

Concurrency: every request gets its own `og.Generator`, stepped in a worker thread of a pool owned
by the runner (engine option `max_parallel`, default 16; one ORT intra-op thread per session by
default, engine option `intra_op_threads`). ORT GenAI 0.18's `og.Engine` was measured as the
alternative: on CPU it only offers static batching (continuous batching needs a paged-attention
export, which the builder supports only for CUDA), so a request that arrives while a batch runs
waits for the whole batch; it also refuses per-request seeds and exposes no logits. A generator
per request admits new work at once, gives seeded sampling and logprobs, and stops the moment its
caller goes away. The numbers are in the module's report (see `BENCHMARK_NOTE`).

Per token the worker thread detokenizes (a `TokenizerStream`), matches stop sequences
(`runners.common.stops`), computes the chosen token's logprob when asked, and hands the chunk
to the asyncio loop; the loop is woken only when the consumer waits for more.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import secrets
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.core.errors import (
    ContextLengthError,
    InferenceError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from atomr.core.runner import ModelRunner, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Message, TokenLogprob, Usage
from runners.common.stops import StopMatcher

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment

BENCHMARK_NOTE = (
    "16 concurrent greedy requests x 64 tokens, tiny-llama, one ORT thread, 2-core CPU: "
    "og.Engine (static batching, max_batch_size 16) ~14-20k tok/s for a burst that arrives together; "
    "one og.Generator per request in a thread pool ~6-8k tok/s. The Engine cannot admit requests "
    "while a batch runs, take a seed, or give logits on CPU in 0.18, so the runner uses generators."
)

DEFAULT_MAX_PARALLEL = 16
DEFAULT_INTRA_OP_THREADS = 1


def _import_og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InternalError(
            f"the ort runtime needs onnxruntime-genai (pip install onnxruntime-genai): {exc}"
        ) from None
    return og


def ort_model_dir(path: str | Path) -> Path:
    """The folder holding `genai_config.json`: `path` itself or its `onnx/` subfolder."""
    p = Path(path)
    for candidate in (p, p / "onnx"):
        if (candidate / "genai_config.json").is_file():
            return candidate
    raise NotFoundError(f"no ORT GenAI model at {p} (no genai_config.json there or in onnx/)", field="model")


def _resolve_model_dir(deployment: Deployment) -> Path:
    if deployment.model_path is not None:
        return ort_model_dir(deployment.model_path)
    model = deployment.model
    if model.startswith("builtin:"):
        from atomr.models import builtin_model_dir

        try:
            return ort_model_dir(builtin_model_dir(model))
        except FileNotFoundError as exc:
            raise NotFoundError(str(exc), field="model") from None
    return ort_model_dir(Path(model).expanduser())


def _int_option(options: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidRequestError(f"engine.{name} must be an integer in [{low}, {high}], got {value!r}", field=f"engine.{name}")
    return value


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
    vocab_size: int


def _open_model(folder: Path, intra_op_threads: int) -> _Model:
    og = _import_og()
    try:
        raw = json.loads((folder / "genai_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InternalError(f"cannot read {folder / 'genai_config.json'}: {exc}") from None
    overlay = {
        "model": {
            "decoder": {
                "session_options": {
                    "intra_op_num_threads": intra_op_threads,
                    "inter_op_num_threads": 1,
                }
            }
        }
    }
    try:
        config = og.Config(str(folder))
        config.overlay(json.dumps(overlay))
        model = og.Model(config)
        tokenizer = og.Tokenizer(model)
    except Exception as exc:
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
        vocab_size=int(mcfg.get("vocab_size") or 0),
    )


def _render_chat(m: _Model, messages: Sequence[Message]) -> str:
    payload = json.dumps([{"role": msg.role, "content": msg.content} for msg in messages])
    try:
        return str(m.tokenizer.apply_chat_template(payload, add_generation_prompt=True))
    except Exception as exc:
        raise InvalidRequestError(f"the model's chat template failed: {exc}", field="messages") from None


def _prompt_ids(m: _Model, messages: Sequence[Message] | None, prompt: str | None) -> list[int]:
    """Token ids of a chat (template applied) or completion prompt, BOS first when the model has one."""
    text = _render_chat(m, messages) if messages is not None else (prompt or "")
    ids = [int(i) for i in m.tokenizer.encode(text)]
    if m.bos_id is not None and (not ids or ids[0] != m.bos_id):
        ids.insert(0, m.bos_id)
    return ids


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


class OrtRunner(ModelRunner):
    """Serves one ORT GenAI model; many `generate` calls run at once, each in a worker thread."""

    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True, logprobs=True, batching=False, chat=True, completion=True, needs_gpu=False
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        options = dict(getattr(deployment, "engine", None) or {})
        self.intra_op_threads = _int_option(options, "intra_op_threads", DEFAULT_INTRA_OP_THREADS, 1, 256)
        self.max_parallel = _int_option(options, "max_parallel", DEFAULT_MAX_PARALLEL, 1, 4096)
        self._m: _Model | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._cancels: set[threading.Event] = set()
        self._active = 0
        self._active_lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        folder = _resolve_model_dir(self.deployment)
        self._m = await asyncio.to_thread(_open_model, folder, self.intra_op_threads)
        self._pool = ThreadPoolExecutor(max_workers=self.max_parallel, thread_name_prefix="atomr-ort")

    async def health(self) -> bool:
        return self._m is not None and self._pool is not None

    async def unload(self) -> None:
        for ev in list(self._cancels):
            ev.set()
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)
        self._m = None

    @property
    def context_length(self) -> int:
        return self._loaded().context_length

    @property
    def active_generations(self) -> int:
        """Worker threads currently stepping a generator (for tests and metrics)."""
        return self._active

    def _loaded(self) -> _Model:
        if self._m is None:
            raise UnavailableError("the ORT model is not loaded")
        return self._m

    def count_prompt_tokens(self, request: InferenceRequest) -> int:
        """Prompt tokens of `request` as the runner will feed them (template and BOS included)."""
        return len(_prompt_ids(self._loaded(), request.messages, request.prompt))

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        m = self._loaded()
        pool = self._pool
        if pool is None:
            raise UnavailableError("the ORT runner is unloaded")
        loop = asyncio.get_running_loop()
        channel = _Channel(loop)
        cancel = threading.Event()
        self._cancels.add(cancel)
        try:
            pool.submit(self._work, m, request, channel, cancel)
        except RuntimeError:  # pool shut down between the check and the submit
            self._cancels.discard(cancel)
            raise UnavailableError("the ORT runner is unloading") from None
        try:
            while True:
                for item in await channel.get_all():
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
        finally:
            cancel.set()
            self._cancels.discard(cancel)

    def _work(self, m: _Model, request: InferenceRequest, channel: _Channel, cancel: threading.Event) -> None:
        with self._active_lock:
            self._active += 1
        try:
            if not cancel.is_set():
                self._generate_sync(m, request, channel, cancel)
        except InferenceError as exc:
            channel.put(exc)
        except Exception as exc:  # an engine failure: report it, never let the thread die silently
            channel.put(InternalError(f"ORT GenAI failed: {type(exc).__name__}: {exc}"))
        finally:
            channel.put(_END)
            with self._active_lock:
                self._active -= 1

    def _generate_sync(
        self, m: _Model, request: InferenceRequest, channel: _Channel, cancel: threading.Event
    ) -> None:
        params = request.params
        ids = _prompt_ids(m, request.messages, request.prompt)
        n_prompt = len(ids)
        if n_prompt + params.max_tokens > m.context_length:
            raise ContextLengthError(
                f"the prompt has {n_prompt} tokens and max_tokens is {params.max_tokens}: "
                f"{n_prompt + params.max_tokens} exceeds the model's context length of {m.context_length}",
                field="messages" if request.messages is not None else "prompt",
                details={"prompt_tokens": n_prompt, "context_length": m.context_length},
            )
        og = m.og
        gp = og.GeneratorParams(m.model)
        search: dict[str, Any] = {"max_length": n_prompt + params.max_tokens, "min_length": 0}
        if params.greedy:
            search["do_sample"] = False
        else:
            search.update(
                do_sample=True,
                temperature=float(params.temperature),
                top_p=float(params.top_p),
                top_k=int(params.top_k),  # 0 disables top-k in ORT GenAI
                random_seed=params.seed if params.seed is not None else secrets.randbelow(2**31 - 1),
            )
        gp.set_search_options(**search)
        gen = og.Generator(m.model, gp)
        gen.append_tokens(ids)
        stream = m.tokenizer.create_stream()
        stops = StopMatcher(params.stop)
        want_logprobs = params.logprobs
        generated = 0
        finish = "length"
        while generated < params.max_tokens:
            if cancel.is_set():
                return
            logits = gen.get_logits() if want_logprobs else None
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            if token in m.eos_ids:
                finish = "stop"
                break
            generated += 1
            piece = stream.decode(token)
            lps = (TokenLogprob(piece, _log_softmax_at(logits, token)),) if logits is not None else None
            text, stopped = stops.feed(piece)
            if stopped:
                channel.put(
                    Chunk(text, 1, lps, finish_reason="stop", usage=Usage(n_prompt, generated))
                )
                return
            channel.put(Chunk(text, 1, lps))
            if gen.is_done():
                break
        channel.put(Chunk(stops.flush(), 0, () if want_logprobs else None, finish, Usage(n_prompt, generated)))


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
