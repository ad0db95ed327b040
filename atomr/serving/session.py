"""One request on one runner: chunks coalesced, the deadline watched, exactly one final event.

`record_end` is a request's accounting when it ends (metrics and its one log line at info level).
Both are written once for the two places a runner serves requests: a runner host (a replica in its own
process, `atomr.actors.runner_host`) and a gateway serving remote deployments for its HTTP front
(`atomr.http.inline`). Events are stamped with where the request ran; the caller of
`run_session` decides where they go. A request that asks for what the runner's capabilities lack
is refused here, before generation (`atomr.core.runner.check_supported`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog

from atomr.core.deployment import Cost, Deployment
from atomr.core.errors import CancelledRequestError, InferenceTimeoutError, as_error_info
from atomr.core.keys import nanos_to_usd
from atomr.core.runner import ModelRunner, check_supported
from atomr.core.spend import SpendRecord, spend_record
from atomr.core.types import Chunk, InferenceRequest, StreamEvent, Usage
from atomr.observability import tracing
from atomr.observability.metrics import DeploymentMetrics
from atomr.serving.coalesce import ChunkCoalescer

log = structlog.get_logger("atomr.request")
YIELD_EVERY = 16  # chunks taken from a runner before the loop serves its other tasks
FREE = Cost()
_NO_TRACE: dict[str, str] = {}


class EventMaker:
    """Builds the stream events of one request, stamped with where it ran."""

    def __init__(self, request_id: str, replica: str, deployment: str, version: str) -> None:
        self.base: dict[str, Any] = {
            "request_id": request_id,
            "replica": replica,
            "deployment": deployment,
            "version": version,
        }

    def chunk(self, chunk: Chunk, seq: int) -> StreamEvent:
        return StreamEvent(chunk=chunk, seq=seq, **self.base)

    def final(self, chunks_sent: int, usage: Usage | None) -> StreamEvent:
        return StreamEvent(final=True, seq=chunks_sent, usage=usage, **self.base)

    def error(self, exc: BaseException, chunks_sent: int) -> StreamEvent:
        return StreamEvent(final=True, error=as_error_info(exc), seq=chunks_sent, **self.base)

    def cancelled(self, chunks_sent: int) -> StreamEvent:
        info = CancelledRequestError("request cancelled").info()
        return StreamEvent(final=True, error=info, seq=chunks_sent, **self.base)


async def run_session(
    runner: ModelRunner | None,
    request: InferenceRequest,
    deployment: Deployment,
    replica: str,
    send_chunk: Callable[[StreamEvent], None],
    send_final: Callable[[StreamEvent], None],
    room: Callable[[], Awaitable[Any]] | None = None,
) -> None:
    """Generate `request` on `runner`; every outcome, cancellation included, ends in `send_final`.
    `room`, when given, is awaited before each chunk is taken from the runner: while the caller's
    queue is full the runner (and the provider behind it) is not read."""
    ev = EventMaker(request.request_id, replica, deployment.name, deployment.version)
    loop = asyncio.get_running_loop()
    limits = deployment.limits
    co = ChunkCoalescer.for_limits(limits.coalesce, limits.chunk_max_tokens, limits.chunk_max_delay_ms / 1000.0)
    timer: asyncio.TimerHandle | None = None
    sent = 0
    usage: Usage | None = None
    span = tracing.session_span(request, deployment, replica) if request.trace is not None else None
    if span is not None:
        send_chunk, send_final = span.wrap(send_chunk, send_final)

    def emit(chunk: Chunk) -> None:
        nonlocal sent, usage
        usage = chunk.usage or usage
        send_chunk(ev.chunk(chunk, sent))
        sent += 1

    def flush() -> None:
        """Send whatever the coalescer holds, as one chunk."""
        held = co.take()
        if held is not None:
            emit(held)

    def on_timer() -> None:
        nonlocal timer
        timer = None
        flush()

    cap = TokenCap(request)
    taken = 0
    try:
        if runner is None:
            raise RuntimeError("runner not loaded")
        check_supported(runner, request)  # e.g. logprobs from a runtime that has none: refused here
        agen = _answers(runner, request)
        try:
            async with _until(request.deadline):
                async for received in agen:
                    taken += 1
                    if taken % YIELD_EVERY == 0:
                        # a chatty provider's buffered events would otherwise be read in one go,
                        # and every other request on this loop would wait for them (others' p50
                        # during such a stream: 9.7x idle without this, 2.8-5.1x with it, here)
                        await asyncio.sleep(0)
                    if room is not None:
                        await room()
                    if request.deadline is not None and time.time() > request.deadline:
                        raise InferenceTimeoutError("deadline passed while generating", field="deadline")
                    for chunk in cap.admit(received):
                        ready = co.add(chunk, loop.time())
                        if ready:
                            if timer is not None:
                                timer.cancel()
                                timer = None
                            for out in ready:
                                emit(out)
                        if co.pending and timer is None:
                            timer = loop.call_later(co.max_delay, on_timer)
                    if cap.done:  # every choice reached max_tokens: the upstream is not read further
                        usage = usage or cap.usage()
                        break
        finally:
            await agen.aclose()  # type: ignore[attr-defined]
        flush()
        send_final(ev.final(sent, usage or cap.seen_usage))
    except asyncio.CancelledError:
        send_final(ev.cancelled(sent))
    except BaseException as exc:  # noqa: BLE001 - every request gets one final answer
        flush()  # text generated before the failure still reaches the caller, then the error
        send_final(ev.error(exc, sent))
    finally:
        if timer is not None:
            timer.cancel()


class TokenCap:
    """Cuts each choice of a streamed answer at the max_tokens the caller set, whatever the runner
    (or the provider behind it) does: past it a choice's pieces are dropped and it ends with
    finish_reason "length"; once every choice has, the stream is not read further. Counts the
    pieces' `token_count` (reasoning pieces too, as providers count them). Without a max_tokens
    from the caller a provider's own default applies; a whole answer (not streamed) is bounded by
    the size its runner reads instead (`engine.max_response_bytes`)."""

    def __init__(self, request: InferenceRequest) -> None:
        explicit = request.params.max_tokens
        self.limit = explicit if request.task == "generate" and request.stream else None
        self.choices = max(1, request.params.n)
        self.made: dict[int, int] = {}
        self.ended: set[int] = set()  # choices finished (by the runner, or cut here)
        self.seen_usage: Usage | None = None  # the usage of a piece dropped here

    @property
    def done(self) -> bool:
        return self.limit is not None and len(self.ended) >= self.choices

    def admit(self, chunk: Chunk) -> list[Chunk]:
        """`chunk`, or what of it may pass (nothing, or the cut choice's end)."""
        if self.limit is None:
            return [chunk]
        i = chunk.index
        if i in self.ended:
            self.seen_usage = chunk.usage or self.seen_usage
            return []
        if chunk.finish_reason is not None:
            self.ended.add(i)
            return [chunk]
        made = self.made.get(i, 0) + chunk.token_count
        if made <= self.limit:
            self.made[i] = made
            return [chunk]
        self.ended.add(i)
        return [Chunk("", 0, finish_reason="length", index=i)]

    def usage(self) -> Usage:
        """The provider's usage if it came, else the tokens let through."""
        return self.seen_usage or Usage(0, sum(self.made.values()))


@asynccontextmanager
async def _until(deadline: float | None) -> AsyncIterator[None]:
    """The whole generation within the request's deadline (a wall time), however the runner waits."""
    if deadline is None:
        yield
        return
    limit = asyncio.timeout(asyncio.get_running_loop().time() + max(0.0, deadline - time.time()))
    try:
        async with limit:
            yield
    except TimeoutError:
        if not limit.expired():  # a runner's own timeout (it maps those itself)
            raise
        raise InferenceTimeoutError("deadline passed while generating", field="deadline") from None


def _answers(runner: ModelRunner, request: InferenceRequest) -> AsyncIterator[Chunk]:
    """The chunks of `request` on `runner`: generated, or the one chunk of an embedding or count."""
    if request.task == "generate":
        return runner.generate(request)
    return _one(runner, request)


async def _one(runner: ModelRunner, request: InferenceRequest) -> AsyncIterator[Chunk]:
    if request.task == "embed":
        yield await runner.embed(request)
    else:
        count = await runner.count_tokens(request)
        yield Chunk("", token_count=0, finish_reason="stop", usage=Usage(prompt_tokens=count))


def record_end(
    metrics: DeploymentMetrics | None,
    request: InferenceRequest,
    deployment: str,
    replica: str,
    outcome: str,
    latency_s: float,
    usage: Usage | None,
    cost: Cost | None = None,
) -> SpendRecord:
    """A request's end on `deployment`: counted in its metrics, logged in one line, and priced
    (`cost`: the deployment's prices) as the spend record its caller sends to the key keeper."""
    if request.task == "count_tokens":
        usage = None  # the tokens counted were not consumed
    spent = spend_record(request, deployment, cost or FREE, usage, outcome, latency_s, time.time())
    if metrics is not None:
        metrics.request_done(request.tenant, replica, outcome, latency_s, usage, nanos_to_usd(spent.cost_nanos))
    log.info(
        "request",
        request_id=request.request_id,
        endpoint=request.endpoint,
        task=request.task,
        tenant=request.tenant,
        key_id=request.key_id,
        deployment=deployment,
        replica=replica,
        latency_ms=round(latency_s * 1000, 2),
        outcome=outcome,
        prompt_tokens=usage.prompt_tokens if usage is not None else None,
        completion_tokens=usage.completion_tokens if usage is not None else None,
        cost_usd=nanos_to_usd(spent.cost_nanos),
        **(_NO_TRACE if request.trace is None else {"trace_id": tracing.trace_id(request.trace)}),
    )
    return spent
