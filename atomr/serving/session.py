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
from collections.abc import AsyncIterator, Callable
from typing import Any

import structlog

from atomr.core.deployment import Deployment
from atomr.core.errors import CancelledRequestError, InferenceTimeoutError, as_error_info
from atomr.core.runner import ModelRunner, check_supported
from atomr.core.types import Chunk, InferenceRequest, StreamEvent, Usage
from atomr.observability import tracing
from atomr.observability.metrics import DeploymentMetrics
from atomr.serving.coalesce import ChunkCoalescer

log = structlog.get_logger("atomr.request")
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
) -> None:
    """Generate `request` on `runner`; every outcome, cancellation included, ends in `send_final`."""
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

    try:
        if runner is None:
            raise RuntimeError("runner not loaded")
        check_supported(runner, request)  # e.g. logprobs from a runtime that has none: refused here
        agen = _answers(runner, request)
        try:
            async for chunk in agen:
                if request.deadline is not None and time.time() > request.deadline:
                    raise InferenceTimeoutError("deadline passed while generating", field="deadline")
                ready = co.add(chunk, loop.time())
                if ready:
                    if timer is not None:
                        timer.cancel()
                        timer = None
                    for out in ready:
                        emit(out)
                if co.pending and timer is None:
                    timer = loop.call_later(co.max_delay, on_timer)
        finally:
            await agen.aclose()  # type: ignore[attr-defined]
        flush()
        send_final(ev.final(sent, usage))
    except asyncio.CancelledError:
        send_final(ev.cancelled(sent))
    except BaseException as exc:  # noqa: BLE001 - every request gets one final answer
        flush()  # text generated before the failure still reaches the caller, then the error
        send_final(ev.error(exc, sent))
    finally:
        if timer is not None:
            timer.cancel()


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
) -> None:
    """A request's end: counted in its deployment's metrics and logged in one line."""
    if request.task == "count_tokens":
        usage = None  # the tokens counted were not consumed
    if metrics is not None:
        metrics.request_done(request.tenant, replica, outcome, latency_s, usage)
    log.info(
        "request",
        request_id=request.request_id,
        endpoint=request.endpoint,
        task=request.task,
        tenant=request.tenant,
        deployment=deployment,
        replica=replica,
        latency_ms=round(latency_s * 1000, 2),
        outcome=outcome,
        prompt_tokens=usage.prompt_tokens if usage is not None else None,
        completion_tokens=usage.completion_tokens if usage is not None else None,
        **(_NO_TRACE if request.trace is None else {"trace_id": tracing.trace_id(request.trace)}),
    )
