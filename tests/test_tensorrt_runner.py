"""The TensorRT-LLM runner.

The engine runs on NVIDIA GPUs only and cannot be installed on CPU machines: the tests that load
the model skip there (saying why). What does not need the package runs everywhere: option
validation, folder detection, the request -> SamplingParams mapping, the error a missing package
gives, and that importing the module imports neither tensorrt_llm nor torch.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from atomr.runners.catalog import runner_class
from atomr.runners.local.tensorrt.runner import (
    TensorRTOptions,
    TensorRTRunner,
    _logprob_value,
    _resolve,
    request_sampling_kwargs,
)
from atomr.runners.local.tensorrt.spec import is_trt_engine_dir

from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, ContextLengthError, InternalError, NotFoundError, UnavailableError
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams
from atomr.models import builtin_model_dir

MODEL = builtin_model_dir("tiny-llama")
REPO = Path(__file__).resolve().parents[1]
HAS_TRTLLM = importlib.util.find_spec("tensorrt_llm") is not None


def deployment(model_path: Path = MODEL, engine: dict[str, object] | None = None) -> Deployment:
    return Deployment(
        name="tiny",
        model="builtin:tiny-llama",
        runtime="tensorrt",
        model_path=model_path,
        gpus_per_replica=1,
        engine=dict(engine or {}),
    )


# -- without the package -----------------------------------------------------------------------


def test_runtime_table_and_capabilities() -> None:
    assert runner_class("tensorrt") is TensorRTRunner
    caps = TensorRTRunner.capabilities
    assert caps.needs_gpu and caps.streaming and caps.logprobs and caps.batching


def test_importing_the_module_imports_no_engine() -> None:
    code = (
        "import sys, atomr.runners.local.tensorrt.runner; "
        "assert not {'tensorrt_llm', 'torch'} & set(sys.modules), 'engine imported'"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_options() -> None:
    assert TensorRTRunner(deployment()).options == TensorRTOptions()
    opts = TensorRTOptions.model_validate(
        {
            "backend": "tensorrt",
            "dtype": "float16",
            "max_seq_len": 4096,
            "max_batch_size": 64,
            "kv_cache_free_gpu_memory_fraction": 0.5,
            "gather_generation_logits": True,
        }
    )
    assert opts.llm_kwargs() == {
        "dtype": "float16",
        "tensor_parallel_size": 1,
        "max_seq_len": 4096,
        "max_batch_size": 64,
        "gather_generation_logits": True,
    }
    assert opts.kv_cache_free_gpu_memory_fraction == 0.5
    # tensor parallelism over every GPU the replica gets, unless set
    two = deployment().model_copy(update={"gpus_per_replica": 2})
    assert TensorRTRunner(two).options.tensor_parallel_size == 2
    one = two.model_copy(update={"engine": {"tensor_parallel_size": 1}})
    assert TensorRTRunner(one).options.tensor_parallel_size == 1
    bad: list[tuple[dict[str, object], str]] = [
        ({"backend": "onnx"}, "engine.backend"),
        ({"dtype": "int4"}, "engine.dtype"),
        ({"max_seq_len": 0}, "engine.max_seq_len"),
        ({"max_batch_size": True}, "engine.max_batch_size"),
        ({"tensor_parallel_size": "2"}, "engine.tensor_parallel_size"),
        ({"kv_cache_free_gpu_memory_fraction": 1.5}, "engine.kv_cache_free_gpu_memory_fraction"),
        ({"gather_generation_logits": "yes"}, "engine.gather_generation_logits"),
        ({"gpu_memory_utilization": 0.9}, "engine.gpu_memory_utilization"),  # a vLLM option
    ]
    for options, field in bad:
        with pytest.raises(ConfigError) as info:
            TensorRTRunner(deployment(engine=options))
        assert info.value.field == field, options


def test_sampling_mapping() -> None:
    greedy = request_sampling_kwargs(SamplingParams(max_tokens=9, seed=5, stop=("\n",)))
    # greedy is top_k=1 alone (TRT-LLM before 1.0 documents temperature as > 0); no seed needed, and stop
    # strings are matched by the runner on the text, not by TRT-LLM on standalone tokenizations
    assert greedy == {"max_tokens": 9, "detokenize": True, "skip_special_tokens": True, "top_k": 1}
    sampled = request_sampling_kwargs(SamplingParams(max_tokens=3, temperature=0.7, top_p=0.9, seed=11, logprobs=True))
    assert sampled == {
        "max_tokens": 3,
        "detokenize": True,
        "skip_special_tokens": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 0,
        "seed": 11,
        "logprobs": 1,
    }
    assert "seed" not in request_sampling_kwargs(SamplingParams(temperature=1.0))


def test_logprob_entries_of_every_shape() -> None:
    assert _logprob_value(-0.25, 7) == -0.25  # older TRT-LLM: one float per token
    # 1.x: {token_id: Logprob(logprob, rank)}, the sampled token among the top ones
    entry = {3: SimpleNamespace(logprob=-0.1, rank=1), 7: SimpleNamespace(logprob=-2.5, rank=4)}
    assert _logprob_value(entry, 7) == -2.5
    assert _logprob_value({7: -1.5}, 7) == -1.5


def test_model_folder_detection(tmp_path: Path) -> None:
    assert _resolve(deployment(), "auto") == (MODEL / "hf", "pytorch")
    assert not is_trt_engine_dir(MODEL / "hf")
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "config.json").write_text(json.dumps({"build_config": {"max_seq_len": 512}}))
    assert is_trt_engine_dir(engine)
    assert _resolve(deployment(engine), "auto") == (engine, "tensorrt")
    plan = tmp_path / "plan"
    plan.mkdir()
    (plan / "rank0.engine").write_bytes(b"")
    assert _resolve(deployment(plan), "tensorrt") == (plan, "tensorrt")
    with pytest.raises(NotFoundError) as info:  # an HF checkpoint is no engine
        _resolve(deployment(), "tensorrt")
    assert info.value.field == "model"
    with pytest.raises(NotFoundError):  # neither engine nor checkpoint
        asyncio.run(TensorRTRunner(deployment(MODEL / "onnx")).load())


def test_missing_package_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import tensorrt_llm -> ImportError
    with pytest.raises(InternalError, match=r"pip install 'atomr\[tensorrt\]'"):
        asyncio.run(TensorRTRunner(deployment()).load())


def test_generate_before_load_is_unavailable() -> None:
    async def go() -> None:
        with pytest.raises(UnavailableError):
            async for _ in TensorRTRunner(deployment()).generate(chat("Hello!")):
                pass

    asyncio.run(go())


# -- on a GPU with TensorRT-LLM ----------------------------------------------------------------


def gpu_visible() -> bool:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


@pytest.fixture(scope="module")
def runner() -> Iterator[TensorRTRunner]:
    if not HAS_TRTLLM:
        pytest.skip("tensorrt_llm is not installed (GPU-only engine)")
    if not gpu_visible():
        pytest.skip("no NVIDIA GPU is visible to torch (TensorRT-LLM needs one)")
    r = TensorRTRunner(deployment(engine={"kv_cache_free_gpu_memory_fraction": 0.2}))
    asyncio.run(r.load())
    yield r
    asyncio.run(r.unload())


def completion(prompt: str, **params: object) -> InferenceRequest:
    return InferenceRequest(model="tiny", prompt=prompt, params=SamplingParams(**params))  # type: ignore[arg-type]


def chat(question: str, **params: object) -> InferenceRequest:
    return InferenceRequest(model="tiny", messages=(Message("user", question),), params=SamplingParams(**params))  # type: ignore[arg-type]


async def collect(r: TensorRTRunner, req: InferenceRequest) -> list[Chunk]:
    req.validate()
    return [c async for c in r.generate(req)]


def run(r: TensorRTRunner, req: InferenceRequest) -> list[Chunk]:
    return asyncio.run(collect(r, req))


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def check_stream(chunks: list[Chunk]) -> Chunk:
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.usage is not None
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert sum(c.token_count for c in chunks) == last.usage.completion_tokens
    return last


def test_gpu_greedy_streams_and_matches_ort(runner: TensorRTRunner) -> None:
    chunks = run(runner, chat("What is an actor?", max_tokens=60))
    last = check_stream(chunks)
    assert last.usage is not None and last.usage.prompt_tokens == len(runner.prompt_ids(chat("What is an actor?")))
    if importlib.util.find_spec("onnxruntime_genai") is not None:  # same greedy text as ORT GenAI (fp32 weights)
        from atomr.runners.local.ort.runner import ort_greedy_reference

        ref = ort_greedy_reference(MODEL, [{"role": "user", "content": "What is an actor?"}], 60)
        assert text(chunks) == ref
        assert text(run(runner, completion("The actor model", max_tokens=40))) == ort_greedy_reference(
            MODEL, "The actor model", 40
        )


def test_gpu_length_stop_logprobs(runner: TensorRTRunner) -> None:
    last = check_stream(chunks := run(runner, completion("The actor model", max_tokens=5)))
    assert last.finish_reason == "length" and last.usage is not None and last.usage.completion_tokens == 5
    full = text(run(runner, completion("The actor model", max_tokens=60)))
    cut = full.find("small")
    if cut > 0:
        chunks = run(runner, completion("The actor model", max_tokens=60, stop=("small",)))
        assert text(chunks) == full[:cut] and check_stream(chunks).finish_reason == "stop"
    chunks = run(runner, chat("What is an actor?", max_tokens=20, logprobs=True))
    lps = [lp for c in chunks for lp in (c.logprobs or ())]
    assert len(lps) == check_stream(chunks).usage.completion_tokens  # type: ignore[union-attr]
    assert all(lp.logprob <= 0.0 for lp in lps)


def test_gpu_context_length_and_concurrency(runner: TensorRTRunner) -> None:
    with pytest.raises(ContextLengthError):
        run(runner, completion("word " * (runner.context_length + 10)))
    prompts = [chat("What is an actor?"), completion("To bake bread,"), chat("Hello!"), completion("In winter")] * 2
    sequential = [text(run(runner, p)) for p in prompts]

    async def together() -> list[list[Chunk]]:
        return await asyncio.gather(*(collect(runner, p) for p in prompts))

    assert [text(c) for c in asyncio.run(together())] == sequential


def test_gpu_cancellation(runner: TensorRTRunner) -> None:
    async def go() -> None:
        stream = runner.generate(completion("", max_tokens=200, temperature=1.5))
        assert isinstance(stream, AsyncIterator)
        await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]  # aborts the request in TRT-LLM
        started = time.perf_counter()
        assert check_stream(await collect(runner, chat("Hello!")))
        assert time.perf_counter() - started < 10

    asyncio.run(go())
