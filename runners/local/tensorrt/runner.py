"""TensorRT-LLM runner: GPU inference through TensorRT-LLM's high-level LLM API (`tensorrt_llm.LLM`).

The model folder is a prebuilt TensorRT engine (a `config.json` holding `build_config`, or
`*.engine` files), or a Hugging Face checkpoint (the folder holding `config.json`, or its `hf/`
subfolder: a built-in model such as `builtin:tiny-llama`). `tensorrt_llm` (which imports torch)
is imported when a model is loaded, never when `runners` is imported; it needs an NVIDIA GPU and
cannot be installed on a CPU-only machine (`pip install 'atomr[tensorrt]'` on a GPU host).

Engine options (`deployment.engine`; an unknown key is a ConfigError naming it):
  backend                            "auto" (default: "tensorrt" for an engine folder, else
                                     "pytorch"), "pytorch" (`tensorrt_llm.LLM` on the HF
                                     checkpoint) or "tensorrt" (`tensorrt_llm._tensorrt_engine.LLM`
                                     on an engine folder; `tensorrt_llm.LLM` before TRT-LLM 1.0)
  dtype                              "auto" (default), "float16", "bfloat16" or "float32"
  max_seq_len, max_batch_size,       passed to LLM(...) when given (TRT-LLM deduces them from
  max_num_tokens                     the model or engine otherwise)
  kv_cache_free_gpu_memory_fraction  share of free GPU memory for the KV cache, in (0, 1]
  tensor_parallel_size               GPUs for tensor parallelism (default: the deployment's
                                     gpus_per_replica, at least 1)
  gather_generation_logits           true to allow logprobs with the "tensorrt" backend (TRT-LLM
                                     needs the generation logits for them there)

Scheduling: TensorRT-LLM batches in flight by itself; every `generate` call submits its request
at once (`LLM.generate_async(token_ids, sampling_params, streaming=True)`) and reads the
streamed outputs on the asyncio loop (the result object binds to the loop that submits it).
Prompts are tokenized here with the engine's tokenizer (chat: the model's chat template rendered
as text, BOS from the template; completion: the tokenizer's own special tokens), so the context
check runs before anything is submitted and the prompt count in `usage` is exact.

Sampling (`request_sampling_kwargs`, a pure mapping): greedy is top_k=1 (greedy in every
TRT-LLM version; before 1.0 temperature is documented as > 0); otherwise temperature, top_p, top_k (0:
off) and seed go as they are. Stop sequences are matched here on the streamed text
(`atomr.runners.common.stops.StopMatcher`), not by TRT-LLM, which matches the stop string's standalone
tokenization and misses it when the text tokenizes differently in context; on a match the text
ends before the stop string, finish_reason "stop", and the request is aborted. Token accounting:
end-of-sequence tokens are not counted and have no text; each chunk carries the new tokens of one
streamed output (`token_count` may exceed 1), and `usage.completion_tokens` is their sum. With
logprobs, one `TokenLogprob(piece, logprob)` per counted token (the piece decoded alone; TRT-LLM
gives floats or {token_id: Logprob} entries depending on version and backend). Closing the stream
early (aclose, task cancelled) aborts the request in TRT-LLM.

Not measured here: this machine has no GPU and TensorRT-LLM cannot be installed on it, so the
runner was written against TRT-LLM's LLM API source (1.x, checked against 0.1x where it
differs) and only its pure parts (options, sampling mapping, load errors without the package) are
tested here. `scripts/gpu_check.py` loads the built-in model through this runner on a GPU machine
and prints load time and tokens/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.common.context import check_context, prompt_limit_of
from atomr.runners.common.model_files import hf_model_dir, model_root
from atomr.runners.common.stops import StopMatcher
from atomr.runners.local.tensorrt.spec import SPEC, TensorRTOptions, is_trt_engine_dir
from atomr.runners.spec import parse_engine_options

from atomr.core.errors import (
    ContextLengthError,
    InferenceError,
    InferenceTimeoutError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from atomr.core.runner import ModelRunner, PromptLimit, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, TokenLogprob, Usage

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment


def request_sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for `tensorrt_llm.SamplingParams` from atomr's sampling parameters.

    Greedy is top_k=1 with temperature and top_p left unset (greedy in TRT-LLM 0.1x, which refuses
    temperature 0, and in 1.x). Stop strings are not passed: the runner matches them on the text.
    """
    kwargs: dict[str, Any] = {"max_tokens": params.max_new_tokens, "detokenize": True, "skip_special_tokens": True}
    if params.greedy:
        kwargs["top_k"] = 1
    else:
        temperature, top_p, top_k = params.sampling
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
        if params.seed is not None:
            kwargs["seed"] = params.seed
    if params.logprobs:
        kwargs["logprobs"] = 1  # the sampled token's logprob (plus the top-1)
    return kwargs


