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
  structured_outputs_config  {"backend": "guidance"}: llguidance, which takes the lark grammars
                         of forced tool calls and writes JSON without free whitespace where the
                         schema's `x-guidance` says so (with xgrammar the tiny model filled JSON's
                         whitespace with newlines until max_tokens, `disable_any_whitespace`
                         notwithstanding)
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

Structured outputs and tools (`atomr.runners.common.structured`): response_format json_schema /
json_object / regex and forced tool calls are vLLM structured outputs; tools and a forced call's
opening go through the chat template; `<tool_call>` tags in the text become tool calls
(`with_tool_calls`). Penalties and logit_bias are vLLM's own; n > 1 is refused.

Modules: `engine` (importing vLLM, its environment, engine options and config), `process` (the
engine core process: its output, start and stop), `requests` (prompt, sampling and output
translation) and this one (`VllmRunner` and `vllm_greedy_reference`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.common.context import check_context, prompt_limit_of
from atomr.runners.common.model_files import hf_checkpoint, hf_model_dir
from atomr.runners.common.structured import TAGGED_CALL, OutputPlan, output_plan, tool_stream, with_tool_calls
from atomr.runners.local.vllm.engine import (
    DEFAULT_CPU_KV_CACHE_BYTES,
    RESERVED_OPTIONS,
    engine_config,
    engine_kwargs,
    error_text,
    import_vllm,
    vllm_env_defaults,
)
from atomr.runners.local.vllm.process import (
    EngineOutput,
    LoadedEngine,
    core_processes,
    shutdown,
    start_engine,
    stop_when_started,
)
from atomr.runners.local.vllm.requests import (
    FINISH_REASONS,
    logprob_entry,
    prompt_ids,
    sampling_params,
    structured_outputs,
)

from atomr.core.errors import (
    ConfigError,
    InferenceError,
    InternalError,
    InvalidRequestError,
    RunnerCrashedError,
    UnavailableError,
)
from atomr.core.runner import GUIDED, ModelRunner, PromptLimit, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, TokenLogprob, Usage

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment

__all__ = [
    "DEFAULT_CPU_KV_CACHE_BYTES",
    "RESERVED_OPTIONS",
    "WARM_UP_PROMPT",
    "VllmRunner",
    "vllm_env_defaults",
    "vllm_greedy_reference",
]

WARM_UP_PROMPT = "Hello"


class VllmRunner(ModelRunner):
    """Serves one model with one vLLM async engine; many `generate` calls run at once.

    `load`, `generate` and `unload` must run on one event loop (vLLM's output handler task lives
    on the loop of the first request).
    """

    # batching: vLLM schedules concurrent requests together (continuous batching).
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=True,
        chat=True,
        completion=True,
        needs_gpu=False,
        count_tokens=True,
        features=GUIDED | {"seed", "top_k", "penalties", "logit_bias"},
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        options = getattr(deployment, "engine", None) or {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ConfigError("engine must be a mapping of vLLM engine arguments", field="engine")
        self.options: dict[str, Any] = dict(options)
        self._e: LoadedEngine | None = None
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
        v = await asyncio.to_thread(import_vllm)  # seconds: keep the loop answering meanwhile
        kwargs = engine_kwargs(v, self.options, cpu=v.is_cpu)
        config = await asyncio.to_thread(engine_config, v, folder, kwargs, self.options)
        output = EngineOutput()
        starting = asyncio.ensure_future(asyncio.to_thread(start_engine, v, config, kwargs, folder, output))
        try:
            engine = await asyncio.shield(starting)
        except asyncio.CancelledError:  # the thread goes on: stop the engine it makes
            starting.add_done_callback(stop_when_started)
            raise
        try:
            e = LoadedEngine(
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
            await shutdown(engine)
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
        await shutdown(e.engine)

    # -- facts -------------------------------------------------------------------------------

    def _loaded(self) -> LoadedEngine:
        if self._e is None:
            raise UnavailableError("the vLLM engine is not loaded")
        return self._e

    @property
    def context_length(self) -> int:
        return self._loaded().context_length

    def prompt_limit(self) -> PromptLimit | None:
        return prompt_limit_of(self._loaded().context_length, hf_model_dir(self.deployment))

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
        return [int(p.pid) for p in core_processes(e.engine)] if e is not None else []

    async def count_tokens(self, request: InferenceRequest) -> int:
        """Prompt tokens of `request` as the runner feeds them (template and BOS included)."""
        e = self._loaded()
        return len(prompt_ids(e.tokenizer, request.messages, request.prompt, self._plan(e, request)))

    @staticmethod
    def _plan(e: LoadedEngine, request: InferenceRequest) -> OutputPlan:
        template = getattr(e.tokenizer, "chat_template", None)
        return output_plan(request, tagged_calls=isinstance(template, str) and TAGGED_CALL in template)

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        e = self._loaded()
        plan = self._plan(e, request)
        chunks = with_tool_calls(self._generate(e, request, plan), tool_stream(request, plan))
        async with contextlib.aclosing(chunks):  # closing it aborts the engine's request
            async for chunk in chunks:
                yield chunk

    async def _generate(self, e: LoadedEngine, request: InferenceRequest, plan: OutputPlan) -> AsyncIterator[Chunk]:
        if asyncio.get_running_loop() is not e.loop:
            raise InternalError("the vLLM runner must be used on the event loop that loaded it")
        if e.engine.errored:
            raise RunnerCrashedError(f"the vLLM engine has died: {e.death_reason()}")
        ids = prompt_ids(e.tokenizer, request.messages, request.prompt, plan)
        check_context(request, len(ids), e.context_length)
        want_logprobs = request.params.logprobs
        engine_id = f"{request.request_id}-{next(self._ids)}"  # unique even if a caller reuses ids
        try:
            prompt = e.engine_prompt(ids)
        except e.v.client_errors as exc:
            raise InvalidRequestError(f"vLLM rejected the prompt: {error_text(exc)}") from None
        try:
            params = sampling_params(e.v, request.params, **structured_outputs(e.v, plan.guidance))
        except ValueError as exc:  # vLLM checks its parameters as it builds them
            raise InvalidRequestError(f"vLLM refused the sampling parameters: {exc}") from None
        stream = e.engine.generate(prompt, params, engine_id)
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
                    if reason not in FINISH_REASONS:
                        raise self._ended_early(e, reason)
                    if reason == "stop" and n and not isinstance(completion.stop_reason, str):
                        n -= 1  # EOS or a stop token id: not a completion token
                lps: tuple[TokenLogprob, ...] | None = None
                if want_logprobs:
                    entries = completion.logprobs or ()
                    if len(entries) < n:
                        raise InternalError(f"vLLM returned {len(entries)} logprobs for {n} tokens")
                    lps = tuple(logprob_entry(e, entries[i], token_ids[i]) for i in range(n))
                generated += n
                if out.finished:
                    final = Chunk(
                        completion.text, n, lps, FINISH_REASONS[completion.finish_reason], Usage(len(ids), generated)
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

    async def _next_output(self, e: LoadedEngine, stream: Any) -> Any | None:
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
            raise InvalidRequestError(f"vLLM rejected the request: {error_text(exc)}") from None

    async def _death_reason(self, e: LoadedEngine) -> str:
        await asyncio.to_thread(e.output.settle)
        return e.death_reason()

    def _ended_early(self, e: LoadedEngine, reason: str | None) -> InferenceError:
        if reason == "abort":
            if e.unloading:
                return UnavailableError("the vLLM runner was unloaded during the generation")
            return UnavailableError("vLLM aborted the request")
        return InternalError(f"vLLM ended the request with finish reason {reason!r}")


# -- direct engine reference (tests) -------------------------------------------------------------

_REFERENCE: dict[str, Any] = {}


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
    v = import_vllm()
    llm = v.LLM(model=str(folder), **engine_kwargs(v, options, cpu=v.is_cpu))
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
    llm = _reference_llm(hf_checkpoint(model_dir), dict(engine or {}), gpu)
    params = import_vllm().SamplingParams(max_tokens=max_tokens, temperature=0.0)
    if isinstance(prompt_or_messages, str):
        outputs = llm.generate([prompt_or_messages], params, use_tqdm=False)
    else:
        conversation = [
            {"role": m.role, "content": m.content} if isinstance(m, Message) else dict(m) for m in prompt_or_messages
        ]
        outputs = llm.chat(conversation, params, use_tqdm=False, add_generation_prompt=True)
    return str(outputs[0].outputs[0].text)
