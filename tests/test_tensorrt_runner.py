"""The TensorRT-LLM runner, without the package: it runs on NVIDIA GPUs only and cannot be
installed on CPU machines. What needs no engine runs everywhere: option validation, folder
detection, the request -> SamplingParams mapping, logprob entries, the error a missing package
gives, and that importing the module imports neither tensorrt_llm nor torch.

The model on a GPU (answers, streaming, stops, logprobs, cancellation, context length, concurrency,
the same greedy text as the other engines) is the runner contract's (tests/runners/), which skips
without the package and a GPU, saying why.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from atomr.runners.local.tensorrt.runner import (
    TensorRTOptions,
    TensorRTRunner,
    _logprob_value,
    _resolve,
    request_sampling_kwargs,
)
from atomr.runners.local.tensorrt.spec import is_trt_engine_dir

from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, InternalError, NotFoundError, UnavailableError
from atomr.core.types import SamplingParams
from tests.local_support import MODEL, tiny_deployment
from tests.runners.support import chat, collect_now

REPO = Path(__file__).resolve().parents[1]


def deployment(model_path: Path = MODEL, engine: dict[str, object] | None = None) -> Deployment:
    return tiny_deployment("tensorrt", model_path, gpus=1, **(engine or {}))


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
    with pytest.raises(UnavailableError):
        collect_now(TensorRTRunner(deployment()), chat("Hello!"))
