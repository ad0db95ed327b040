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
model loads, so a request with a `seed` is refused (field "seed"). Penalties and logit_bias are
mistral.rs's own.

Structured outputs and tools (`atomr.runners.common.structured`): response_format json_schema /
json_object / regex and forced tool calls are mistral.rs grammars (its llguidance: `grammar_type`
json_schema, regex or lark); with tool_choice auto the tools go to the chat template
(`tool_schemas`) and `<tool_call>` tags in the streamed text become tool calls (mistral.rs's own
tool-call parsing applies to whole answers only). A forced call is the bare arguments under the
function's schema: mistral.rs's chat API cannot prefill the model's own call opening.

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

Modules: `engine` (importing mistral.rs, opening a Runner, its errors as atomr's), `requests` (a
request's job, sampling translation, chat stream to chunks), `prompts` (chat prompt counting),
`worker` (the thread that owns the Runner) and this one (`MistralRsRunner` and
`mistralrs_greedy_reference`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from atomr.runners.common.context import prompt_limit_of
from atomr.runners.common.model_files import hf_checkpoint, hf_model_dir
from atomr.runners.common.structured import OutputPlan, output_plan, tool_stream, with_tool_calls
from atomr.runners.local.mistralrs.engine import MODEL_NAME, import_mistralrs, open_runner
from atomr.runners.local.mistralrs.requests import END, Handoff, Job, message_dicts, sampling_kwargs
from atomr.runners.local.mistralrs.spec import MistralRsOptions
from atomr.runners.local.mistralrs.worker import Worker
from atomr.runners.spec import parse_engine_options

from atomr.core.errors import InvalidRequestError, UnavailableError
from atomr.core.runner import GUIDED, ModelRunner, PromptLimit, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Message

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment

__all__ = ["MistralRsRunner", "mistralrs_greedy_reference", "sampling_kwargs"]


class MistralRsRunner(ModelRunner):
    """Serves one Hugging Face checkpoint with mistral.rs; requests run one at a time, FIFO."""

    # batching=False: concurrent generate calls queue for the one worker thread.
    # mistral.rs has no per-request seed: a seed is refused by name, never ignored.
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=False,
        chat=True,
        completion=True,
        needs_gpu=False,
        features=GUIDED | {"top_k", "penalties", "logit_bias"},
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        options = parse_engine_options("mistralrs", deployment.engine, MistralRsOptions)
        self.arch: str | None = options.arch
        self.dtype: str = options.dtype
        self._worker: Worker | None = None
        self._jobs: set[Job] = set()
        self._active = 0
        self._lock = threading.Lock()
        # Running totals, for metrics and tests: requests finished, completion tokens generated
        # (EOS not counted), and requests whose caller went away before the end.
        self.stats = {"requests": 0, "tokens": 0, "cancelled": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        folder = hf_model_dir(self.deployment)
        worker = Worker(folder, self.arch, self.dtype, self._job_done)
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

    def prompt_limit(self) -> PromptLimit | None:
        return prompt_limit_of(self._loaded().context_length, hf_model_dir(self.deployment))

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

    def _loaded(self) -> Worker:
        if self._worker is None:
            raise UnavailableError("the mistral.rs model is not loaded")
        return self._worker

    def _job_done(self, job: Job) -> None:
        with self._lock:
            self._active -= 1
            self.stats["requests"] += 1
            self.stats["tokens"] += job.generated
            if job.cancel.is_set() and not job.finished:
                self.stats["cancelled"] += 1
        job.out.put(END)

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        # No prefill through mistral.rs's chat API: forced tool calls are generated as bare
        # arguments under their schema (`structured.output_plan` with tagged_calls=False).
        plan = output_plan(request, tagged_calls=False)
        chunks = with_tool_calls(self._generate(request, plan), tool_stream(request, plan))
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def _generate(self, request: InferenceRequest, plan: OutputPlan) -> AsyncIterator[Chunk]:
        worker = self._loaded()
        if request.messages is None and request.params.logprobs:
            raise InvalidRequestError(
                "mistral.rs gives logprobs for chat requests only (its completion API has none)",
                field="logprobs",
            )
        if request.messages is None and plan.guidance is not None:
            raise InvalidRequestError(
                "mistral.rs constrains chat requests only (its completion API takes no grammar)",
                field="response_format",
            )
        job = Job(request, Handoff(asyncio.get_running_loop()), plan)
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
                if item is END:
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
    mr = import_mistralrs()
    folder = hf_checkpoint(model_dir)
    runner = open_runner(mr, folder, None, "auto")
    greedy = {"max_tokens": max_tokens, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
    if isinstance(prompt_or_messages, str):
        result = runner.send_completion_request(
            mr.CompletionRequest(model=MODEL_NAME, prompt=prompt_or_messages, **greedy)
        )
        return str(result.choices[0].text or "")
    messages = message_dicts(
        [m if isinstance(m, Message) else Message(m["role"], m["content"]) for m in prompt_or_messages]
    )
    response = runner.send_chat_completion_request(
        mr.ChatCompletionRequest(model=MODEL_NAME, messages=messages, **greedy)
    )
    return str(response.choices[0].message.content or "")
