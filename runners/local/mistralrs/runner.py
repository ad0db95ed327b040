"""mistral.rs runner: local CPU (or GPU) inference of a Hugging Face checkpoint through the `mistralrs` package.

The model folder is the one holding `config.json` (safetensors weights and `tokenizer.json` beside
it), or a folder whose `hf/` subfolder does (a built-in model such as `builtin:tiny-llama`); see
`atomr.runners.common.model_files.hf_model_dir`. `mistralrs` is imported when a model is loaded, never
when `runners` is imported; `RAYON_NUM_THREADS` defaults to 1 first (a value already set wins).

Engine options (`deployment.engine`; an unknown key is a ConfigError naming it):
  arch   mistral.rs architecture, its `Architecture` member name in any case ("llama", "mistral",
         "qwen2", ...; default: mistral.rs reads it from config.json)
  dtype  "auto" (default), "f32", "f16" or "bf16"

Scheduling. One `mistralrs.Runner` is not thread-safe, so one worker thread owns it: it creates
it, makes every call on it and serves the requests one at a time, in the order they arrived
(FIFO). A request that arrives while another runs waits for it to end; batching concurrent
requests for this runtime is done elsewhere. The worker hands chunks to the asyncio side through
`loop.call_soon_threadsafe` onto one asyncio.Queue per request.

Chat requests stream (`ChatCompletionRequest(stream=True)`), one chunk per generated token, with
per-token logprobs when asked. Their prompt length (for the context check and usage) is counted
as mistral.rs renders it, chat template and BOS included: by rendering the checkpoint's template
with jinja2 and tokenizing with mistral.rs, once a check at load showed that this gives
mistral.rs's own counts; without jinja2 (or if the check fails), by a one-token greedy probe of
the same messages, which costs a second prefill. Completion requests use
`send_completion_request`, which mistral.rs's Python API offers only whole (no streaming, no
logprobs): the answer comes as one chunk holding every token, a completion asking for logprobs is
refused (InvalidRequestError, field "logprobs"), and a completion cannot be cut short once
the worker has started it.

Sampling: temperature 0 is greedy; top_p and top_k (0: off) are always sent, so the model's
`generation_config.json` (which may say `do_sample: false`) does not override them. mistral.rs has
no per-request seed: sampling draws from one engine-wide generator seeded with a constant when the
model loads, so a request's `seed` is ignored.

Token accounting: EOS is not a completion token and has no chunk; `usage.completion_tokens`
equals the sum of chunk `token_count`s (mistral.rs itself counts EOS, which is subtracted) and, for
a chat with logprobs, the number of logprob entries (except where mistral.rs joined tokens, see
below). Stop sequences: for chats, applied here with `atomr.runners.common.stops.StopMatcher` on the
streamed text (mistral.rs's own stop handling re-cuts the streamed pieces, so chunks no longer
match tokens); the text ends before the stop string, finish_reason "stop", the token that completed
it counts, and the stream is dropped at once. For completions, mistral.rs's own stop strings are
used (the text also ends before the stop string); it reports EOS and a stop string both as "stop",
so a completion with stop strings that ends on EOS counts the EOS as a completion token.
Closing the stream early (aclose, task cancelled): the worker drops the mistral.rs stream at the
next token it receives, and mistral.rs cancels the sequence when its next send fails.

mistral.rs quirks seen in 0.9.5: the first streamed piece of a chat answer has its leading
whitespace removed; a token that ends inside a multi-byte UTF-8 character gets no chunk of its own
(its text and count arrive with a later chunk, its logprob is lost); KV cache in f16 on CPU
(`MISTRALRS_CPU_KV_F32=1` for f32). Load errors carry mistral.rs's message (its Rust backtrace cut).

Measured on this shared 2-core CPU, tiny-llama, RAYON_NUM_THREADS=1, mistralrs 0.9.5 CPU wheel,
through `generate`, one request at a time: load 0.02-0.07 s (with the template check); greedy
chat (20 tokens) 8-10 ms a request, 2.0-2.5k tokens/s, first chunk after ~2 ms (~3 ms when chats
are probed); greedy completion (82 tokens, one chunk) ~22 ms, ~3.7k tokens/s. mistral.rs alone
decodes ~5k tokens/s here (60 tokens in 12 ms). Leaving a stream after its first chunk stopped the
work after one token every time; a mistral.rs stream kept open but unread goes on generating and
slowed the next request 3x. Greedy text is identical to ORT GenAI and to mistral.rs called
directly (`mistralrs_greedy_reference`) for every prompt tried.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.common.context import check_context
from atomr.runners.common.model_files import hf_model_dir
from atomr.runners.common.stops import StopMatcher
from atomr.runners.local.mistralrs.spec import MistralRsOptions
from atomr.runners.spec import parse_engine_options

from atomr.core.errors import (
    ConfigError,
    ContextLengthError,
    InferenceError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from atomr.core.runner import ModelRunner, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, TokenLogprob, Usage

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment

_MODEL_NAME = "default"  # mistral.rs ignores the request's model name with one model loaded
_BACKTRACE = re.compile(r"\n\s*0: ")


def _import_mistralrs() -> Any:
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    try:
        return importlib.import_module("mistralrs")
    except ImportError as exc:
        raise InternalError(
            f"the mistralrs runtime needs the mistralrs package (pip install 'atomr[mistralrs]'): {exc}"
        ) from None


def _engine_message(exc: BaseException) -> str:
    """mistral.rs's error text without the Rust backtrace it appends."""
    text = str(exc).strip() or type(exc).__name__
    return _BACKTRACE.split(text, maxsplit=1)[0].strip()


