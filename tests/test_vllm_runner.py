"""The vLLM runner on the shipped tiny model, real engine (vLLM's CPU build here).

What every runner does (answers, streaming, stops, seeds, logprobs, cancellation, context length,
concurrency) is the runner contract's (tests/runners/); here, what is vLLM's own: its answers
against vLLM called directly, its options and environment, where its stop strings end, the
engine's requests aborted, and the engine process failing or dying.

One engine serves the module (starting one takes ~10 s on these machines); vLLM's output handler
lives on one event loop, so every test runs its coroutines on the module's loop.
"""

from __future__ import annotations

import asyncio
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

from atomr.runners.common.stops import truncate_at_stop
from atomr.runners.local.vllm.runner import VllmRunner, vllm_env_defaults, vllm_greedy_reference

from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, InternalError, NotFoundError, RunnerCrashedError, UnavailableError
from atomr.core.types import Chunk, InferenceRequest
from tests.local_support import ACTOR, ACTOR_CHAT, HELLO, MODEL, VLLM_ENGINE, how_streams_ended, tiny_deployment
from tests.runners.support import chat, check_stream, collect, collect_now, completion, logprobs_of, text

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


def deployment(model_path: Path = MODEL, **engine: Any) -> Deployment:
    return tiny_deployment("vllm", model_path, **{**VLLM_ENGINE, **engine})


@pytest.fixture(scope="module")
def runner(loop: asyncio.AbstractEventLoop) -> Iterator[VllmRunner]:
    r = VllmRunner(deployment())
    loop.run_until_complete(r.load())
    assert loop.run_until_complete(r.health())
    yield r
    loop.run_until_complete(r.unload())


def on(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    return loop.run_until_complete(coro)


def reference(req: InferenceRequest) -> str:
    what: Any = list(req.messages) if req.messages is not None else req.prompt
    return vllm_greedy_reference(MODEL, what, req.params.max_new_tokens, engine=VLLM_ENGINE)


# -- without an engine ------------------------------------------------------------------------


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


def test_greedy_equals_vllm_directly(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    for req, expected in [
        (completion("The actor model", max_tokens=120), ACTOR),
        (chat("What is an actor?", max_tokens=60), ACTOR_CHAT),
        (chat(("system", "You are a helpful assistant."), "What is an actor?", max_tokens=60), ACTOR_CHAT),
        (chat("Hello!"), HELLO),
    ]:
        assert text(collect_now(runner, req, loop)) == expected == reference(req)
    for prompt in ("To bake bread,", "", "In winter"):
        req = completion(prompt, max_tokens=50)
        assert text(collect_now(runner, req, loop)) == reference(req)


def test_greedy_equals_ort(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    pytest.importorskip("onnxruntime_genai")
    from atomr.runners.local.ort.runner import ort_greedy_reference

    for req in (completion("To bake bread,", max_tokens=50), chat("Count to five.", max_tokens=40)):
        what: Any = [{"role": m.role, "content": m.content} for m in req.messages] if req.messages else req.prompt
        assert text(collect_now(runner, req, loop)) == ort_greedy_reference(MODEL, what, req.params.max_new_tokens)


def test_the_token_that_completes_a_stop_string_counts(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    def run(prompt: str, **params: Any) -> list[Chunk]:
        return collect_now(runner, completion(prompt, **params), loop)

    for stop in [("small",), ("messages", "pieces that"), ("zebra", "actors."), ("s",)]:
        chunks = run("The actor model", max_tokens=100, stop=stop)
        last = check_stream(chunks)
        expected, found = truncate_at_stop(ACTOR, stop)  # runners/common/stops.py on the whole text
        assert text(chunks) == expected and last.finish_reason == "stop"
        assert found and last.usage is not None
        n = last.usage.completion_tokens  # as many tokens as it took to complete the stop string
        assert any(s in text(run("The actor model", max_tokens=n)) for s in stop)
        fewer = text(run("The actor model", max_tokens=n - 1)) if n > 1 else ""
        assert not any(s in fewer for s in stop)
    chunks = collect_now(runner, chat("Count to five.", stop=(",",)), loop)
    assert text(chunks) == "One" and chunks[-1].finish_reason == "stop"


def test_stop_string_completed_with_another_by_one_token(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    # The token " actor" completes both " actor" and "cto": vLLM stops at the one that ends first
    # ("cto", as if the text came one character at a time); runners/common/stops.py, fed whole
    # tokens, stops at the one that starts first (" actor").
    chunks = collect_now(runner, completion("The actor model", max_tokens=100, stop=(" actor", "cto")), loop)
    assert text(chunks).endswith("nothing. Each a") and chunks[-1].finish_reason == "stop"
    assert truncate_at_stop(ACTOR, (" actor", "cto"))[0].endswith("nothing. Each")


def test_logprob_pieces_run_past_a_stop_string(loop: asyncio.AbstractEventLoop, runner: VllmRunner) -> None:
    # with a stop string the pieces run on past the cut text (they are the tokens' own text)
    req = completion("The actor model", max_tokens=50, logprobs=True, stop=("small",))
    chunks = collect_now(runner, req, loop)
    pieces = "".join(lp.token for lp in logprobs_of(chunks))
    assert pieces.startswith(text(chunks)) and "small" in pieces
    assert len(logprobs_of(chunks)) == check_stream(chunks).usage.completion_tokens  # type: ignore[union-attr]
    chunks = collect_now(runner, chat("Hello!", logprobs=True), loop)  # chat too, to EOS
    assert "".join(lp.token for lp in logprobs_of(chunks)) == text(chunks) == HELLO


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
