"""The mistral.rs runner on the shipped tiny model, real engine (mistralrs CPU wheel)."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from atomr.runners.catalog import runner_class
from atomr.runners.local.mistralrs.runner import MistralRsRunner, mistralrs_greedy_reference, sampling_kwargs

from atomr.core.deployment import Deployment
from atomr.core.errors import (
    ConfigError,
    ContextLengthError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    UnavailableError,
)
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams
from atomr.models import builtin_model_dir
from tests.conftest import require_engine
from tests.local_support import how_streams_ended, keep_trying, wait_idle

MODEL = builtin_model_dir("tiny-llama")
REPO = Path(__file__).resolve().parents[1]
ACTOR = (
    " is a way to build programs from small pieces that share nothing. Each actor owns its own state and talks "
    "to other actors only by sending messages. An actor that receives a message may change its state, send "
    "messages to actors it knows, or create new actors."
)
ACTOR_CHAT = "An actor is a small program that owns its state and talks by messages."
HAS_ORT = importlib.util.find_spec("onnxruntime_genai") is not None


def deployment(model_path: Path = MODEL, **engine: object) -> Deployment:
    return Deployment(
        name="tiny", model="builtin:tiny-llama", runtime="mistralrs", model_path=model_path, engine=dict(engine)
    )


@pytest.fixture
def engine() -> None:
    """Skip (or, where CI requires the engine, fail) when mistralrs is not installed."""
    require_engine("mistralrs", "mistralrs")


@pytest.fixture(scope="module")
def runner() -> Iterator[MistralRsRunner]:
    require_engine("mistralrs", "mistralrs")
    r = MistralRsRunner(deployment())
    asyncio.run(r.load())
    assert asyncio.run(r.health())
    yield r
    asyncio.run(r.unload())


def completion(prompt: str, **params: object) -> InferenceRequest:
    return InferenceRequest(model="tiny", prompt=prompt, params=SamplingParams(**params))  # type: ignore[arg-type]


def chat(question: str, system: str | None = None, **params: object) -> InferenceRequest:
    msgs = ((Message("system", system),) if system else ()) + (Message("user", question),)
    return InferenceRequest(model="tiny", messages=msgs, params=SamplingParams(**params))  # type: ignore[arg-type]


async def collect(r: MistralRsRunner, req: InferenceRequest) -> list[Chunk]:
    req.validate()
    return [c async for c in r.generate(req)]


def run(r: MistralRsRunner, req: InferenceRequest) -> list[Chunk]:
    return asyncio.run(collect(r, req))


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def check_stream(chunks: list[Chunk]) -> Chunk:
    """Shape every stream must have; returns the last chunk."""
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.usage is not None
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert sum(c.token_count for c in chunks) == last.usage.completion_tokens
    return last


def reference(req: InferenceRequest) -> str:
    """The same request through mistral.rs called directly."""
    ref = list(req.messages) if req.messages is not None else req.prompt or ""
    return mistralrs_greedy_reference(MODEL, ref, req.params.max_tokens)


def test_runtime_table_names_this_runner() -> None:
    assert runner_class("mistralrs") is MistralRsRunner
    caps = MistralRsRunner.capabilities
    assert caps.streaming and caps.logprobs and caps.chat and caps.completion
    assert not caps.needs_gpu and not caps.batching


def test_importing_the_module_does_not_import_the_engine() -> None:
    code = "import sys, atomr.runners.local.mistralrs.runner; assert 'mistralrs' not in sys.modules, 'engine imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_chat_streams_one_chunk_per_token(runner: MistralRsRunner) -> None:
    chunks = run(runner, chat("What is an actor?", max_tokens=60))
    last = check_stream(chunks)
    assert text(chunks) == ACTOR_CHAT
    assert last.finish_reason == "stop"  # ended on EOS, which is not counted: the final chunk has no token
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (12, 20)
    assert [c.token_count for c in chunks] == [1] * 20 + [0]
    assert all(c.text for c in chunks[:-1]) and last.text == ""


def test_completion_is_one_chunk(runner: MistralRsRunner) -> None:
    chunks = run(runner, completion("The actor model", max_tokens=120))
    assert len(chunks) == 1  # mistral.rs's Python completion API is not streamed
    last = check_stream(chunks)
    assert text(chunks) == ACTOR and last.finish_reason == "stop"
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 82)


def test_greedy_matches_mistralrs_directly(runner: MistralRsRunner) -> None:
    requests = [
        completion("The actor model", max_tokens=120),
        completion("To bake bread,", max_tokens=50),
        completion("", max_tokens=40),
        chat("What is an actor?", max_tokens=60),
        chat("What is an actor?", "You are a helpful assistant.", max_tokens=60),
        chat("Count to five."),
    ]
    for req in requests:
        got = text(run(runner, req))
        assert got == text(run(runner, req))  # deterministic
        assert got == reference(req), req


@pytest.mark.skipif(not HAS_ORT, reason="onnxruntime_genai is not installed (no ORT reference)")
def test_greedy_matches_ort_genai(runner: MistralRsRunner) -> None:
    from atomr.runners.local.ort.runner import ort_greedy_reference

    for req in [
        completion("The actor model", max_tokens=120),
        completion("The weather today", max_tokens=80),
        completion("In winter", max_tokens=30),
        chat("What is an actor?", max_tokens=60),
        chat("Hello!"),
        chat("What is two plus two?", "You are a helpful assistant."),
    ]:
        ref = [{"role": m.role, "content": m.content} for m in req.messages] if req.messages else req.prompt
        assert text(run(runner, req)) == ort_greedy_reference(MODEL, ref or "", req.params.max_tokens), req


def test_max_tokens_gives_length(runner: MistralRsRunner) -> None:
    chunks = run(runner, chat("What is an actor?", max_tokens=5))
    last = check_stream(chunks)
    assert (text(chunks), last.finish_reason) == ("An actor is a", "length")
    assert last.usage is not None and last.usage.completion_tokens == 5
    assert [c.token_count for c in chunks] == [1] * 5  # the last token comes with the finish
    chunks = run(runner, completion("The actor model", max_tokens=5))
    last = check_stream(chunks)
    assert last.finish_reason == "length" and ACTOR.startswith(text(chunks)) and len(text(chunks)) > 5
    assert last.usage is not None and last.usage.completion_tokens == 5


def test_stop_sequences(runner: MistralRsRunner) -> None:
    chunks = run(runner, chat("What is an actor?", stop=("small",)))
    last = check_stream(chunks)
    assert (text(chunks), last.finish_reason) == ("An actor is a ", "stop")
    assert last.usage is not None and last.usage.completion_tokens == 6  # the token that completed it counts
    assert all(c.token_count == 1 for c in chunks)
    # a stop string spanning several tokens; the earliest of several wins
    assert text(run(runner, chat("What is an actor?", stop=("messages", "ll pro")))) == "An actor is a sma"
    # a stop string that never appears changes nothing, and held-back text is released at the end
    assert text(run(runner, chat("What is an actor?", stop=("zebra", "messages.!")))) == ACTOR_CHAT
    chunks = run(runner, chat("Count to five.", stop=(",",)))
    assert text(chunks) == "One" and chunks[-1].finish_reason == "stop"
    # completions: mistral.rs's own stop strings, same text and count as ORT GenAI gives
    chunks = run(runner, completion("The actor model", max_tokens=100, stop=("messages", "pieces that")))
    last = check_stream(chunks)
    assert (text(chunks), last.finish_reason) == (" is a way to build programs from small ", "stop")
    assert last.usage is not None and last.usage.completion_tokens == 18
    assert (
        text(run(runner, completion("The actor model", max_tokens=100, stop=("zebra", "actors."))))
        == (ACTOR.split("actors.")[0])
    )


def test_logprobs(runner: MistralRsRunner) -> None:
    chunks = run(runner, chat("What is an actor?", max_tokens=60, logprobs=True))
    last = check_stream(chunks)
    lps = [lp for c in chunks for lp in (c.logprobs or ())]
    assert all(c.logprobs is not None and len(c.logprobs) == c.token_count for c in chunks)
    assert last.usage is not None and len(lps) == last.usage.completion_tokens == 20
    assert all(lp.logprob <= 0.0 for lp in lps)
    assert "".join(lp.token for lp in lps) == text(chunks) == ACTOR_CHAT
    assert sum(lp.logprob for lp in lps) / len(lps) > -0.5  # greedy on memorised text: likely tokens
    # with a stop sequence and at length: one entry per counted token
    for req in (chat("What is an actor?", logprobs=True, stop=("small",)), chat("Hello!", max_tokens=3, logprobs=True)):
        chunks = run(runner, req)
        assert sum(len(c.logprobs or ()) for c in chunks) == check_stream(chunks).usage.completion_tokens  # type: ignore[union-attr]
    assert all(c.logprobs is None for c in run(runner, chat("Hello!", max_tokens=3)))
    with pytest.raises(InvalidRequestError) as info:  # mistral.rs's completion API gives no logprobs
        run(runner, completion("The actor model", logprobs=True))
    assert info.value.field == "logprobs"


def test_sampling(runner: MistralRsRunner) -> None:
    outs = {text(run(runner, chat("Tell me a story.", max_tokens=40, temperature=1.5, top_p=0.95))) for _ in range(6)}
    assert len(outs) > 1  # sampled, although the model's generation_config says do_sample: false
    chunks = run(runner, completion("The", max_tokens=20, temperature=1.0, top_k=40, seed=3))
    assert check_stream(chunks).finish_reason in ("stop", "length")
    # top_k=1 is greedy whatever the temperature
    assert text(run(runner, chat("What is an actor?", temperature=2.0, top_k=1))) == ACTOR_CHAT


def test_sampling_kwargs_mapping() -> None:
    assert sampling_kwargs(SamplingParams(max_tokens=7)) == {
        "max_tokens": 7,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "min_p": 0.0,
    }
    sampled = sampling_kwargs(SamplingParams(max_tokens=3, temperature=0.7, top_p=0.9, top_k=40, seed=1))
    assert (sampled["temperature"], sampled["top_p"], sampled["top_k"]) == (0.7, 0.9, 40)
    assert "seed" not in sampled  # mistral.rs has no per-request seed


def test_context_length_error(runner: MistralRsRunner) -> None:
    assert runner.context_length == 256
    with pytest.raises(ContextLengthError) as info:
        run(runner, completion("word " * 300))
    assert info.value.field == "prompt"
    with pytest.raises(ContextLengthError) as info:
        run(runner, chat("word " * 300))
    assert info.value.field == "messages"
    with pytest.raises(ContextLengthError) as info:  # the prompt fits, prompt + max_tokens does not
        run(runner, chat("What is an actor?", max_tokens=245))
    assert info.value.details == {"prompt_tokens": 12, "context_length": 256}
    with pytest.raises(ContextLengthError):
        run(runner, completion("The actor model", max_tokens=253))
    assert check_stream(run(runner, completion("The actor model", max_tokens=252)))  # exactly the context
    assert check_stream(run(runner, chat("What is an actor?", max_tokens=244)))


def test_chat_prompt_counts_without_jinja2(runner: MistralRsRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    chats = [
        chat("What is an actor?"),
        chat("Hello!", "You are a helpful assistant."),
        InferenceRequest(
            model="tiny",
            messages=(
                Message("user", "Hi"),
                Message("assistant", "Hello! How can I help you today?"),
                Message("user", "Bye"),
            ),
            params=SamplingParams(max_tokens=8),
        ),
        chat("  spaces\n\nand lines  ", max_tokens=8),
    ]
    assert runner.prompt_counting == ("template" if importlib.util.find_spec("jinja2") else "probe")
    monkeypatch.setitem(sys.modules, "jinja2", None)  # no jinja2: every chat is probed
    probing = MistralRsRunner(deployment())
    asyncio.run(probing.load())
    try:
        assert probing.prompt_counting == "probe"
        for req in chats:
            a, b = run(runner, req), run(probing, req)
            assert text(a) == text(b) and a[-1].usage == b[-1].usage, req
        with pytest.raises(ContextLengthError) as info:  # longer than the context: mistral.rs refuses the probe
            run(probing, chat("word " * 300))
        assert info.value.field == "messages"
        with pytest.raises(ContextLengthError) as info:
            run(probing, chat("What is an actor?", max_tokens=245))
        assert info.value.details == {"prompt_tokens": 12, "context_length": 256}
    finally:
        asyncio.run(probing.unload())


def test_eight_concurrent_equal_sequential(runner: MistralRsRunner) -> None:
    prompts: list[InferenceRequest] = []
    for i in range(8):
        if i % 2:
            prompts.append(chat(["What is an actor?", "Hello!", "What is two plus two?", "Count to five."][i // 2]))
        else:
            prompts.append(completion(["The actor model", "To bake bread,", "The weather today", "In winter"][i // 2]))
    sequential = [text(run(runner, p)) for p in prompts]

    async def together() -> list[list[Chunk]]:
        return await asyncio.gather(*(collect(runner, p) for p in prompts))

    results = asyncio.run(together())
    assert [text(c) for c in results] == sequential
    for chunks in results:
        check_stream(chunks)


# A sampled chat that often runs for 50-100 tokens with this model (greedy answers are short).
LONG = chat("How do I bake bread?", max_tokens=200, temperature=2.0)


async def cancel_after_first_chunk(r: MistralRsRunner, how: str) -> int | None:
    """Start a long sampled chat, leave after its first chunk.

    Returns how many tokens the worker took from mistral.rs before dropping the stream, or None
    when the generation ended by itself first (a sampled EOS).
    """
    await wait_idle(r)
    before = dict(r.stats)
    if how == "aclose":
        stream = r.generate(LONG)
        assert isinstance(stream, AsyncIterator)
        first_chunk = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        if first_chunk.finish_reason is not None:  # sampled EOS first: nothing left to cut
            await wait_idle(r, timeout=1.0)
            return None
    else:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in r.generate(LONG):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await wait_idle(r, timeout=1.0)  # the worker is free soon after the caller leaves
    assert r.stats["requests"] == before["requests"] + 1
    if r.stats["cancelled"] != before["cancelled"] + 1:  # ended before the caller left
        return None
    return r.stats["tokens"] - before["tokens"]


@pytest.mark.parametrize("how", ["aclose", "task_cancel"])
def test_cancellation_frees_the_worker(runner: MistralRsRunner, how: str) -> None:
    async def go() -> None:
        # The worker looks at the caller before each token it takes, so it usually stops after the
        # first one or two (dropping the stream also makes mistral.rs cancel the sequence at its
        # next token). A sampled chat may end on EOS before the caller leaves, and on a starved CPU
        # the caller's leaving can come late: tries go on (for a while, not a fixed few) until one
        # is cut within 5 tokens.
        def cut_soon(tries: list[int | None]) -> bool:
            return any(n is not None and n <= 5 for n in tries)

        tries = await keep_trying(lambda: cancel_after_first_chunk(runner, how), cut_soon, seconds=20.0)
        assert cut_soon(tries), tries
        # the worker serves the next request at once, and normally
        started = time.perf_counter()
        assert text(await collect(runner, chat("What is an actor?"))) == ACTOR_CHAT
        assert time.perf_counter() - started < 2.0

    asyncio.run(go())


def test_queued_request_whose_caller_left_is_skipped(runner: MistralRsRunner) -> None:
    async def go() -> None:
        await wait_idle(runner)
        before = dict(runner.stats)
        first = asyncio.create_task(collect(runner, completion("The actor model", max_tokens=120)))
        queued = runner.generate(chat("What is an actor?"))
        waiting = asyncio.ensure_future(queued.__anext__())
        await asyncio.sleep(0)  # both submitted; the second waits behind the first (FIFO)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        await queued.aclose()  # type: ignore[attr-defined]
        assert text(await first) == ACTOR
        await wait_idle(runner)
        assert runner.stats["requests"] == before["requests"] + 2
        assert runner.stats["cancelled"] == before["cancelled"] + 1
        assert runner.stats["tokens"] - before["tokens"] == 82  # the chat never reached mistral.rs

    asyncio.run(go())


@pytest.mark.usefixtures("engine")
def test_unload_during_generation_and_options() -> None:
    async def go() -> None:
        r = MistralRsRunner(deployment(arch="Llama", dtype="f32"))
        await r.load()
        assert r.load_seconds > 0
        streams = [
            r.generate(chat("Tell me about the actor model.", max_tokens=200, temperature=2.0)) for _ in range(6)
        ]
        firsts = [asyncio.ensure_future(s.__anext__()) for s in streams]
        await firsts[0]  # the first is streaming, the others wait in the worker's queue
        await r.unload()
        outcomes = await how_streams_ended(firsts, streams)  # complete or an error, never truncated
        assert "truncated" not in outcomes and outcomes[-1] == "unavailable", outcomes
        assert r.active_generations == 0
        assert not await r.health()
        with pytest.raises(UnavailableError):
            await collect(r, chat("Hello!"))

    asyncio.run(go())


def test_bad_options_and_folder() -> None:
    with pytest.raises(ConfigError) as info:
        MistralRsRunner(deployment(dtype="f8"))
    assert info.value.field == "engine.dtype"
    with pytest.raises(ConfigError) as info:
        MistralRsRunner(deployment(max_parallel=4))
    assert info.value.field == "engine.max_parallel"
    with pytest.raises(NotFoundError, match=r"config\.json") as missing:  # not a checkpoint at all
        asyncio.run(MistralRsRunner(deployment(MODEL / "onnx")).load())
    assert missing.value.field == "model"


@pytest.mark.usefixtures("engine")
def test_unknown_architecture_and_bad_model_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        asyncio.run(MistralRsRunner(deployment(arch="gpt-9")).load())
    assert info.value.field == "engine.arch" and "llama" in info.value.message
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(MODEL / "hf" / "config.json", partial)
    with pytest.raises(NotFoundError, match=r"tokenizer\.json") as missing:  # mistral.rs's own reason
        asyncio.run(MistralRsRunner(deployment(partial)).load())
    assert missing.value.field == "model" and "0: " not in missing.value.message  # no Rust backtrace
    broken = tmp_path / "broken"
    shutil.copytree(MODEL / "hf", broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(InternalError, match=r"mistral\.rs could not load"):
        asyncio.run(MistralRsRunner(deployment(broken)).load())


def test_missing_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mistralrs", None)  # import mistralrs -> ImportError
    with pytest.raises(InternalError, match=r"pip install 'atomr\[mistralrs\]'"):
        asyncio.run(MistralRsRunner(deployment()).load())
