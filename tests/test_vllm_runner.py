"""The vLLM runner on the shipped tiny model, real engine (vLLM's CPU build here).

One engine serves the module (starting one takes ~10 s on these machines); vLLM's output handler
lives on one event loop, so every test runs its coroutines on the module's loop.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

pytest.importorskip("vllm")

from atomr.runners.catalog import runner_class
from atomr.runners.common.stops import truncate_at_stop
from atomr.runners.local.vllm.runner import VllmRunner, vllm_env_defaults, vllm_greedy_reference

from atomr.core.deployment import Deployment
from atomr.core.errors import (
    ConfigError,
    ContextLengthError,
    InternalError,
    NotFoundError,
    RunnerCrashedError,
    UnavailableError,
)
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams
from atomr.models import builtin_model_dir
from tests.local_support import how_streams_ended

T = TypeVar("T")

MODEL = builtin_model_dir("tiny-llama")
REPO = Path(__file__).resolve().parents[1]
# float32: the checkpoint's own dtype (vLLM would run bfloat16 on CPU); eager: no torch.compile at
# start (saves ~10-30 s); a small KV cache (vLLM's CPU default claims most of the host's RAM).
ENGINE: dict[str, Any] = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}
ACTOR = (
    " is a way to build programs from small pieces that share nothing. Each actor owns its own state and talks "
    "to other actors only by sending messages. An actor that receives a message may change its state, send "
    "messages to actors it knows, or create new actors."
)


def deployment(model_path: Path = MODEL, **engine: Any) -> Deployment:
    return Deployment(
        name="tiny", model="builtin:tiny-llama", runtime="vllm", model_path=model_path, engine={**ENGINE, **engine}
    )


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def runner(loop: asyncio.AbstractEventLoop) -> Iterator[VllmRunner]:
    r = VllmRunner(deployment())
    loop.run_until_complete(r.load())
    assert loop.run_until_complete(r.health())
    yield r
    loop.run_until_complete(r.unload())


def completion(prompt: str, **params: Any) -> InferenceRequest:
    return InferenceRequest(model="tiny", prompt=prompt, params=SamplingParams(**params))


def chat(question: str, system: str | None = None, **params: Any) -> InferenceRequest:
    msgs = ((Message("system", system),) if system else ()) + (Message("user", question),)
    return InferenceRequest(model="tiny", messages=msgs, params=SamplingParams(**params))


async def collect(r: VllmRunner, req: InferenceRequest) -> list[Chunk]:
    req.validate()
    return [c async for c in r.generate(req)]


def on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(coro)


def run(loop: asyncio.AbstractEventLoop, r: VllmRunner, req: InferenceRequest) -> list[Chunk]:
    return on(loop, collect(r, req))


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def check_stream(chunks: list[Chunk]) -> Chunk:
    """Shape every stream must have; returns the last chunk."""
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length") and last.usage is not None
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert all(c.token_count >= 0 for c in chunks) and all(c.token_count or c.text for c in chunks[:-1])
    assert sum(c.token_count for c in chunks) == last.usage.completion_tokens
    return last


def reference(req: InferenceRequest) -> str:
    what: Any = list(req.messages) if req.messages is not None else req.prompt
    return vllm_greedy_reference(MODEL, what, req.params.max_tokens, engine=ENGINE)


# -- without an engine ------------------------------------------------------------------------


def test_runtime_table_names_this_runner() -> None:
    assert runner_class("vllm") is VllmRunner
    caps = VllmRunner.capabilities
    assert caps.streaming and caps.logprobs and caps.batching and caps.chat and caps.completion
    assert not caps.needs_gpu


def test_importing_the_runner_loads_no_engine() -> None:
    code = (
        "import atomr.runners.local.vllm.runner, sys; assert 'vllm' not in sys.modules and 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_env_defaults_never_override() -> None:
    env = {"OMP_NUM_THREADS": "4"}
    assert vllm_env_defaults(cpu=True, environ=env) == {
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    assert env["OMP_NUM_THREADS"] == "4" and env["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    assert vllm_env_defaults(cpu=True, environ=env) == {}
    gpu_env: dict[str, str] = {}
    assert vllm_env_defaults(cpu=False, environ=gpu_env) == {"VLLM_NO_USAGE_STATS": "1"}


@pytest.mark.parametrize(
    ("engine", "field", "says"),
    [
        ({"max_tokenz": 5}, "engine.max_tokenz", "not a vLLM engine argument"),
        ({"model": "x"}, "engine.model", "cannot be set"),
        ({"max_num_seqs": "many"}, "engine.max_num_seqs", "must be int | None"),
        ({"enforce_eager": "yes"}, "engine.enforce_eager", "must be bool"),
        ({"dtype": "magic"}, "engine.dtype", "'float32'"),
        ({"max_model_len": 100_000}, "engine.max_model_len", "greater than the derived max_model_len"),
        ({"gpu_memory_utilization": 5.0}, "engine.gpu_memory_utilization", "less than or equal to 1"),
    ],
)
def test_bad_engine_option_is_a_config_error(engine: dict[str, Any], field: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        asyncio.run(VllmRunner(deployment(**engine)).load())
    assert info.value.field == field
    assert says in info.value.message


def test_bad_model_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError) as info:
        asyncio.run(VllmRunner(deployment(tmp_path)).load())
    assert info.value.field == "model" and "no config.json" in info.value.message
    (tmp_path / "config.json").write_text('{"architectures": [')
    with pytest.raises(NotFoundError) as info:
        asyncio.run(VllmRunner(deployment(tmp_path)).load())
    assert info.value.field == "model"
    assert "is not a valid JSON file" in info.value.message  # vLLM's own words


# -- the shared engine ------------------------------------------------------------------------


def test_completion_greedy_equals_vllm_directly(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    req = completion("The actor model", max_tokens=120)
    chunks = run(loop, runner, req)
    last = check_stream(chunks)
    assert text(chunks) == ACTOR == reference(req)
    assert last.finish_reason == "stop"  # the model ends the paragraph with EOS, which is not counted
    assert last.usage is not None and last.usage.prompt_tokens == 4 == runner.count_prompt_tokens(req)
    assert 0 < last.usage.completion_tokens < 120
    for prompt in ("To bake bread,", "", "In winter"):
        req = completion(prompt, max_tokens=50)
        assert text(run(loop, runner, req)) == reference(req)


def test_chat_greedy_equals_vllm_directly(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    for system in (None, "You are a helpful assistant."):
        req = chat("What is an actor?", system, max_tokens=60)
        chunks = run(loop, runner, req)
        assert text(chunks) == "An actor is a small program that owns its state and talks by messages."
        assert text(chunks) == reference(req)
        last = check_stream(chunks)
        assert last.finish_reason == "stop" and last.usage is not None
        assert last.usage.prompt_tokens == runner.count_prompt_tokens(req)
    req = chat("Hello!")
    assert text(run(loop, runner, req)) == "Hello! How can I help you today?" == reference(req)


def test_greedy_equals_ort(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    pytest.importorskip("onnxruntime_genai")
    from atomr.runners.local.ort.runner import ort_greedy_reference

    for req in (completion("To bake bread,", max_tokens=50), chat("Count to five.", max_tokens=40)):
        what: Any = [{"role": m.role, "content": m.content} for m in req.messages] if req.messages else req.prompt
        assert text(run(loop, runner, req)) == ort_greedy_reference(MODEL, what, req.params.max_tokens)


def test_max_tokens_gives_length(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    chunks = run(loop, runner, completion("The actor model", max_tokens=5))
    last = check_stream(chunks)
    assert last.finish_reason == "length"
    assert last.usage is not None and last.usage.completion_tokens == 5
    assert ACTOR.startswith(text(chunks)) and len(text(chunks)) > 5


def test_stop_sequences(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    def stopped(prompt: str, stop: tuple[str, ...]) -> list[Chunk]:
        return run(loop, runner, completion(prompt, max_tokens=100, stop=stop))

    whole = check_stream(stopped("The actor model", ())).usage
    assert whole is not None
    for stop in [("small",), ("messages", "pieces that"), ("zebra", "actors."), ("new actors.!",), ("s",)]:
        chunks = stopped("The actor model", stop)
        last = check_stream(chunks)
        expected, found = truncate_at_stop(ACTOR, stop)  # runners/common/stops.py on the whole text
        assert text(chunks) == expected
        assert last.finish_reason == "stop"  # a stop string, or EOS when none appears
        assert last.usage is not None and 0 < last.usage.completion_tokens <= whole.completion_tokens
        if found:  # the token that completed the stop string counts
            n = last.usage.completion_tokens
            assert any(s in text(run(loop, runner, completion("The actor model", max_tokens=n))) for s in stop)
            fewer = text(run(loop, runner, completion("The actor model", max_tokens=n - 1))) if n > 1 else ""
            assert not any(s in fewer for s in stop)
    assert text(stopped("The actor model", ("small",))) == " is a way to build programs from "
    assert text(stopped("The actor model", ("messages", "pieces that"))) == " is a way to build programs from small "
    chunks = run(loop, runner, chat("Count to five.", stop=(",",)))
    assert text(chunks) == "One" and chunks[-1].finish_reason == "stop"


def test_stop_string_completed_with_another_by_one_token(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    # The token " actor" completes both " actor" and "cto": vLLM stops at the one that ends first
    # ("cto", as if the text came one character at a time); runners/common/stops.py, fed whole
    # tokens, stops at the one that starts first (" actor").
    chunks = run(loop, runner, completion("The actor model", max_tokens=100, stop=(" actor", "cto")))
    assert text(chunks).endswith("nothing. Each a") and chunks[-1].finish_reason == "stop"
    assert truncate_at_stop(ACTOR, (" actor", "cto"))[0].endswith("nothing. Each")


def test_logprobs(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    for req in (completion("The actor model", max_tokens=20, logprobs=True), chat("Hello!", logprobs=True)):
        chunks = run(loop, runner, req)
        last = check_stream(chunks)
        lps = [lp for c in chunks for lp in (c.logprobs or ())]
        assert all(c.logprobs is not None and len(c.logprobs) == c.token_count for c in chunks)
        assert last.usage is not None and len(lps) == last.usage.completion_tokens > 0
        assert all(math.isfinite(lp.logprob) and lp.logprob <= 0.0 for lp in lps)
        assert "".join(lp.token for lp in lps) == text(chunks)  # no stop string: the pieces are the text
        assert sum(lp.logprob for lp in lps) / len(lps) > -0.5  # greedy on memorised text
    chunks = run(loop, runner, completion("The actor model", max_tokens=20, logprobs=True))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 20
    # with a stop string the pieces run on past the cut text (they are the tokens' own text)
    chunks = run(loop, runner, completion("The actor model", max_tokens=50, logprobs=True, stop=("small",)))
    pieces = "".join(lp.token for c in chunks for lp in (c.logprobs or ()))
    assert pieces.startswith(text(chunks)) and "small" in pieces
    assert all(c.logprobs is None for c in run(loop, runner, completion("The actor model", max_tokens=3)))


def test_sampling_with_seed_is_reproducible(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    def sample(seed: int | None) -> str:
        req = chat("Tell me a story.", max_tokens=40, temperature=1.5, top_p=0.95, top_k=50, seed=seed)
        return text(run(loop, runner, req))

    a = sample(7)
    assert a == sample(7)
    assert len({sample(s) for s in range(1, 6)}) > 1  # the seed matters: this is sampling
    unseeded = run(loop, runner, completion("The", max_tokens=20, temperature=1.0, top_k=40))
    assert check_stream(unseeded).usage is not None


def test_context_length_error(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    assert runner.context_length == 256
    with pytest.raises(ContextLengthError) as info:
        run(loop, runner, completion("word " * 300))
    assert info.value.field == "prompt"
    with pytest.raises(ContextLengthError) as info:
        run(loop, runner, chat("word " * 300))
    assert info.value.field == "messages"
    with pytest.raises(ContextLengthError):  # the prompt fits, prompt + max_tokens does not
        run(loop, runner, completion("The actor model", max_tokens=253))
    assert check_stream(run(loop, runner, completion("The actor model", max_tokens=252)))  # exactly the context
    assert runner.active_generations == 0


def test_concurrent_equal_sequential(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    prompts: list[InferenceRequest] = []
    for i in range(8):
        if i % 2:
            prompts.append(chat(["What is an actor?", "Hello!", "What is two plus two?", "Count to five."][i % 4]))
        else:
            prompts.append(completion(["The actor model", "To bake bread,", "The weather today", "In winter"][i % 4]))
    sequential = [text(run(loop, runner, p)) for p in prompts]

    async def together() -> list[list[Chunk]]:
        return await asyncio.gather(*(collect(runner, p) for p in prompts))

    results = on(loop, together())
    assert [text(c) for c in results] == sequential
    for chunks in results:
        check_stream(chunks)


async def wait_engine_idle(r: VllmRunner, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while (r.active_generations or r.engine.get_num_unfinished_requests()) and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert r.active_generations == 0 and r.engine.get_num_unfinished_requests() == 0


@pytest.mark.parametrize("how", ["aclose", "task_cancel"])
def test_cancellation_aborts_the_engine_request(
    loop: asyncio.AbstractEventLoop, runner: VllmRunner, how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = runner.engine
    aborted: list[Any] = []
    real_abort = engine.abort

    async def spy(request_id: Any, internal: bool = False) -> None:
        aborted.append(request_id)
        await real_abort(request_id, internal)

    monkeypatch.setattr(engine, "abort", spy)
    n = 16

    async def go() -> None:
        await wait_engine_idle(runner)
        before = dict(runner.stats)
        # long sampled generations (temperature 2 rarely samples EOS), all dropped after a chunk
        reqs = [completion("", max_tokens=250, temperature=2.0, seed=i) for i in range(n)]
        if how == "aclose":
            streams = [runner.generate(r) for r in reqs]
            for s in streams:
                await s.__anext__()
            for s in streams:
                await s.aclose()  # type: ignore[attr-defined]
        else:
            started = [asyncio.Event() for _ in reqs]

            async def consume(req: InferenceRequest, first: asyncio.Event) -> None:
                async for _ in runner.generate(req):
                    first.set()

            tasks = [asyncio.create_task(consume(r, e)) for r, e in zip(reqs, started, strict=True)]
            for e in started:
                await e.wait()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        left = time.monotonic()
        # the engine core has nothing left to do: pausing it with mode="wait" (which waits for the
        # requests in flight to finish) returns at once (~0.03 s here), where finishing them would take
        # ~0.35 s (measured by leaving the requests running)
        await engine.pause_generation(mode="wait", clear_cache=False)
        waited = time.monotonic() - left
        await engine.resume_generation()
        await wait_engine_idle(runner, timeout=1.0)
        cut = runner.stats["cancelled"] - before["cancelled"]
        assert runner.stats["requests"] - before["requests"] == n
        assert cut >= n - 2  # a sampled generation may still end by itself before the caller leaves
        ours = tuple(r.request_id for r in reqs)
        assert len([a for a in aborted if isinstance(a, str) and a.startswith(ours)]) >= cut
        assert runner.stats["tokens"] - before["tokens"] < n * 250 // 4
        assert waited < 0.15, f"the engine kept working {waited:.2f} s after its callers left"
        # the runner serves the next requests normally
        assert text(await collect(runner, completion("The actor model", max_tokens=120))) == ACTOR

    on(loop, go())


# -- engines of their own -----------------------------------------------------------------------


def test_engine_start_failure_carries_vllm_reason() -> None:
    # A KV cache larger than the host's memory: the engine core process fails while starting; its
    # reason is printed by that process only, and still reaches the caller.
    with pytest.raises(InternalError) as info:
        asyncio.run(VllmRunner(deployment(kv_cache_memory_bytes=1 << 50)).load())
    message = info.value.message
    assert "could not start" in message and "kv" in message.lower() and "Available memory" in message


def test_engine_death_is_reported() -> None:
    async def go() -> None:
        r = VllmRunner(deployment())
        await r.load()
        try:
            assert await r.health()
            stream = r.generate(completion("", max_tokens=250, temperature=2.0))
            await stream.__anext__()
            [pid] = r.engine_pids
            os.kill(pid, signal.SIGKILL)  # our own child, by PID
            with pytest.raises(RunnerCrashedError, match="killed by SIGKILL"):  # the stream in flight
                async for _ in stream:
                    pass
            deadline = time.monotonic() + 10
            while await r.health() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert not await r.health()
            with pytest.raises(RunnerCrashedError, match="killed by SIGKILL"):
                await collect(r, completion("The actor model"))
        finally:
            await r.unload()
        with pytest.raises(UnavailableError):
            await collect(r, completion("The actor model"))

    asyncio.run(go())


def test_unload_during_generation_is_an_error(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    """Last test on the shared engine: unloads it."""
    pids = runner.engine_pids
    assert pids and all(psutil.pid_exists(p) for p in pids)

    async def go() -> None:
        streams = [runner.generate(completion("", max_tokens=250, temperature=2.0, seed=i)) for i in range(6)]
        firsts = [await stream.__anext__() for stream in streams]
        await runner.unload()
        outcomes = await how_streams_ended(firsts, streams)  # complete or an error, never truncated
        assert "truncated" not in outcomes and "unavailable" in outcomes
        assert runner.active_generations == 0
        assert not await runner.health()
        with pytest.raises(UnavailableError):
            await collect(runner, completion("The actor model"))

    on(loop, go())
    assert not any(psutil.pid_exists(p) for p in pids)  # the engine core process has exited
