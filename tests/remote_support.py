"""Helpers shared by the remote-runner tests: run a runner on a fresh loop, collect what a
request produced, build requests, check that a key never shows."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from atomr.core.errors import InferenceError
from atomr.core.runner import ModelRunner
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams

T = TypeVar("T")
R = TypeVar("R", bound=ModelRunner)

NO_RETRY = {"max_attempts": 1}
NO_BREAKER = {"failure_threshold": 1000}


@contextlib.asynccontextmanager
async def load(runner: R) -> AsyncIterator[R]:
    await runner.load()
    try:
        yield runner
    finally:
        await runner.unload()


def run(body: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await body()
        finally:
            gc.collect()  # let the SDK's abandoned stream generators close on this loop
            await asyncio.sleep(0)

    return asyncio.run(main())


async def outcome(runner: ModelRunner, request: InferenceRequest) -> tuple[list[Chunk], InferenceError | None]:
    """The chunks a request produced and the error that ended it (None when it finished)."""
    request.validate()
    chunks: list[Chunk] = []
    try:
        async for chunk in runner.generate(request):
            chunks.append(chunk)
    except InferenceError as exc:
        return chunks, exc
    return chunks, None


def chat(*messages: tuple[str, str], deadline: float | None = None, **params: Any) -> InferenceRequest:
    return InferenceRequest(
        model="remote-test",
        messages=tuple(Message(r, c) for r, c in messages),
        params=SamplingParams(**params),
        deadline=deadline,
    )


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def assert_key_hidden(err: BaseException, key: str) -> None:
    assert isinstance(err, InferenceError)
    for shown in (str(err), repr(err), err.message, repr(err.info()), repr(err.details)):
        assert key not in shown
