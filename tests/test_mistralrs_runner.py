"""The mistral.rs runner on the shipped tiny model, real engine (mistralrs CPU wheel).

What every runner does (answers, streaming, stops, logprobs, cancellation, context length,
concurrency) is the runner contract's (tests/runners/); here, what is mistral.rs's own: its
answers against mistral.rs called directly, how it streams and counts tokens, its sampling without
seeds, prompt counting without jinja2, its one worker's queue, its options and folders.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
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
from atomr.core.runner import check_supported
from atomr.core.types import InferenceRequest, Message, SamplingParams
from tests.conftest import require_engine
from tests.local_support import ACTOR, ACTOR_CHAT, MODEL, how_streams_ended, tiny_deployment, wait_idle
from tests.runners.support import chat, check_stream, collect, collect_now, completion, logprobs_of, text

REPO = Path(__file__).resolve().parents[1]
HAS_ORT = importlib.util.find_spec("onnxruntime_genai") is not None


def deployment(model_path: Path = MODEL, **engine: object) -> Deployment:
    return tiny_deployment("mistralrs", model_path, **engine)


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


def reference(req: InferenceRequest) -> str:
    """The same request through mistral.rs called directly."""
    ref = list(req.messages) if req.messages is not None else req.prompt or ""
    return mistralrs_greedy_reference(MODEL, ref, req.params.max_new_tokens)


def test_importing_the_module_does_not_import_the_engine() -> None:
    code = "import sys, atomr.runners.local.mistralrs.runner; assert 'mistralrs' not in sys.modules, 'engine imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_chat_streams_one_chunk_per_token(runner: MistralRsRunner) -> None:
    chunks = collect_now(runner, chat("What is an actor?", max_tokens=60))
    last = check_stream(chunks)
    assert text(chunks) == ACTOR_CHAT
    assert last.finish_reason == "stop"  # ended on EOS, which is not counted: the final chunk has no token
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 19)
    assert [c.token_count for c in chunks] == [1] * 19 + [0]
    assert all(c.text for c in chunks[:-1]) and last.text == ""
    chunks = collect_now(runner, completion("The actor model", max_tokens=120))
    assert len(chunks) == 1  # mistral.rs's Python completion API is not streamed
    assert chunks[0].usage is not None and (chunks[0].usage.prompt_tokens, chunks[0].token_count) == (5, 85)


def test_greedy_matches_mistralrs_directly(runner: MistralRsRunner) -> None:
    requests = [
        completion("The actor model", max_tokens=120),
        completion("To bake bread,", max_tokens=50),
        completion("", max_tokens=40),
        chat("What is an actor?", max_tokens=60),
        chat(("system", "You are a helpful assistant."), "What is an actor?", max_tokens=60),
        chat("Count to five."),
    ]
    for req in requests:
        got = text(collect_now(runner, req))
        assert got == text(collect_now(runner, req))  # deterministic
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
        chat(("system", "You are a helpful assistant."), "What is two plus two?"),
    ]:
        ref = [{"role": m.role, "content": m.content} for m in req.messages] if req.messages else req.prompt
        assert text(collect_now(runner, req)) == ort_greedy_reference(MODEL, ref or "", req.params.max_new_tokens), req


def test_the_last_token_comes_with_the_finish(runner: MistralRsRunner) -> None:
    chunks = collect_now(runner, chat("What is an actor?", max_tokens=5))
    assert (text(chunks), check_stream(chunks).finish_reason) == ("An actor is a", "length")
    assert [c.token_count for c in chunks] == [1] * 5  # at max_tokens no chunk without a token


def test_the_token_that_completes_a_stop_string_counts(runner: MistralRsRunner) -> None:
    chunks = collect_now(runner, chat("What is an actor?", stop=("small",)))
    last = check_stream(chunks)
    assert (text(chunks), last.finish_reason) == ("An actor is a ", "stop")
    assert last.usage is not None and last.usage.completion_tokens == 6  # the token that completed it counts
    assert all(c.token_count == 1 for c in chunks)
    chunks = collect_now(runner, chat("Count to five.", stop=(",",)))
    assert text(chunks) == "One" and chunks[-1].finish_reason == "stop"
    # completions: mistral.rs's own stop strings, same text and count as ORT GenAI gives
    chunks = collect_now(runner, completion("The actor model", max_tokens=100, stop=("messages", "pieces that")))
    last = check_stream(chunks)
    assert (text(chunks), last.finish_reason) == (" is a way to build programs from small ", "stop")
    assert last.usage is not None and last.usage.completion_tokens == 18


def test_logprobs_one_per_counted_token(runner: MistralRsRunner) -> None:
    chunks = collect_now(runner, chat("What is an actor?", max_tokens=60, logprobs=True))
    assert "".join(lp.token for lp in logprobs_of(chunks)) == text(chunks) == ACTOR_CHAT
    assert len(logprobs_of(chunks)) == 19
    # with a stop sequence and at length: one entry per counted token
    for req in (chat("What is an actor?", logprobs=True, stop=("small",)), chat("Hello!", max_tokens=3, logprobs=True)):
        chunks = collect_now(runner, req)
        assert len(logprobs_of(chunks)) == check_stream(chunks).usage.completion_tokens  # type: ignore[union-attr]


def test_sampling(runner: MistralRsRunner) -> None:
    story = chat("Tell me a story.", max_tokens=40, temperature=1.5, top_p=0.95)
    outs = {text(collect_now(runner, story)) for _ in range(6)}
    assert len(outs) > 1  # sampled, although the model's generation_config says do_sample: false
    chunks = collect_now(runner, completion("The", max_tokens=20, temperature=1.0, top_k=40))
    assert check_stream(chunks).finish_reason in ("stop", "length")
    with pytest.raises(InvalidRequestError) as refused:  # mistral.rs has no per-request seed: never ignored
        check_supported(runner, completion("The", max_tokens=20, temperature=1.0, seed=3))
    assert refused.value.field == "seed"
    # top_k=1 is greedy whatever the temperature
    assert text(collect_now(runner, chat("What is an actor?", temperature=2.0, top_k=1))) == ACTOR_CHAT


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


def test_chat_prompt_counts_without_jinja2(runner: MistralRsRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    chats = [
        chat("What is an actor?"),
        chat(("system", "You are a helpful assistant."), "Hello!"),
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
            a, b = collect_now(runner, req), collect_now(probing, req)
            assert text(a) == text(b) and a[-1].usage == b[-1].usage, req
        with pytest.raises(ContextLengthError) as info:  # longer than the context: mistral.rs refuses the probe
            collect_now(probing, chat("word " * 300))
        assert info.value.field == "messages"
        with pytest.raises(ContextLengthError) as info:
            collect_now(probing, chat("What is an actor?", max_tokens=246))
        assert info.value.details == {"prompt_tokens": 11, "context_length": 256}
    finally:
        asyncio.run(probing.unload())


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
        assert runner.stats["tokens"] - before["tokens"] == 85  # the chat never reached mistral.rs

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
