"""Helpers shared by the local-engine runner tests: the shipped tiny model (its deployments and
the greedy answers every engine gives), and waiting on a runner's generations."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from atomr.core.deployment import Deployment
from atomr.core.errors import UnavailableError
from atomr.core.types import Chunk
from atomr.models import builtin_model_dir

T = TypeVar("T")

MODEL = builtin_model_dir("tiny-llama")
# Greedy answers of the tiny model, the same on every engine (its training text, memorised).
ACTOR = (  # completion of "The actor model" (82 tokens, then EOS)
    " is a way to build programs from small pieces that share nothing. Each actor owns its own state and talks "
    "to other actors only by sending messages. An actor that receives a message may change its state, send "
    "messages to actors it knows, or create new actors."
)
ACTOR_CHAT = "An actor is a small program that owns its state and talks by messages."  # "What is an actor?"
HELLO = "Hello! How can I help you today?"  # "Hello!"
# float32: the checkpoint's own dtype (vLLM would run bfloat16 on CPU); eager: no torch.compile at
# start (saves ~10-30 s); a small KV cache (vLLM's CPU default claims most of the host's RAM).
VLLM_ENGINE: dict[str, Any] = {"dtype": "float32", "enforce_eager": True, "kv_cache_memory_bytes": 64 << 20}


def tiny_deployment(runtime: str, model_path: Path = MODEL, *, gpus: int = 0, **engine: Any) -> Deployment:
    """The shipped tiny model served by `runtime` with these engine options."""
    return Deployment(
        name="tiny",
        model="builtin:tiny-llama",
        runtime=runtime,
        model_path=model_path,
        gpus_per_replica=gpus,
        engine=dict(engine),
    )


class CountsGenerations(Protocol):
    @property
    def active_generations(self) -> int: ...


async def wait_idle(runner: CountsGenerations, timeout: float = 5.0) -> None:
    """Wait until the runner has no generation in progress; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while runner.active_generations and time.monotonic() < deadline:
        await asyncio.sleep(0.002)
    assert runner.active_generations == 0


async def keep_trying(
    attempt: Callable[[], Awaitable[T]], enough: Callable[[list[T]], bool], seconds: float
) -> list[T]:
    """Run `attempt` until `enough(results so far)`, or `seconds` have passed; all the results.

    For scenarios that sampling or a starved CPU can miss (a tiny model's sampled answer may end
    on its own before the caller leaves): trying for a while rather than a fixed few times keeps a
    burst of load elsewhere from failing the test. The caller asserts on what came back.
    """
    results: list[T] = []
    deadline = time.monotonic() + seconds
    while not enough(results) and time.monotonic() < deadline:
        results.append(await attempt())
    return results


async def how_streams_ended(
    firsts: Sequence[Chunk | Awaitable[Chunk]], streams: Sequence[AsyncIterator[Chunk]]
) -> list[str]:
    """Read each stream to its end: its finish_reason, "unavailable", or "truncated" (it ended
    without a finish_reason, the one outcome a runner must never give).

    `firsts` holds each stream's first chunk, already read or still to be awaited.
    """
    outcomes = []
    for first, stream in zip(firsts, streams, strict=True):
        try:
            chunks = [first if isinstance(first, Chunk) else await first] + [c async for c in stream]
            outcomes.append(chunks[-1].finish_reason or "truncated")
        except UnavailableError:
            outcomes.append("unavailable")
    return outcomes


def remade_manifests(script: Path, out: Path, steps: int = 20) -> list[dict[str, Any]]:
    """Run a make-model `script` twice (into out/a and out/b, one thread, a fixed hash seed, `steps`
    training steps); each run's manifest of files, every file checked against its sha256 there."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    manifests = []
    for name in ("a", "b"):
        folder = out / name
        proc = subprocess.run(
            [sys.executable, str(script), "--out", str(folder), "--steps", str(steps)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        files = json.loads((folder / "MANIFEST.json").read_text())["files"]
        for rel, info in files.items():
            assert hashlib.sha256((folder / rel).read_bytes()).hexdigest() == info["sha256"], rel
        manifests.append(files)
    return manifests