def _resolve(deployment: Deployment, backend: str) -> tuple[Path, str]:
    """(model folder, backend) for a deployment: an engine folder, else its HF checkpoint."""
    root = model_root(deployment)
    if backend in ("auto", "tensorrt") and root.is_dir() and is_trt_engine_dir(root):
        return root, "tensorrt"
    if backend == "tensorrt":
        raise NotFoundError(
            f"no TensorRT engine at {root} (no *.engine, no build_config in config.json)", field="model"
        )
    return hf_model_dir(deployment), "pytorch"


def _import_trtllm() -> Any:
    try:
        return importlib.import_module("tensorrt_llm")
    except ImportError as exc:
        raise InternalError(f"the tensorrt runtime needs TensorRT-LLM ({SPEC.hint}): {exc}") from None
    except (OSError, RuntimeError) as exc:  # installed, but its CUDA libraries do not load here
        raise InternalError(f"TensorRT-LLM could not be imported: {type(exc).__name__}: {exc}") from None


def _llm_class(trt: Any, backend: str) -> Any:
    if backend == "tensorrt":
        try:  # TRT-LLM >= 1.0: tensorrt_llm.LLM is the PyTorch backend, engines load here
            return importlib.import_module("tensorrt_llm._tensorrt_engine").LLM
        except ImportError:
            return trt.LLM  # before 1.0 the default LLM is the TensorRT engine backend
    return trt.LLM


def _open_llm(folder: Path, backend: str, options: TensorRTOptions) -> tuple[Any, Any]:
    """Import TensorRT-LLM and load the model: (the tensorrt_llm module, the LLM). Blocking."""
    trt = _import_trtllm()
    torch = importlib.import_module("torch")
    if not torch.cuda.is_available():
        raise InternalError("TensorRT-LLM needs an NVIDIA GPU and torch sees none here (check CUDA_VISIBLE_DEVICES)")
    kwargs = options.llm_kwargs()
    if options.kv_cache_free_gpu_memory_fraction is not None:
        llmapi = importlib.import_module("tensorrt_llm.llmapi")
        kwargs["kv_cache_config"] = llmapi.KvCacheConfig(
            free_gpu_memory_fraction=options.kv_cache_free_gpu_memory_fraction
        )
    if backend == "pytorch":
        kwargs["backend"] = "pytorch"
    try:
        return trt, _llm_class(trt, backend)(model=str(folder), **kwargs)
    except Exception as exc:  # noqa: BLE001 - any load failure: the engine's reason, as an InferenceError
        raise InternalError(f"TensorRT-LLM could not load {folder}: {type(exc).__name__}: {exc}") from None


def _context_length(llm: Any, folder: Path) -> int:
    """Most tokens (prompt + completion) one request may use."""
    args = getattr(llm, "args", None)
    for value in (
        getattr(args, "max_seq_len", None),
        getattr(getattr(args, "build_config", None), "max_seq_len", None),
    ):
        if isinstance(value, int) and value > 0:
            return value
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    for value in (config.get("build_config", {}).get("max_seq_len"), config.get("max_position_embeddings")):
        if isinstance(value, int) and value > 0:
            return value
    raise InternalError(f"cannot tell the context length of {folder} (set engine.max_seq_len)")


