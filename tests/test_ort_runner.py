"""The ONNX Runtime GenAI runner on the shipped tiny model, real engine, all three schedulers.

What every runner does (answers, streaming, stops, seeds, logprobs, cancellation, context length)
is the runner contract's (tests/runners/, under each scheduler); here, what is ORT's own: its
answers against ORT GenAI called directly, its options, the batch scheduler, unloading under load.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("onnxruntime_genai")

from atomr.runners.local.ort.runner import OrtRunner, ort_greedy_reference

from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, NotFoundError, UnavailableError
from atomr.core.types import InferenceRequest
from tests.local_support import HELLO, MODEL, how_streams_ended, keep_trying, tiny_deployment
from tests.runners.support import chat, check_stream, collect, collect_now, completion, logprobs_of, text


def deployment(**engine: object) -> Deployment:
    return tiny_deployment("ort", **engine)


@pytest.fixture(scope="module", params=["engine", "batch", "generators"])
def runner(request: pytest.FixtureRequest) -> Iterator[OrtRunner]:
    r = OrtRunner(deployment(scheduler=request.param))
    asyncio.run(r.load())
    assert asyncio.run(r.health())
    yield r
    asyncio.run(r.unload())


def reference(req: InferenceRequest) -> str:
    """The same request through ORT GenAI called directly."""
    what = [{"role": m.role, "content": m.content} for m in req.messages] if req.messages else req.prompt
    return ort_greedy_reference(MODEL, what or "", req.params.max_new_tokens)


def test_greedy_is_deterministic_and_matches_ort_directly(runner: OrtRunner) -> None:
    first = text(collect_now(runner, completion("To bake bread,", max_tokens=50)))
    assert first == text(collect_now(runner, completion("To bake bread,", max_tokens=50)))
    assert first == ort_greedy_reference(MODEL, "To bake bread,", 50)
    for req in [
        *(chat(q) for q in ("What is an actor?", "Hello!", "What is two plus two?", "Count to five.")),
        *(completion(p) for p in ("The actor model", "The weather today", "In winter")),
    ]:
        assert text(collect_now(runner, req)) == reference(req), req


def test_intra_op_threads_and_bad_options() -> None:
    r = OrtRunner(deployment(intra_op_threads=2, scheduler="generators", max_batch_size=2))
    assert (r.intra_op_threads, r.max_batch_size, r.scheduler) == (2, 2, "generators")
    asyncio.run(r.load())
    try:
        assert text(collect_now(r, chat("Hello!"))) == HELLO
    finally:
        asyncio.run(r.unload())
    assert not asyncio.run(r.health())
    with pytest.raises(UnavailableError):
        collect_now(r, chat("Hello!"))
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
                assert text(chunks) == reference(p)
            lps = logprobs_of(results[3])
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
