"""The runner contract (contract.py) for every runtime in the catalog, each through its adapter
(adapters.py): the local engines on the shipped tiny model (ONNX Runtime GenAI under each of its
three schedulers), the remote APIs against their fake servers."""

from __future__ import annotations

from atomr.runners.catalog import RUNTIMES

from tests.runners import adapters
from tests.runners.contract import EmbeddingContract, RemoteRunnerContract, RunnerContract


class TestOrtBatch(RunnerContract):
    adapter = adapters.OrtAdapter("batch")


class TestOrtEngine(RunnerContract):
    adapter = adapters.OrtAdapter("engine")


class TestOrtGenerators(RunnerContract):
    adapter = adapters.OrtAdapter("generators")


class TestOrtEmbed(EmbeddingContract):
    adapter = adapters.OrtEmbedAdapter()


class TestVllm(RunnerContract):
    adapter = adapters.VllmAdapter()


class TestMistralRs(RunnerContract):
    adapter = adapters.MistralRsAdapter()


class TestTensorRT(RunnerContract):
    adapter = adapters.TensorRTAdapter()


class TestOpenAI(RemoteRunnerContract):
    adapter = adapters.OpenAIAdapter()


class TestOpenAISdk(RemoteRunnerContract):
    adapter = adapters.OpenAISdkAdapter()


class TestAnthropic(RemoteRunnerContract):
    adapter = adapters.AnthropicAdapter()


class TestGemini(RemoteRunnerContract):
    adapter = adapters.GeminiAdapter()


class TestLiteLLM(RemoteRunnerContract):
    adapter = adapters.LiteLLMAdapter()


def test_every_runtime_has_its_contract() -> None:
    covered = {cls.adapter.runtime for cls in globals().values() if isinstance(cls, type) and hasattr(cls, "adapter")}
    assert covered == {spec.name for spec in RUNTIMES}