def _eos_ids(tokenizer: Any, folder: Path) -> frozenset[int]:
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    try:
        eos = json.loads((folder / "generation_config.json").read_text()).get("eos_token_id")
    except (OSError, ValueError):
        eos = None
    for value in eos if isinstance(eos, list) else [eos]:
        if isinstance(value, int):
            ids.add(value)
    return frozenset(ids)


def _logprob_value(entry: Any, token_id: int) -> float:
    """A generated token's logprob from a TRT-LLM entry: a float, or {token_id: Logprob | float}."""
    if isinstance(entry, dict):
        entry = entry.get(token_id, next(iter(entry.values()), math.nan))
    return float(getattr(entry, "logprob", entry))


@dataclass(slots=True)
class _Loaded:
    llm: Any
    trt: Any
    tokenizer: Any
    folder: Path
    backend: str
    context_length: int
    eos_ids: frozenset[int]


class TensorRTRunner(ModelRunner):
    """Serves one model with TensorRT-LLM on the GPU(s) this process sees."""

    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True, logprobs=True, batching=True, chat=True, completion=True, needs_gpu=True, count_tokens=True
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self.options = parse_engine_options("tensorrt", deployment.engine, TensorRTOptions)
        gpus = deployment.gpus_per_replica
        if "tensor_parallel_size" not in deployment.engine and gpus > 1:  # use every GPU the replica is given
            self.options = self.options.model_copy(update={"tensor_parallel_size": gpus})
        self._m: _Loaded | None = None
        self._live: set[Any] = set()  # TRT-LLM results still streaming

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        folder, backend = _resolve(self.deployment, self.options.backend)
        trt, llm = await asyncio.to_thread(_open_llm, folder, backend, self.options)
        try:
            tokenizer = getattr(llm, "tokenizer", None)
            if tokenizer is None:
                raise InternalError(f"TensorRT-LLM loaded {folder} without a tokenizer (tokenizer files missing?)")
            self._m = _Loaded(
                llm=llm,
                trt=trt,
                tokenizer=tokenizer,
                folder=folder,
                backend=backend,
                context_length=_context_length(llm, folder),
                eos_ids=_eos_ids(tokenizer, folder),
            )
        except BaseException:
            await asyncio.to_thread(llm.shutdown)
            raise

    async def health(self) -> bool:
        return self._m is not None

    async def unload(self) -> None:
        m, self._m = self._m, None
        for result in list(self._live):
            with contextlib.suppress(Exception):
                result.abort()
        if m is not None:
            await asyncio.to_thread(m.llm.shutdown)

    @property
    def context_length(self) -> int:
        return self._loaded().context_length

    def prompt_limit(self) -> PromptLimit | None:
        m = self._loaded()
        return prompt_limit_of(m.context_length, m.folder)

    @property
    def backend(self) -> str:
        """The TRT-LLM backend in use: "pytorch" or "tensorrt"."""
        return self._loaded().backend

    def _loaded(self) -> _Loaded:
        if self._m is None:
            raise UnavailableError("the TensorRT-LLM model is not loaded")
        return self._m

    async def count_tokens(self, request: InferenceRequest) -> int:
        return len(self.prompt_ids(request))

    def prompt_ids(self, request: InferenceRequest) -> list[int]:
        """Token ids fed to TRT-LLM: the chat template rendered (BOS from it) or the completion prompt."""
        tokenizer = self._loaded().tokenizer
        if request.messages is not None:
            try:
                text = tokenizer.apply_chat_template(
                    _message_dicts(request.messages), tokenize=False, add_generation_prompt=True
                )
            except Exception as exc:  # noqa: BLE001 - jinja2 / template errors
                raise InvalidRequestError(f"the model's chat template failed: {exc}", field="messages") from None
            return [int(i) for i in tokenizer.encode(str(text), add_special_tokens=False)]
        return [int(i) for i in tokenizer.encode(request.prompt or "")]

    # -- generation --------------------------------------------------------------------------

    async def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        m = self._loaded()
        params = request.params
        if params.logprobs and m.backend == "tensorrt" and not self.options.gather_generation_logits:
            raise InvalidRequestError(
                "logprobs with a TensorRT engine need engine.gather_generation_logits: true", field="logprobs"
            )
        ids = self.prompt_ids(request)
        check_context(request, len(ids), m.context_length)
        try:
            sampling = m.trt.SamplingParams(**request_sampling_kwargs(params))
            result = m.llm.generate_async(ids, sampling_params=sampling, streaming=True)
        except Exception as exc:  # noqa: BLE001 - refused by TRT-LLM: its reason
            raise _request_error(exc, request, m.context_length) from None
        self._live.add(result)
        stops = StopMatcher(params.stop)
        generated = 0
        seen_ids = seen_text = 0
        done = False
        try:
            async for output in result:
                out = output.outputs[0]
                token_ids = list(out.token_ids or ())
                new = range(seen_ids, len(token_ids))
                seen_ids = len(token_ids)
                text = str(out.text or "")
                piece, seen_text = text[seen_text:], max(seen_text, len(text))
                counted = [i for i in new if token_ids[i] not in m.eos_ids]
                generated += len(counted)
                lps: tuple[TokenLogprob, ...] | None = None
                if params.logprobs:
                    entries = list(out.logprobs or ())
                    lps = tuple(
                        TokenLogprob(
                            str(m.tokenizer.decode([token_ids[i]], skip_special_tokens=True)),
                            _logprob_value(entries[i], token_ids[i]),
                        )
                        for i in counted
                        if i < len(entries)
                    )
                emitted, stopped = stops.feed(piece)
                if stopped:
                    done = True
                    yield Chunk(emitted, len(counted), lps, "stop", Usage(len(ids), generated))
                    return
                if not output.finished:
                    if emitted or counted:  # an update with nothing new (held-back text) makes no chunk
                        yield Chunk(emitted, len(counted), lps)
                    continue
                done = True
                yield Chunk(emitted + stops.flush(), len(counted), lps, _finish_reason(out), Usage(len(ids), generated))
                return
            raise InternalError("TensorRT-LLM ended the stream without finishing the request")
        except InferenceError:
            raise
        except Exception as exc:  # noqa: BLE001 - a failure inside TRT-LLM: its reason
            raise _request_error(exc, request, m.context_length) from None
        finally:
            self._live.discard(result)
            if not done or not result.finished:  # caller gone, error, or stop string: free the slot
                with contextlib.suppress(Exception):
                    result.abort()


def _finish_reason(out: Any) -> str:
    reason = getattr(out, "finish_reason", None)
    if reason in ("stop", "length"):
        return str(reason)
    if reason == "timeout":
        raise InferenceTimeoutError("TensorRT-LLM timed the request out")
    if reason == "cancelled":  # aborted by someone else than this stream: the runner is unloading
        raise UnavailableError("TensorRT-LLM cancelled the request (the runner is unloading)")
    raise InternalError(f"TensorRT-LLM ended the request with finish_reason {reason!r}")


def _message_dicts(messages: Sequence[Message]) -> list[dict[str, Any]]:
    return [m.for_template() for m in messages]


def _request_error(exc: BaseException, request: InferenceRequest, context_length: int) -> InferenceError:
    if isinstance(exc, InferenceError):
        return exc
    message = f"{type(exc).__name__}: {exc}"
    if "max_seq_len" in message or "max_num_tokens" in message:  # TRT-LLM's own length checks
        return ContextLengthError(
            f"TensorRT-LLM refused the request's length: {message}",
            field="messages" if request.messages is not None else "prompt",
            details={"context_length": context_length},
        )
    return InternalError(f"TensorRT-LLM failed: {message}")
