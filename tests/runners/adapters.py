"""Each runtime's adapter to the runner contract: how to build its deployment, start its engine
or its fake server, and what it declares. The tests themselves are in contract.py, written once.

Local engines serve the shipped tiny model, whose greedy answers are the same on every engine
(tests/local_support.py); remote APIs answer from their fake server (tests/fakes/), reached
through the official SDKs.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, ClassVar

import pytest
from atomr.runners.catalog import runner_class

from atomr.config import deployment_from_dict
from atomr.core.runner import FEATURES, GUIDED, ModelRunner, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest
from tests.conftest import THREAD_ENV
from tests.fakes import anthropic_server, gemini_server, openai_server
from tests.fakes.anthropic_server import error_json as anthropic_error
from tests.fakes.gemini_server import error_json as gemini_error
from tests.local_support import ACTOR, ACTOR_CHAT, HELLO, VLLM_ENGINE, tiny_deployment
from tests.remote_support import load, new_key, remote_deployment
from tests.runners.contract import Answer, ErrorCase, RemoteAdapter, RuntimeAdapter
from tests.runners.support import chat, completion

LOCAL_CHATS = ("What is an actor?", "Hello!", "What is two plus two?", "Count to five.")
LOCAL_PROMPTS = ("The actor model", "To bake bread,", "The weather today", "In winter")


# -- local engines ---------------------------------------------------------------------------


@contextlib.contextmanager
def pinned_threads() -> Iterator[None]:
    """The engines' thread pools pinned to one thread (OMP, RAYON...) while a runner is loaded."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in THREAD_ENV.items():
            mp.setenv(name, value)
        yield


