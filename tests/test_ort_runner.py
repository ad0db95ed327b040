"""The ONNX Runtime GenAI runner on the shipped tiny model, real engine, all three schedulers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest

pytest.importorskip("onnxruntime_genai")

from atomr.runners.catalog import runner_class
from atomr.runners.local.ort.runner import OrtRunner, ort_greedy_reference

from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, ContextLengthError, NotFoundError, UnavailableError
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams
from atomr.models import builtin_model_dir
from tests.local_support import how_streams_ended, keep_trying, wait_idle

MODEL = builtin_model_dir("tiny-llama")
ACTOR = (
    " is a way to build programs from small pieces that share nothing. Each actor owns its own state and talks "
    "to other actors only by sending messages. An actor that receives a message may change its state, send "
    "messages to actors it knows, or create new actors."
)


def deployment(**engine: object) -> Deployment:
    return Deployment(name="tiny", model="builtin:tiny-llama", runtime="ort", model_path=MODEL, engine=dict(engine))


@pytest.fixture(scope="module", params=["engine", "batch", "generators"])
def runner(request: pytest.FixtureRequest) -> Iterator[OrtRunner]:
    r = OrtRunner(deployment(scheduler=request.param))
    asyncio.run(r.load())
    assert asyncio.run(r.health())
    yield r
    asyncio.run(r.unload())


def completion(prompt: str, **params: object) -> InferenceRequest:
    return InferenceRequest(model="tiny", prompt=prompt, params=SamplingParams(**params))  # type: ignore[arg-type]


def chat(question: str, system: str | None = None, **params: object) -> InferenceRequest:
    msgs = ((Message("system", system),) if system else ()) + (Message("user", question),)
    return InferenceRequest(model="tiny", messages=msgs, params=SamplingParams(**params))  # type: ignore[arg-type]


async def collect(r: OrtRunner, req: InferenceRequest) -> list[Chunk]:
    req.validate()
    return [c async for c in r.generate(req)]


def run(r: OrtRunner, req: InferenceRequest) -> list[Chunk]:
    return asyncio.run(collect(r, req))


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def check_stream(chunks: list[Chunk]) -> Chunk:
    """Shape every stream must have; returns the last chunk."""
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.usage is not None
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert all(c.token_count in (0, 1) for c in chunks)
    assert sum(c.token_count for c in chunks) == last.usage.completion_tokens
    return last


def test_runtime_table_names_this_runner() -> None:
    assert runner_class("ort") is OrtRunner
    assert OrtRunner.capabilities.logprobs and OrtRunner.capabilities.streaming


def test_completion_greedy(runner: OrtRunner) -> None:
    chunks = run(runner, completion("The actor model", max_tokens=120))
    last = check_stream(chunks)
    assert text(chunks) == ACTOR
    assert last.finish_reason == "stop"  # the model ends the paragraph with EOS
    assert last.usage is not None
    assert last.usage.prompt_tokens == 4 == runner.count_prompt_tokens(completion("The actor model"))
    assert last.usage.completion_tokens == len([c for c in chunks if c.token_count])


def test_chat_greedy(runner: OrtRunner) -> None:
    for system in (None, "You are a helpful assistant."):
        chunks = run(runner, chat("What is an actor?", system, max_tokens=60))
        assert text(chunks) == "An actor is a small program that owns its state and talks by messages."
        assert check_stream(chunks).finish_reason == "stop"
    chunks = run(runner, chat("Hello!"))
    assert text(chunks) == "Hello! How can I help you today?"


def test_greedy_is_deterministic_and_matches_ort_directly(runner: OrtRunner) -> None:
    first = text(run(runner, completion("To bake bread,", max_tokens=50)))
    assert first == text(run(runner, completion("To bake bread,", max_tokens=50)))
    assert first == ort_greedy_reference(MODEL, "To bake bread,", 50)


def test_max_tokens_gives_length(runner: OrtRunner) -> None:
    chunks = run(runner, completion("The actor model", max_tokens=5))
    last = check_stream(chunks)
    assert last.finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 5
    assert ACTOR.startswith(text(chunks)) and len(text(chunks)) > 5


def test_stop_sequences(runner: OrtRunner) -> None:
    chunks = run(runner, completion("The actor model", max_tokens=100, stop=("small",)))
    last = check_stream(chunks)
    assert text(chunks) == " is a way to build programs from "
    assert last.finish_reason == "stop"
    # a stop string that spans several tokens; the earliest of several wins
    chunks = run(runner, completion("The actor model", max_tokens=100, stop=("messages", "pieces that")))
    assert text(chunks) == " is a way to build programs from small "
    # a stop string that never appears changes nothing, and held-back text is released at the end
    assert (
        text(run(runner, completion("The actor model", max_tokens=100, stop=("zebra", "actors."))))
        == (ACTOR.split("actors.")[0])
    )
    assert text(run(runner, completion("The actor model", max_tokens=100, stop=("new actors.!",)))) == ACTOR
    chunks = run(runner, chat("Count to five.", stop=(",",)))
    assert text(chunks) == "One" and chunks[-1].finish_reason == "stop"


def test_logprobs(runner: OrtRunner) -> None:
    chunks = run(runner, completion("The actor model", max_tokens=20, logprobs=True))
    last = check_stream(chunks)
    lps = [lp for c in chunks for lp in (c.logprobs or ())]
    assert all(c.logprobs is not None and len(c.logprobs) == c.token_count for c in chunks)
    assert last.usage is not None and len(lps) == last.usage.completion_tokens == 20
    assert all(lp.logprob <= 0.0 for lp in lps)
    assert "".join(lp.token for lp in lps) == text(chunks) == ACTOR[: len(text(chunks))]
    # greedy on memorised text: the chosen tokens are very likely
    assert sum(lp.logprob for lp in lps) / len(lps) > -0.5
    assert all(c.logprobs is None for c in run(runner, completion("The actor model", max_tokens=3)))


def test_sampling_with_seed_is_reproducible(runner: OrtRunner) -> None:
    def sample(seed: int | None) -> str:
        return text(run(runner, chat("Tell me a story.", max_tokens=40, temperature=1.5, top_p=0.95, seed=seed)))

    a = sample(7)
    assert a == sample(7)
    assert len({sample(s) for s in range(1, 6)}) > 1  # the seed matters: this is sampling
    unseeded = run(runner, completion("The", max_tokens=20, temperature=1.0, top_k=40))
    assert check_stream(unseeded).usage is not None


def test_context_length_error(runner: OrtRunner) -> None:
    assert runner.context_length == 256
    with pytest.raises(ContextLengthError) as info:
        run(runner, completion("word " * 300))
    assert info.value.field == "prompt"
    with pytest.raises(ContextLengthError) as info:
        run(runner, chat("word " * 300))
    assert info.value.field == "messages"
    with pytest.raises(ContextLengthError):  # the prompt fits, prompt + max_tokens does not
        run(runner, completion("The actor model", max_tokens=253))
    assert check_stream(run(runner, completion("The actor model", max_tokens=252)))  # exactly the context


def test_sixteen_concurrent_equal_sequential(runner: OrtRunner) -> None:
    prompts: list[InferenceRequest] = []
    for i in range(16):
        if i % 2:
            prompts.append(chat(["What is an actor?", "Hello!", "What is two plus two?", "Count to five."][i % 4]))
        else:
            prompts.append(completion(["The actor model", "To bake bread,", "The weather today", "In winter"][i % 4]))
    sequential = [text(run(runner, p)) for p in prompts]

    async def together() -> list[list[Chunk]]:
        return await asyncio.gather(*(collect(runner, p) for p in prompts))

    results = asyncio.run(together())
    assert [text(c) for c in results] == sequential
    for p, chunks, expected in zip(prompts, results, sequential, strict=True):
        check_stream(chunks)
        ref = [{"role": m.role, "content": m.content} for m in p.messages] if p.messages else p.prompt
        assert ort_greedy_reference(MODEL, ref or "", p.params.max_tokens) == expected


async def cancel_after_first_chunk(r: OrtRunner, how: str) -> bool:
    """Start a long sampled generation, drop it after its first chunk; True if the work was cut."""
    await wait_idle(r)
    before = dict(r.stats)
    req = completion("", max_tokens=250, temperature=2.0)
    if how == "aclose":
        stream = r.generate(req)
        assert isinstance(stream, AsyncIterator)
        first_chunk = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        if first_chunk.finish_reason is not None:  # sampled EOS first: nothing left to cut
            await wait_idle(r, timeout=1.0)
            return False
        assert first_chunk.token_count == 1
    else:
        first = asyncio.Event()

        async def consume() -> None:
            async for _ in r.generate(req):
                first.set()

        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await wait_idle(r, timeout=1.0)  # the ORT work ends soon after the caller leaves
    assert r.stats["requests"] == before["requests"] + 1
    cut = r.stats["cancelled"] == before["cancelled"] + 1
    if cut:  # ended before EOS or max_tokens (usually within a few tokens of the caller leaving)
        assert r.stats["tokens"] - before["tokens"] < 250
    return cut


@pytest.mark.parametrize("how", ["aclose", "task_cancel"])
def test_cancellation(runner: OrtRunner, how: str) -> None:
    async def go() -> None:
        # A sampled generation may end on its own before the caller leaves (the tiny model's sampled
        # answers are short, median ~35 tokens); a cut (usually on the first try) shows that leaving
        # stops the ORT work.
        tries = await keep_trying(lambda: cancel_after_first_chunk(runner, how), any, seconds=20.0)
        assert any(tries), f"no try was cut in {len(tries)}"
        # the runner serves the next requests normally
        assert text(await collect(runner, completion("The actor model", max_tokens=120))) == ACTOR

    asyncio.run(go())


def test_intra_op_threads_and_bad_options() -> None:
    r = OrtRunner(deployment(intra_op_threads=2, scheduler="generators", max_batch_size=2))
    assert (r.intra_op_threads, r.max_batch_size, r.scheduler) == (2, 2, "generators")
    asyncio.run(r.load())
    try:
        assert text(run(r, chat("Hello!"))) == "Hello! How can I help you today?"
    finally:
        asyncio.run(r.unload())
    assert not asyncio.run(r.health())
    with pytest.raises(UnavailableError):
        run(r, chat("Hello!"))
    with pytest.raises(ConfigError):
        OrtRunner(deployment(intra_op_threads=0))
    with pytest.raises(ConfigError):
        OrtRunner(deployment(scheduler="magic"))


async def unload_under_sixteen_streams() -> list[str]:
    """Unload a runner while 16 sampled streams run; how each stream ended."""
    # round-robin generators: slow enough that the 16 are still running when the runner unloads
    # (a batched run of 16 can finish them all in the time it takes to read their first chunks)
    r = OrtRunner(deployment(scheduler="generators"))
    await r.load()
    streams = [r.generate(completion("", max_tokens=250, temperature=2.0)) for _ in range(16)]
    firsts = await asyncio.gather(*(stream.__anext__() for stream in streams))  # all 16 started at once
    await r.unload()
    outcomes = await how_streams_ended(firsts, streams)  # complete or an error, never truncated
    assert "truncated" not in outcomes
    assert r.active_generations == 0
    return outcomes


def test_unload_during_generation_is_an_error() -> None:
    async def go() -> None:
        # Sampled answers are short: on a starved CPU all 16 can end before the unload. Rounds
        # repeat (each asserting no truncated stream) until one shows a stream the unload cut.
        rounds = await keep_trying(
            unload_under_sixteen_streams, lambda done: any("unavailable" in r for r in done), seconds=30.0
        )
        assert any("unavailable" in r for r in rounds), f"in {len(rounds)} rounds no stream was running at unload"

    asyncio.run(go())


def test_missing_model_is_not_found() -> None:
    dep = Deployment(name="x", model="somewhere", runtime="ort", model_path=MODEL / "hf")
    with pytest.raises(NotFoundError, match=r"genai_config\.json"):
        asyncio.run(OrtRunner(dep).load())


def test_batch_scheduler_batches_concurrent_requests_and_not_a_lone_one() -> None:
    async def go() -> None:
        r = OrtRunner(deployment(scheduler="batch", max_batch_size=8, max_wait_ms=600))
        await r.load()
        try:
            # a lone caller: no concurrency seen, so no wait (4 tokens take ~10 ms; the window is 600)
            t = time.perf_counter()
            assert text(await collect(r, completion("The actor model", max_tokens=4)))
            assert time.perf_counter() - t < 0.4
            assert r.batch_counts == (1, 1)
            # 8 together, different lengths and one with logprobs: one batch, each row its own answer
            texts = ["The actor model"] * 4 + ["In winter"] * 4
            prompts = [completion(p, max_tokens=8 + 4 * i) for i, p in enumerate(texts)]
            prompts[3] = completion("The actor model", max_tokens=20, logprobs=True)
            results = await asyncio.gather(*(collect(r, p) for p in prompts))
            batches, rows = r.batch_counts
            assert rows == 9 and batches <= 3  # usually 2: the lone one, then all 8 together
            for p, chunks in zip(prompts, results, strict=True):
                check_stream(chunks)
                assert text(chunks) == ort_greedy_reference(MODEL, p.prompt or "", p.params.max_tokens)
            lps = [lp for c in results[3] for lp in (c.logprobs or ())]
            assert len(lps) == results[3][-1].usage.completion_tokens  # type: ignore[union-attr]
            # sampled requests with different settings are never mixed into one batch
            mixed = [completion("In winter", max_tokens=6, temperature=t) for t in (0.5, 0.5, 1.5, 1.5)]
            before = r.batch_counts
            await asyncio.gather(*(collect(r, p) for p in mixed))
            assert r.batch_counts[0] - before[0] >= 2 and r.batch_counts[1] - before[1] == 4
        finally:
            await r.unload()

    asyncio.run(go())


def test_bad_engine_options_name_the_field() -> None:
    for options, field in [
        ({"max_batch_size": 0}, "engine.max_batch_size"),
        ({"max_wait_ms": -1}, "engine.max_wait_ms"),
        ({"max_parallel": 4}, "engine.max_parallel"),
        ({"scheduler": "magic"}, "engine.scheduler"),
    ]:
        with pytest.raises(ConfigError) as info:
            OrtRunner(deployment(**options))
        assert info.value.field == field