def _hf_folder(path: str | Path) -> Path:
    p = Path(path)
    for candidate in (p, p / "hf"):
        if (candidate / "config.json").is_file():
            return candidate
    raise NotFoundError(f"no Hugging Face checkpoint at {p} (no config.json there or in hf/)", field="model")


def _load_error(exc: BaseException, folder: Path) -> InferenceError:
    if isinstance(exc, InferenceError):
        return exc
    message = _engine_message(exc)
    if "was not found" in message or "does not exist" in message:
        return NotFoundError(f"mistral.rs could not load {folder}: {message}", field="model")
    return InternalError(f"mistral.rs could not load {folder}: {message}")


def _open_runner(mr: Any, folder: Path, arch: str | None, dtype: str) -> Any:
    """A `mistralrs.Runner` for the checkpoint in `folder` (local files only, no hub token)."""
    architecture = None
    if arch is not None:  # pyo3 enums: look members up by name (case-insensitive)
        by_name = {name.lower(): name for name in dir(mr.Architecture) if not name.startswith("_")}
        name = by_name.get(arch.lower())
        if name is None:
            raise ConfigError(
                f"engine.arch {arch!r} is not a mistral.rs architecture; known: {', '.join(sorted(by_name))}",
                field="engine.arch",
            )
        architecture = getattr(mr.Architecture, name)
    model_dtype = getattr(mr.ModelDType, {"auto": "Auto", "f32": "F32", "f16": "F16", "bf16": "BF16"}[dtype])
    which = mr.Which.Plain(model_id=str(folder), arch=architecture, dtype=model_dtype)
    try:
        return mr.Runner(which=which, token_source="none")
    except BaseException as exc:  # noqa: BLE001 - Rust panics arrive as BaseException
        raise _load_error(exc, folder) from None


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Request fields for mistral.rs from atomr's sampling parameters (both request kinds take them).

    Every sampling field is explicit so that the model's generation_config.json cannot replace it:
    mistral.rs fills only the fields a request leaves unset (with `do_sample: false` it would set
    top_k=1 and make any temperature greedy). temperature 0 is greedy in mistral.rs (below 1e-7);
    top_k 0 means no top-k there too. There is no per-request seed.
    """
    return {
        "max_tokens": params.max_tokens,
        "temperature": 0.0 if params.greedy else float(params.temperature),
        "top_p": float(params.top_p),
        "top_k": int(params.top_k),
        "min_p": 0.0,
    }


def _message_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


class _Handoff:
    """Worker thread -> the asyncio task reading one request, through an asyncio.Queue."""

    __slots__ = ("_loop", "_queue")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(self, item: Any) -> None:
        """Callable from any thread."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            pass

    async def get(self) -> Any:
        return await self._queue.get()


