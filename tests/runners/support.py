"""Request and collect helpers for every runner test, local or remote: the one place for them.

Build requests (`chat`, `completion`), run them (`collect`, `outcome`, `collect_now`,
`through_session`), read what came back (`text`, `logprobs_of`, `check_stream`) and leave a stream
early (`leave_after_first_chunk`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from atomr.core.errors import InferenceError
from atomr.core.runner import ModelRunner
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, StreamEvent, TokenLogprob
from atomr.serving.session import run_session

Turn = str | tuple[str, str]


def chat(
    *turns: Turn, model: str = "tiny", stream: bool = False, deadline: float | None = None, **params: Any
) -> InferenceRequest:
    """A chat request; a plain string is a user message, a (role, content) pair any message."""
    messages = tuple(Message("user", t) if isinstance(t, str) else Message(*t) for t in turns)
    params_ = SamplingParams(**params)
    return InferenceRequest(model=model, messages=messages, params=params_, stream=stream, deadline=deadline)


def completion(
    prompt: str, *, model: str = "tiny", stream: bool = False, deadline: float | None = None, **params: Any
) -> InferenceRequest:
    params_ = SamplingParams(**params)
    return InferenceRequest(model=model, prompt=prompt, params=params_, stream=stream, deadline=deadline)


async def collect(runner: ModelRunner, request: InferenceRequest) -> list[Chunk]:
    """Every chunk of a request (validated first, as every entry point does); errors propagate."""
    request.validate()
    return [c async for c in runner.generate(request)]


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


def collect_now(
    runner: ModelRunner, request: InferenceRequest, loop: asyncio.AbstractEventLoop | None = None
) -> list[Chunk]:
    """`collect` from synchronous code: on `loop` (an engine bound to one loop), else a fresh one."""
    if loop is not None:
        return loop.run_until_complete(collect(runner, request))
    return asyncio.run(collect(runner, request))


async def through_session(runner: ModelRunner, request: InferenceRequest) -> tuple[list[Chunk], StreamEvent]:
    """The request as runner hosts and the HTTP front run it (`run_session`, which refuses what
    the runner does not declare): its chunks and its one final event."""
    request.validate()
    events: list[StreamEvent] = []
    finals: list[StreamEvent] = []
    await run_session(runner, request, runner.deployment, "r0", events.append, finals.append)
    assert len(finals) == 1, finals
    return [ev.chunk for ev in events if ev.chunk is not None], finals[0]


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def logprobs_of(chunks: list[Chunk]) -> list[TokenLogprob]:
    return [lp for c in chunks for lp in (c.logprobs or ())]


def check_stream(chunks: list[Chunk], *, one_token_per_chunk: bool = False) -> Chunk:
    """The shape every answer has: chunks, then exactly one final chunk with finish_reason and
    usage, whose completion tokens are the chunks' tokens. Returns the final chunk."""
    assert chunks, "no chunk at all"
    last = chunks[-1]
    assert last.finish_reason in ("stop", "length", "tool_calls", "content_filter") and last.usage is not None, last
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1]), chunks
    assert all(c.token_count >= 0 for c in chunks)
    assert all(c.text or c.token_count or c.tool_calls or c.reasoning for c in chunks[:-1]), "an empty chunk"
    if one_token_per_chunk:
        assert all(c.token_count in (0, 1) for c in chunks), [c.token_count for c in chunks]
    assert sum(c.token_count for c in chunks) == last.usage.completion_tokens
    return last


async def leave_after_first_chunk(runner: ModelRunner, request: InferenceRequest, how: str) -> Chunk:
    """Start `request`, leave after its first chunk (`how`: "aclose" the stream, or "task_cancel"
    the task reading it); the first chunk."""
    request.validate()
    if how == "aclose":
        stream = runner.generate(request)
        assert isinstance(stream, AsyncIterator)
        first = await stream.__anext__()
        await stream.aclose()  # type: ignore[attr-defined]
        return first
    assert how == "task_cancel", how
    got: list[Chunk] = []
    started = asyncio.Event()

    async def consume() -> None:
        async for chunk in runner.generate(request):
            got.append(chunk)
            started.set()

    task = asyncio.create_task(consume())
    waiting = asyncio.create_task(started.wait())
    await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if not got:  # the stream ended (an error, or no chunk at all) before its first chunk
        await task
        raise AssertionError("the stream ended before its first chunk")
    task.cancel()
    await asyncio.gather(task, waiting, return_exceptions=True)
    return got[0]
