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

Structured outputs and tools (`structured`; features json_object, json_schema, regex, tools,
tool_choice). response_format json_schema / json_object / regex and forced tool calls are
generated under ORT GenAI's guidance (`GeneratorParams.set_guidance`, llguidance inside ORT GenAI,
built from the model's tokenizer; nothing else to install), so the answer always parses and
matches: json_schema -> the schema, json_object -> `{"type": "object"}`, regex -> the pattern
(an atomr extension), tool_choice a named function (or "required" with one tool) -> its
arguments under its parameter schema, "required" with several tools -> a choice among the
tools' calls. JSON is written compactly, spaced as `json.dumps` spaces it. Guidance is set per
og.Generator, so guided requests go to the "generators" scheduler whatever `scheduler` says
(a batch's rows share one grammar; og.Engine's TurnOptions.set_guidance was not used). A
schema or pattern llguidance cannot compile is refused (invalid_request naming the field)
before the first chunk. Forced calls stream as OpenAI streams them (id `call_<request id>_<k>`
and the name first, then argument pieces) and finish with "tool_calls"; when the model's chat
template writes calls as `<tool_call>{"name": ..., "arguments": ...}</tool_call>` (the built-in
tiny-llama's), the prompt is extended with that opening and the grammar ends with the closing,
so the model writes the arguments where it learnt to. tool_choice "auto" (or unset with
tools): the chat template renders the tools and the model decides; `<tool_call>` tags in its
text become tool calls as they stream (text that may start a tag is held back; a call with an
unknown name or arguments that do not parse stays text). "none": the tools are not rendered.
Messages with assistant tool calls and tool results render through the chat template
(OpenAI-format dicts). Measured on this shared 2-core CPU, tiny-llama, one ORT thread, og
called directly, medians of 15 x 60 tokens, 3 runs: a guided og.Generator is made in ~0.35 ms
against ~0.3 ms plain; a token costs ~0.14-0.21 ms guided (json_schema or regex) against
~0.06-0.08 ms plain, i.e. ~0.1 ms of llguidance mask per token, about 2-2.5x this tiny model's
forward pass and small beside a real model's. 50 json_schema requests at once: 50 of 50 answers
parsed and validated (tests/test_ort_tools.py).

Token accounting: EOS is not a completion token and has no chunk; `usage.completion_tokens`
equals the sum of chunk `token_count`s and, with logprobs, the number of logprob entries. A stop
sequence ends the text before it, with finish_reason "stop"; the token that completed it counts.
Closing the stream early (aclose, task cancelled) cancels the ORT work at the next token.

Modules: `model` (loading, tokenising), `jobs` (what the schedulers share: a request's job, its
channel to the asyncio side, its decoding), `structured` (guidance and tool calls), one per
scheduler (`batch`, `engine`, `generators`), and this one (`OrtRunner`, which routes each request
to a scheduler, and `ort_greedy_reference`).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from atomr.runners.common.context import check_context, prompt_limit_of
from atomr.runners.common.structured import OutputPlan, output_plan, tool_stream, with_tool_calls
from atomr.runners.local.ort.batch import BatchWorker
from atomr.runners.local.ort.engine import EngineDriver, uses_engine
from atomr.runners.local.ort.generators import Stepper
from atomr.runners.local.ort.jobs import END, Channel, Decoding, Job
from atomr.runners.local.ort.model import OrtModel, open_model, ort_model_dir, prompt_ids, resolve_model_dir
from atomr.runners.local.ort.spec import OrtOptions
from atomr.runners.spec import parse_engine_options

from atomr.core.errors import UnavailableError
from atomr.core.runner import GUIDED, ModelRunner, PromptLimit, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Message

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment

__all__ = ["OrtRunner", "ort_greedy_reference", "ort_model_dir"]


class OrtRunner(ModelRunner):
    """Serves one ORT GenAI model; many `generate` calls run at once."""

    # batching: concurrent generate calls are scheduled together by the runner itself.
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=True,
        chat=True,
        completion=True,
        needs_gpu=False,
        count_tokens=True,
        features=GUIDED | {"seed", "top_k"},
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        options = parse_engine_options("ort", deployment.engine, OrtOptions)
        self.intra_op_threads = options.intra_op_threads
        self.max_batch_size = options.max_batch_size
        self.max_wait_ms = options.max_wait_ms
        self.scheduler: str = options.scheduler
        self._m: OrtModel | None = None
        self._stepper: Stepper | None = None
        self._engine: EngineDriver | None = None
        self._batcher: BatchWorker | None = None
        self._jobs: set[Job] = set()
        self._active = 0
        self._active_lock = threading.Lock()
        # Running totals, for metrics and tests: requests finished, completion tokens generated
        # (EOS not counted), and requests whose caller went away before the end.
        self.stats = {"requests": 0, "tokens": 0, "cancelled": 0}

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        folder = resolve_model_dir(self.deployment)
        batch = self.max_batch_size if self.scheduler == "engine" else None
        m = await asyncio.to_thread(open_model, folder, self.intra_op_threads, batch)
        if self.scheduler == "engine":
            driver = EngineDriver(m, self._job_done)
            await asyncio.to_thread(driver.start)
            self._engine = driver
        elif self.scheduler == "batch":
            batcher = BatchWorker(m, self._job_done, self.max_batch_size, self.max_wait_ms / 1000.0)
            batcher.start()
            self._batcher = batcher
        stepper = Stepper(m, self._job_done)
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

    def prompt_limit(self) -> PromptLimit | None:
        m = self._loaded()
        return prompt_limit_of(m.context_length, m.folder)

    @property
    def batch_counts(self) -> tuple[int, int]:
        """(batches run, requests in them) by the "batch" scheduler; (0, 0) for the others."""
        b = self._batcher
        return (b.batches, b.rows) if b is not None else (0, 0)

    @property
    def active_generations(self) -> int:
        """Requests accepted and not yet finished on the ORT side (for tests and metrics)."""
        return self._active

    def _loaded(self) -> OrtModel:
        if self._m is None:
            raise UnavailableError("the ORT model is not loaded")
        return self._m

    async def count_tokens(self, request: InferenceRequest) -> int:
        """Prompt tokens of `request` as the runner feeds them (template, tools and BOS included)."""
        m = self._loaded()
        return len(self._prompt(m, request, output_plan(request, m.tagged_calls)))

    @staticmethod
    def _prompt(m: OrtModel, request: InferenceRequest, plan: OutputPlan) -> list[int]:
        ids = prompt_ids(m, request.messages, request.prompt, plan.template_tools)
        if plan.prefill:
            ids += [int(i) for i in m.tokenizer.encode(plan.prefill)]
        return ids

    def _job_done(self, job: Job) -> None:
        with self._active_lock:
            self._active -= 1
            self.stats["requests"] += 1
            self.stats["tokens"] += job.decoding.generated
            if job.cancel.is_set() and not job.decoding.finished:
                self.stats["cancelled"] += 1
        job.channel.put(END)

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        m = self._loaded()
        plan = output_plan(request, m.tagged_calls)
        chunks = with_tool_calls(self._generate(m, request, plan), tool_stream(request, plan))
        async with contextlib.aclosing(chunks):  # closing it stops the generation
            async for chunk in chunks:
                yield chunk

    async def _generate(self, m: OrtModel, request: InferenceRequest, plan: OutputPlan) -> AsyncIterator[Chunk]:
        stepper = self._stepper
        if stepper is None:
            raise UnavailableError("the ORT runner is unloaded")
        ids = self._prompt(m, request, plan)
        check_context(request, len(ids), m.context_length)
        channel = Channel(asyncio.get_running_loop())
        decoding = Decoding(m, request, len(ids), channel)
        job = Job(request, channel, threading.Event(), ids, decoding, guidance=plan.guidance)
        worker = self._worker_for(job, stepper)
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
                    if item is END:
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

    def _worker_for(self, job: Job, stepper: Stepper) -> EngineDriver | BatchWorker | Stepper:
        request = job.request
        if job.guidance is not None:  # guidance is set per og.Generator: the generators serve it
            return stepper
        if self._engine is not None and uses_engine(request):
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
    m = open_model(ort_model_dir(model_dir), intra_op_threads)
    if isinstance(prompt_or_messages, str):
        ids = prompt_ids(m, None, prompt_or_messages)
    else:
        msgs = [x if isinstance(x, Message) else Message(x["role"], x["content"]) for x in prompt_or_messages]
        ids = prompt_ids(m, msgs, None)
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