_END = object()


@dataclass(slots=True, eq=False)
class _Job:
    request: InferenceRequest
    out: _Handoff
    cancel: threading.Event = field(default_factory=threading.Event)
    generated: int = 0  # completion tokens produced so far (EOS not counted)
    finished: bool = False  # the final chunk was handed over


class _ChatStream:
    """One chat request's text side: stop matcher, logprobs, counts; emits the chunks."""

    __slots__ = ("job", "logprobs", "n_prompt", "stops")

    def __init__(self, job: _Job, n_prompt: int) -> None:
        self.job = job
        self.n_prompt = n_prompt
        self.stops = StopMatcher(job.request.params.stop)
        self.logprobs = job.request.params.logprobs

    def _lps(self, lp: Any, n: int) -> tuple[TokenLogprob, ...] | None:
        if not self.logprobs:
            return None
        if lp is None or n == 0:
            return ()
        return (TokenLogprob(str(lp.token), float(lp.logprob)),)

    def feed(self, response: Any) -> bool:
        """Handle one mistral.rs chunk response; True when the request is finished."""
        job = self.job
        choice = response.choices[0]
        piece = choice.delta.content or ""
        reason = choice.finish_reason
        if reason is None:  # one generated token
            job.generated += 1
            text, stopped = self.stops.feed(piece)
            lps = self._lps(choice.logprobs, 1)
            if stopped:
                self._final(Chunk(text, 1, lps, "stop", Usage(self.n_prompt, job.generated)))
                return True
            job.out.put(Chunk(text, 1, lps))
            return False
        if reason not in ("stop", "length"):
            raise InternalError(f"mistral.rs ended the generation with finish_reason {reason!r}")
        # The last response: with "length" it carries the last token; with "stop" it stands for
        # EOS, which mistral.rs counts and atomr does not. Counting from mistral.rs's usage also
        # covers tokens that got no chunk of their own (a split UTF-8 character).
        eos = 1 if reason == "stop" else 0
        usage = response.usage
        total = int(usage.completion_tokens) - eos if usage is not None else job.generated + 1 - eos
        n = max(0, total - job.generated)
        job.generated += n
        text, stopped = self.stops.feed(piece)
        if not stopped:
            text += self.stops.flush()
        lps = self._lps(choice.logprobs if n else None, n)
        self._final(Chunk(text, n, lps, "stop" if stopped else reason, Usage(self.n_prompt, job.generated)))
        return True

    def _final(self, chunk: Chunk) -> None:
        self.job.finished = True
        self.job.out.put(chunk)


def _request_error(exc: BaseException, request: InferenceRequest, context_length: int) -> InferenceError:
    """An engine exception raised while serving `request`, as an InferenceError."""
    if isinstance(exc, InferenceError):
        return exc
    message = _engine_message(exc)
    if "sequence length is greater than" in message:  # mistral.rs refusing a prompt longer than the context
        return ContextLengthError(
            f"the prompt is longer than the model's context length of {context_length} ({message})",
            field="messages" if request.messages is not None else "prompt",
            details={"context_length": context_length},
        )
    return InternalError(f"mistral.rs failed: {message}")


# Conversations that check, at load, that the Python rendering of the chat template counts the
# same prompt tokens as mistral.rs (a model whose template refuses one of them skips it).
_CHECK_CHATS: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi."},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "What is an actor?"},
    ],
)