class LocalAdapter(RuntimeAdapter):
    """A local engine on the tiny model, one thread (OMP/RAYON pinned), loaded once per class."""

    local = True
    cut_within: ClassVar[int]  # tokens a generation may still take once its caller has left

    def __init__(self, **engine: Any) -> None:
        self.engine = engine

    def environment(self) -> contextlib.AbstractContextManager[None]:
        return pinned_threads()

    def deployment(self) -> Any:
        return tiny_deployment(self.runtime, **self.engine)

    async def start(self) -> ModelRunner:
        runner = runner_class(self.runtime)(self.deployment())
        await runner.load()
        assert await runner.health()
        return runner

    def request(self, mode: str, *, prompt: str | None = None, **params: Any) -> InferenceRequest:
        params = {"max_tokens": 120, **params}
        if mode == "chat":
            return chat(prompt if prompt is not None else LOCAL_CHATS[0], **params)
        return completion(prompt if prompt is not None else LOCAL_PROMPTS[0], **params)

    def answers(self, mode: str) -> list[Answer]:
        if mode == "chat":
            return [
                Answer(self.request("chat", max_tokens=60), ACTOR_CHAT, 11),
                Answer(chat(("system", "You are a helpful assistant."), LOCAL_CHATS[0], max_tokens=60), ACTOR_CHAT),
                Answer(chat("Hello!"), HELLO),
            ]
        return [Answer(self.request("completion"), ACTOR, 5)]

    def reached(self, runner: ModelRunner) -> int | None:
        return int(runner.stats["requests"])  # type: ignore[attr-defined]

    def active(self, runner: ModelRunner) -> int:
        return int(runner.active_generations)  # type: ignore[attr-defined]

    def context_length(self, runner: ModelRunner) -> int:
        return int(runner.context_length)  # type: ignore[attr-defined]

    def sampled(self, seed: int | None) -> InferenceRequest:
        if seed is None:
            return completion("The", max_tokens=20, temperature=1.0, top_k=40)
        return chat("Tell me a story.", max_tokens=40, temperature=1.5, top_p=0.95, top_k=50, seed=seed)

    def varied_requests(self) -> list[InferenceRequest]:
        """Chats and completions in turn, every prompt of each."""
        return [
            chat(LOCAL_CHATS[(i // 2) % 4]) if i % 2 else completion(LOCAL_PROMPTS[(i // 2) % 4])
            for i in range(self.concurrency)
        ]

    def long_request(self) -> InferenceRequest:
        # sampled at temperature 2: usually long (EOS is rarely drawn)
        return completion("", max_tokens=250, temperature=2.0)

    async def settle(self, runner: ModelRunner, timeout: float = 10.0) -> None:
        """Until no generation is in progress (a safety limit of `timeout` seconds)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.active(runner) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.002)
        assert self.active(runner) == 0, f"generations still in progress after {timeout} s"

    async def before_leaving(self, runner: ModelRunner) -> Any:
        await self.settle(runner)
        return dict(runner.stats)  # type: ignore[attr-defined]

    async def stopped_after_leaving(self, runner: ModelRunner, mark: Any, first: Chunk) -> bool:
        await self.settle(runner)  # the runner's active generations return to zero
        stats = runner.stats  # type: ignore[attr-defined]
        assert stats["requests"] == mark["requests"] + 1
        if first.finish_reason is not None or stats["cancelled"] == mark["cancelled"]:
            return False  # it ended (EOS) before the caller left: nothing to cut
        assert stats["cancelled"] == mark["cancelled"] + 1
        return bool(stats["tokens"] - mark["tokens"] <= self.cut_within)


class OrtAdapter(LocalAdapter):
    runtime = "ort"
    runner_path = "atomr.runners.local.ort.runner:OrtRunner"
    capabilities = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=True,
        count_tokens=True,
        features=GUIDED | {"seed", "top_k"},
    )
    concurrency = 16
    cut_within = 249  # usually within a few tokens; always before max_tokens

    def __init__(self, scheduler: str) -> None:
        super().__init__(scheduler=scheduler)


class OrtEmbedAdapter(RuntimeAdapter):
    """The `ort-embed` runtime on the built-in tiny embedding model (it only embeds: the embedding
    contract alone)."""

    runtime = "ort-embed"
    runner_path = "atomr.runners.local.ort.embedding:OrtEmbeddingRunner"
    capabilities = RunnerCapabilities(
        streaming=False,
        logprobs=False,
        batching=True,
        chat=False,
        completion=False,
        generate=False,
        embeddings=True,
        features=frozenset({"dimensions"}),
    )
    local = True
    logprob_modes = frozenset()  # it generates nothing

    def environment(self) -> contextlib.AbstractContextManager[None]:
        return pinned_threads()

    async def start(self) -> ModelRunner:
        dep = deployment_from_dict({"name": "embed", "model": "builtin:tiny-embed", "engine": {"intra_op_threads": 1}})
        runner = runner_class(self.runtime)(dep)
        await runner.load()
        assert await runner.health()
        return runner

    @contextlib.asynccontextmanager
    async def embedding(self, runner: ModelRunner) -> AsyncIterator[ModelRunner]:
        yield runner  # loaded once for the class

    def embed_calls(self, runner: ModelRunner) -> int:
        return int(runner.engine_calls)  # type: ignore[attr-defined]


class VllmAdapter(LocalAdapter):
    runtime = "vllm"
    runner_path = "atomr.runners.local.vllm.runner:VllmRunner"
    capabilities = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=True,
        count_tokens=True,
        features=GUIDED | {"seed", "top_k", "penalties", "logit_bias"},
    )
    one_token_per_chunk = False  # an engine step may bring several tokens
    cut_within = 62  # a quarter of the 250 it would have taken

    def __init__(self) -> None:
        super().__init__(**VLLM_ENGINE)


class MistralRsAdapter(LocalAdapter):
    runtime = "mistralrs"
    runner_path = "atomr.runners.local.mistralrs.runner:MistralRsRunner"
    capabilities = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=False,
        features=GUIDED | {"top_k", "penalties", "logit_bias"},
    )
    no_seed = "mistral.rs takes no per-request seed"
    logprob_modes = frozenset({"chat"})  # its completion API gives none
    streamed_modes = frozenset({"chat"})  # its completion API is not streamed
    cut_within = 5  # the worker looks at its caller before every token

    def long_request(self) -> InferenceRequest:
        # a sampled chat (completions are not streamed), often 50-100 tokens
        return chat("How do I bake bread?", max_tokens=200, temperature=2.0)


def gpu_visible() -> bool:
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


class TensorRTAdapter(LocalAdapter):
    runtime = "tensorrt"
    runner_path = "atomr.runners.local.tensorrt.runner:TensorRTRunner"
    capabilities = RunnerCapabilities(streaming=True, logprobs=True, batching=True, needs_gpu=True, count_tokens=True)
    one_token_per_chunk = False
    cut_within = 199

    def __init__(self) -> None:
        super().__init__(kv_cache_free_gpu_memory_fraction=0.2)

    def require(self) -> None:
        super().require()
        if not gpu_visible():
            pytest.skip("no NVIDIA GPU is visible to torch (TensorRT-LLM needs one)")

    def deployment(self) -> Any:
        return tiny_deployment(self.runtime, gpus=1, **self.engine)

    def reached(self, runner: ModelRunner) -> int | None:
        return None  # TensorRT-LLM keeps no count

    def active(self, runner: ModelRunner) -> int:
        return len(runner._live)  # type: ignore[attr-defined]

    def long_request(self) -> InferenceRequest:
        return completion("", max_tokens=200, temperature=1.5)

    async def before_leaving(self, runner: ModelRunner) -> Any:
        await self.settle(runner)
        return None

    async def stopped_after_leaving(self, runner: ModelRunner, mark: Any, first: Chunk) -> bool:
        await self.settle(runner)  # the request was aborted in TRT-LLM
        return first.finish_reason is None


# -- remote APIs -------------------------------------------------------------------------------

REMOTE_CHAT = (("system", "You are terse."), ("user", "Say hello to the fake"))


class FakeServedAdapter(RemoteAdapter):
    """A remote API against its fake server: one fake per class, fresh for every test."""

    fake_class: ClassVar[type[Any]]
    tokenize: ClassVar[Callable[[str], list[str]]]
    model: ClassVar[str]
    engine: ClassVar[dict[str, Any]] = {}  # engine options of every deployment built
    embedding_model: ClassVar[str] = ""  # where capabilities.embeddings: a model the fake embeds with
    vector_of: ClassVar[Callable[[str], list[float]]]  # ... and the vector it gives a text
    api_suffix: ClassVar[str] = ""
    capabilities = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=True,
        embeddings=True,
        features=frozenset(FEATURES) - {"messages_passthrough"},
    )
    seed_changes_text = False  # the fake answers the same whatever the seed

    def __init__(self) -> None:
        self.key = new_key(f"sk-{self.runtime}-contract-")
        self.fake: Any = None

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(self.key_env, self.key)
            yield

    def new_fake(self, api_key: str | None) -> Any:
        return self.fake_class(api_key=api_key)

    @contextlib.asynccontextmanager
    async def embedding(self, runner: ModelRunner) -> AsyncIterator[ModelRunner]:
        async with load(self.build(model=self.embedding_model)) as r:
            yield r

    def embed_calls(self, runner: ModelRunner) -> int:
        return int(self.fake.count())

    def expected_vector(self, text: str) -> list[float] | None:
        return self.vector_of(text)

    def embedding_tokens(self, texts: list[str]) -> int | None:
        return sum(len(self.tokenize(t)) for t in texts)

    def api_base_of(self, fake: Any) -> str:
        return str(fake.url) + self.api_suffix

    def build(self, api_base: str | None = None, model: str | None = None, **engine: Any) -> ModelRunner:
        engine = {**self.engine, **engine}
        dep = remote_deployment(model or self.model, api_base or self.api_base_of(self.fake), self.key_env, **engine)
        assert dep.runtime == self.runtime
        return runner_class(self.runtime)(dep)

    async def start(self) -> ModelRunner:
        self.fake = self.new_fake(self.key)
        runner = self.build()
        await runner.load()
        return runner

    async def stop(self, runner: ModelRunner) -> None:
        try:
            await runner.unload()
        finally:
            self.fake.close()

    def fresh(self) -> None:
        self.fake.reset()
        self.fake.context_window = 4096

    def request(self, mode: str, *, prompt: str | None = None, **params: Any) -> InferenceRequest:
        if mode == "chat":
            turns = REMOTE_CHAT if prompt is None else (("user", prompt),)
            return chat(*turns, model="remote", **params)
        return completion("Once upon a time" if prompt is None else prompt, model="remote", **params)

    def answers(self, mode: str) -> list[Answer]:
        return [Answer(self.request(mode), self.fake.reply_text)]

    def pieces(self, answer: str) -> list[str] | None:
        return self.tokenize(answer)

    def prompt_tokens(self, runner: ModelRunner, answer: Answer) -> int | None:
        return int(self.fake.served[-1].prompt_tokens)  # what the provider counted

    def reached(self, runner: ModelRunner) -> int | None:
        return int(self.fake.count())

    def context_length(self, runner: ModelRunner) -> int:
        self.fake.context_window = 40
        return 40

    def sampled(self, seed: int | None) -> InferenceRequest:
        return self.request("chat", stream=True, temperature=0.7, top_p=0.9, seed=seed)

    def sent_seed(self) -> Any:
        return self.fake.calls[-1].body.get("seed")

    def varied_requests(self) -> list[InferenceRequest]:
        return [self.request(("chat", "completion")[i % 2], stream=bool(i % 3)) for i in range(self.concurrency)]

    def long_request(self) -> InferenceRequest:
        self.fake.drip_next(0.1)  # the provider sends an event every 0.1 s: the caller leaves mid-way
        return self.request("chat", stream=True)

    async def before_leaving(self, runner: ModelRunner) -> Any:
        return len(self.fake.stream_ends)

    async def stopped_after_leaving(self, runner: ModelRunner, mark: Any, first: Chunk) -> bool:
        end = await asyncio.to_thread(self.fake.wait_stream_end, mark, 30.0)
        assert end is not None, "the provider's stream never ended"
        assert end.client_left, f"the provider sent all {end.total} events: the connection stayed open"
        return bool(end.sent < end.total)

    @property
    def unknown_model(self) -> str:
        return self.model.replace("fake", "nope")


def openai_error(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
    "Please reduce the length of the messages."
)
# the OpenAI wire's other statuses, and context length told by message
OPENAI_WIRE_ERRORS = (
    ErrorCase(403, "auth", False, 401),
    ErrorCase(408, "timeout", True, 504),
    ErrorCase(422, "invalid_request", False, 400),
    ErrorCase(502, "unavailable", True, 503),
    ErrorCase(503, "unavailable", True, 503),
    ErrorCase(504, "timeout", True, 504),
    ErrorCase(400, "context_length", False, 400, openai_error(CONTEXT_MESSAGE), name="by-message"),
)


class OpenAIAdapter(FakeServedAdapter):
    runtime = "openai"
    runner_path = "atomr.runners.remote.openai.runner:OpenAIRunner"
    imports_package = True
    provider = "openai"
    fake_class = openai_server.FakeOpenAI
    tokenize = staticmethod(openai_server.tokenize)
    model = "openai/gpt-fake"
    embedding_model = "openai/text-embedding-3-fake"
    vector_of = staticmethod(openai_server.embedding_of)
    api_suffix = "/v1"
    key_env = "ATOMR_TEST_OPENAI_KEY"
    events_before_text = 1  # the role delta
    cut_says = "finish_reason"
    pieces_before_bad_event = 2
    more_errors = (
        *OPENAI_WIRE_ERRORS,
        ErrorCase(
            400, "context_length", False, 400, openai_error("Too long.", "context_length_exceeded"), name="by-code"
        ),
        ErrorCase(400, "content_filtered", False, 400, openai_error("Blocked.", "content_filter"), name="by-code"),
    )
    finish_reasons = (
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("length", "length"),
        ("eos", "stop"),
    )
    keyless = (
        "with an api_base and no key the openai runner sends the placeholder key EMPTY, as OpenAI-compatible "
        "servers may want none (test_remote_openai checks it, and the error without an api_base)"
    )

    def fresh(self) -> None:
        self.fake.reset(api_key=self.key)


class OpenAISdkAdapter(OpenAIAdapter):
    """The `openai` runtime on the official SDK's transport (the reference for the lean one)."""

    engine = {"transport": "sdk"}


class LiteLLMAdapter(OpenAIAdapter):
    runtime = "litellm"
    runner_path = "atomr.runners.remote.litellm.runner:LiteLLMRunner"
    provider = "litellm"
    model = "litellm/openai/gpt-fake"
    embedding_model = "litellm/openai/text-embedding-3-fake"
    logprob_modes = frozenset({"chat"})  # LiteLLM gives none for text completions
    more_errors = OPENAI_WIRE_ERRORS
    finish_reasons = (("tool_calls", "tool_calls"), ("content_filter", "content_filter"))
    keyless = "LiteLLM looks each provider's key up itself, when it calls"


class AnthropicAdapter(FakeServedAdapter):
    runtime = "anthropic"
    runner_path = "atomr.runners.remote.anthropic.runner:AnthropicRunner"
    capabilities = RunnerCapabilities(
        streaming=True,
        logprobs=False,
        batching=True,
        count_tokens=True,
        features=frozenset(
            {
                "tools",
                "tool_choice",
                "messages_passthrough",
                "parallel_tool_calls",
                "json_schema",
                "images",
                "top_k",
                "reasoning_effort",
                "user",
            }
        ),
    )
    no_seed = "the Messages API takes no seed"
    logprob_modes = frozenset()
    provider = "anthropic"
    fake_class = anthropic_server.FakeAnthropic
    tokenize = staticmethod(anthropic_server.tokenize)
    model = "anthropic/claude-fake"
    key_env = "ATOMR_TEST_ANTHROPIC_KEY"
    events_before_text = 3  # message_start, content_block_start, ping
    cut_says = "message_stop"
    pieces_before_bad_event = 1
    more_errors = (
        ErrorCase(
            400, "context_length", False, 400, anthropic_error("invalid_request_error", "prompt is too long: 2 > 1")
        ),
        ErrorCase(403, "auth", False, 401, anthropic_error("permission_error", "Your API key cannot")),
        ErrorCase(413, "context_length", False, 400, anthropic_error("request_too_large", "Request exceeds the bytes")),
        ErrorCase(503, "unavailable", True, 503, anthropic_error("api_error", "Service unavailable")),
    )
    finish_reasons = (("refusal", "content_filter"),)

    def serve_finish(self, reason: str) -> None:
        self.fake.stop_reason_override = reason

    def error_label(self, payload: Any) -> str | None:
        return str(payload["error"]["type"])  # e.g. "overloaded_error"

    def prompt_tokens(self, runner: ModelRunner, answer: Answer) -> int | None:
        return int(self.fake.served[-1].input_tokens)


# a bad key, as Google answers it: 400 with this reason
BAD_KEY = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]


class GeminiAdapter(FakeServedAdapter):
    runtime = "gemini"
    runner_path = "atomr.runners.remote.gemini.runner:GeminiRunner"
    provider = "gemini"
    fake_class = gemini_server.FakeGemini
    tokenize = staticmethod(gemini_server.tokenize)
    model = "gemini/gemini-fake"
    embedding_model = "gemini/gemini-embedding-fake"
    vector_of = staticmethod(gemini_server.embedding_of)
    capabilities = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=True,
        features=frozenset(
            {
                "tools",
                "tool_choice",
                "json_object",
                "json_schema",
                "images",
                "n",
                "penalties",
                "top_logprobs",
                "top_k",
                "seed",
                "reasoning_effort",
                "dimensions",
            }
        ),
        embeddings=True,
    )
    key_env = "ATOMR_TEST_GEMINI_KEY"
    events_before_text = 0
    cut_says = "finishReason"
    pieces_before_bad_event = 1
    more_errors = (
        ErrorCase(
            400, "context_length", False, 400, gemini_error(400, "The input token count (9) exceeds the maximum")
        ),
        ErrorCase(
            400, "auth", False, 401, gemini_error(400, "API key not valid.", details=BAD_KEY), reported_status=401
        ),
        ErrorCase(403, "auth", False, 401, gemini_error(403, "Method doesn't allow unregistered callers.")),
        ErrorCase(503, "unavailable", True, 503, gemini_error(503, "The model is overloaded.")),
        ErrorCase(504, "timeout", True, 504, gemini_error(504, "Deadline expired before completion.")),
    )
    finish_reasons = (("SAFETY", "content_filter"),)

    @contextlib.contextmanager
    def environment(self) -> Iterator[None]:
        with super().environment(), pytest.MonkeyPatch.context() as mp:
            for name in ("GOOGLE_GENAI_API_VERSION", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE"):
                mp.delenv(name, raising=False)
            yield

    def error_label(self, payload: Any) -> str | None:
        return str(payload["error"]["status"])  # e.g. "RESOURCE_EXHAUSTED"

    def sent_seed(self) -> Any:
        return self.fake.calls[-1].body["generationConfig"].get("seed")