def _python_chat_template(folder: Path) -> Callable[[list[dict[str, str]]], str] | None:
    """The checkpoint's chat template rendered with jinja2 the way HF tokenizers do, if possible.

    None when jinja2 is not installed or no template is found in `chat_template.jinja` or
    `tokenizer_config.json`.
    """
    try:
        jinja2 = importlib.import_module("jinja2")
        sandbox = importlib.import_module("jinja2.sandbox")
    except ImportError:
        return None
    try:
        cfg_file = folder / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}
        jinja_file = folder / "chat_template.jinja"
        source = jinja_file.read_text() if jinja_file.is_file() else cfg.get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(source, list):  # named templates: the default one
        source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(source, str) or not source:
        return None

    def special(name: str) -> str:
        value = cfg.get(name)
        value = value.get("content") if isinstance(value, dict) else value
        return value if isinstance(value, str) else ""

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    env = sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    try:
        template = env.from_string(source)
    except jinja2.TemplateError:
        return None
    tokens = {name: special(name) for name in ("bos_token", "eos_token", "unk_token")}

    def render(messages: list[dict[str, str]]) -> str:
        return str(template.render(messages=messages, add_generation_prompt=True, **tokens))

    return render


class _ChatPrompts:
    """Prompt token counts of chats as mistral.rs renders them (chat template, BOS).

    mistral.rs's Python API renders templates only inside a request. The exact count is a
    one-token greedy probe of the same messages, which costs a whole prefill (mistral.rs's prefix
    cache did not make the request after it cheaper). So when jinja2 is installed, the template is
    rendered here and tokenized by mistral.rs (`tokenize_text`), after checking at load that this
    gives mistral.rs's own counts; otherwise, or when that check fails, every chat is probed.
    """

    def __init__(self, mr: Any, runner: Any, folder: Path) -> None:
        self._mr = mr
        self._runner = runner
        self._render = _python_chat_template(folder)
        self.method = "template" if self._render is not None and self._rendering_agrees() else "probe"

    def count(self, messages: list[dict[str, str]]) -> int:
        if self.method == "template":
            try:
                return self._rendered(messages)
            except Exception:  # noqa: BLE001 - the template refused the messages here: mistral.rs says why
                pass
        return self.probe(messages)

    def probe(self, messages: list[dict[str, str]]) -> int:
        greedy = {"max_tokens": 1, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
        request = self._mr.ChatCompletionRequest(model=_MODEL_NAME, messages=messages, **greedy)
        return int(self._runner.send_chat_completion_request(request).usage.prompt_tokens)

    def _rendered(self, messages: list[dict[str, str]]) -> int:
        assert self._render is not None
        return len(self._runner.tokenize_text(self._render(messages), False, None))

    def _rendering_agrees(self) -> bool:
        checked = 0
        for chat in _CHECK_CHATS:
            try:
                expected = self.probe(chat)
            except Exception:  # noqa: BLE001 - this model's template refuses this conversation
                continue
            try:
                if self._rendered(chat) != expected:
                    return False
            except Exception:  # noqa: BLE001 - jinja2 fails where mistral.rs's renderer works
                return False
            checked += 1
        return checked > 0


class _Worker:
    """The one thread that owns the `mistralrs.Runner` and serves requests in FIFO order."""

    def __init__(self, folder: Path, arch: str | None, dtype: str, on_done: Callable[[_Job], None]) -> None:
        self._folder = folder
        self._arch = arch
        self._dtype = dtype
        self._on_done = on_done
        self._inbox: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._load_error: InferenceError | None = None
        self.context_length = 0
        self.load_seconds = 0.0
        self.prompts: _ChatPrompts | None = None
        self._thread = threading.Thread(target=self._main, name="atomr-mistralrs", daemon=True)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        """Start the thread and wait until the model is loaded (raises the load error)."""
        self._thread.start()
        self._ready.wait()
        if self._load_error is not None:
            self._thread.join()
            raise self._load_error

    def submit(self, job: _Job) -> None:
        if not self.alive:
            raise UnavailableError("the mistral.rs worker thread has stopped")
        self._inbox.put(job)

    def stop(self) -> None:
        self._inbox.put(None)
        self._thread.join()

    def _main(self) -> None:
        started = time.perf_counter()
        try:
            mr = _import_mistralrs()
            runner = _open_runner(mr, self._folder, self._arch, self._dtype)
            context = runner.max_sequence_length()
            if not context:
                raise InternalError(f"mistral.rs gives no maximum sequence length for {self._folder}")
            self.context_length = int(context)
            self.prompts = _ChatPrompts(mr, runner, self._folder)
        except BaseException as exc:  # noqa: BLE001 - reported to load()
            self._load_error = _load_error(exc, self._folder)
            self._ready.set()
            return
        self.load_seconds = time.perf_counter() - started
        self._ready.set()
        try:
            while True:
                job = self._inbox.get()
                if job is None:
                    break
                try:
                    if not job.cancel.is_set():
                        self._serve(mr, runner, job)
                except BaseException as exc:  # noqa: BLE001 - answer the caller with the engine's reason
                    job.out.put(_request_error(exc, job.request, self.context_length))
                self._on_done(job)
        finally:
            while True:  # stopping: whatever is still queued gets an answer
                try:
                    job = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job.out.put(UnavailableError("the mistral.rs runner was unloaded"))
                    self._on_done(job)
            del runner

    def _serve(self, mr: Any, runner: Any, job: _Job) -> None:
        request = job.request
        kwargs = sampling_kwargs(request.params)
        if request.messages is None:
            self._serve_completion(mr, runner, job, kwargs)
            return
        messages = _message_dicts(request.messages)
        assert self.prompts is not None
        n_prompt = self.prompts.count(messages)
        check_context(request, n_prompt, self.context_length)
        if job.cancel.is_set():
            return
        stream: Any = runner.send_chat_completion_request(
            mr.ChatCompletionRequest(
                model=_MODEL_NAME, messages=messages, stream=True, logprobs=request.params.logprobs, **kwargs
            )
        )
        decoding = _ChatStream(job, n_prompt)
        try:
            for response in stream:
                # The caller left: return, dropping the stream; mistral.rs cancels the sequence when
                # it next fails to send.
                if job.cancel.is_set() or decoding.feed(response):
                    return
        finally:
            stream = None
        if not job.finished:
            raise InternalError("mistral.rs ended the stream without a finish reason")

    def _serve_completion(self, mr: Any, runner: Any, job: _Job, kwargs: dict[str, Any]) -> None:
        request = job.request
        prompt = request.prompt or ""
        n_prompt = len(runner.tokenize_text(prompt, True, None))  # BOS included, as mistral.rs feeds it
        check_context(request, n_prompt, self.context_length)
        if job.cancel.is_set():
            return
        stops = list(request.params.stop)
        result = runner.send_completion_request(
            mr.CompletionRequest(model=_MODEL_NAME, prompt=prompt, stop_seqs=stops or None, **kwargs)
        )
        choice = result.choices[0]
        reason = choice.finish_reason
        if reason not in ("stop", "length"):
            raise InternalError(f"mistral.rs ended the completion with finish_reason {reason!r}")
        n = int(result.usage.completion_tokens)
        if reason == "stop" and not stops:  # ended on EOS, which mistral.rs counts
            n -= 1
        job.generated = max(0, n)
        text = choice.text or ""
        job.finished = True
        job.out.put(Chunk(text, job.generated, None, reason, Usage(n_prompt, job.generated)))


class MistralRsRunner(ModelRunner):
    """Serves one Hugging Face checkpoint with mistral.rs; requests run one at a time, FIFO."""

    # batching=False: concurrent generate calls queue for the one worker thread.
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True, logprobs=True, batching=False, chat=True, completion=True, needs_gpu=False
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        options = parse_engine_options("mistralrs", deployment.engine, MistralRsOptions)
        self.arch: str | None = options.arch
        self.dtype: str = options.dtype
        self._worker: _Worker | None = None
        self._jobs: set[_Job] = set()
        self._active = 0
        self._lock = threading.Lock()
        # Running totals, for metrics and tests: requests finished, completion tokens generated
        # (EOS not counted), and requests whose caller went away before the end.
        self.stats = {"requests": 0, "tokens": 0, "cancelled": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        folder = hf_model_dir(self.deployment)
        worker = _Worker(folder, self.arch, self.dtype, self._job_done)
        await asyncio.to_thread(worker.start)
        self._worker = worker

    async def health(self) -> bool:
        return self._worker is not None and self._worker.alive

    async def unload(self) -> None:
        worker, self._worker = self._worker, None
        for job in list(self._jobs):  # callers still reading get an error, not a truncated stream
            job.out.put(UnavailableError("the mistral.rs runner was unloaded during the generation"))
            job.cancel.set()
        if worker is not None:
            await asyncio.to_thread(worker.stop)

    @property
    def context_length(self) -> int:
        return self._loaded().context_length

    @property
    def load_seconds(self) -> float:
        """How long creating the mistral.rs Runner took."""
        return self._loaded().load_seconds

    @property
    def prompt_counting(self) -> str:
        """How chat prompts are counted: "template" (rendered here) or "probe" (asked of mistral.rs)."""
        prompts = self._loaded().prompts
        return prompts.method if prompts is not None else "probe"

    @property
    def active_generations(self) -> int:
        """Requests accepted and not yet finished by the worker (for tests and metrics)."""
        return self._active

    def _loaded(self) -> _Worker:
        if self._worker is None:
            raise UnavailableError("the mistral.rs model is not loaded")
        return self._worker

    def _job_done(self, job: _Job) -> None:
        with self._lock:
            self._active -= 1
            self.stats["requests"] += 1
            self.stats["tokens"] += job.generated
            if job.cancel.is_set() and not job.finished:
                self.stats["cancelled"] += 1
        job.out.put(_END)

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        worker = self._loaded()
        if request.messages is None and request.params.logprobs:
            raise InvalidRequestError(
                "mistral.rs gives logprobs for chat requests only (its completion API has none)",
                field="logprobs",
            )
        job = _Job(request, _Handoff(asyncio.get_running_loop()))
        with self._lock:
            self._active += 1
        self._jobs.add(job)
        try:
            worker.submit(job)
        except UnavailableError:
            self._jobs.discard(job)
            self._job_done(job)
            raise UnavailableError("the mistral.rs runner is unloading or its worker stopped") from None
        done = False
        try:
            while not done:
                item = await job.out.get()
                if item is _END:
                    done = True
                elif isinstance(item, BaseException):
                    raise item
                else:
                    done = item.finish_reason is not None
                    yield item
        finally:
            self._jobs.discard(job)
            if not done:  # the caller went away (aclose, cancelled task) or an error: stop the work
                job.cancel.set()


def mistralrs_greedy_reference(
    model_dir: str | Path,
    prompt_or_messages: str | Sequence[Message] | Sequence[dict[str, str]],
    max_tokens: int,
) -> str:
    """Greedy text from mistral.rs called directly (a fresh Runner, non-streaming), for comparisons.

    A string is a completion prompt (`send_completion_request`), a sequence a chat
    (`send_chat_completion_request`). `model_dir` is an HF folder or a folder holding `hf/`.
    """
    mr = _import_mistralrs()
    folder = _hf_folder(model_dir)
    runner = _open_runner(mr, folder, None, "auto")
    greedy = {"max_tokens": max_tokens, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    if isinstance(prompt_or_messages, str):
        result = runner.send_completion_request(
            mr.CompletionRequest(model=_MODEL_NAME, prompt=prompt_or_messages, **greedy)
        )
        return str(result.choices[0].text or "")
    messages = _message_dicts(
        [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in prompt_or_messages]
    )
    response = runner.send_chat_completion_request(
        mr.ChatCompletionRequest(model=_MODEL_NAME, messages=messages, **greedy)
    )
    return str(response.choices[0].message.content or "")
