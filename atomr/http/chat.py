"""``POST /v1/chat/completions`` and ``POST /v1/completions``: JSON answers, or server-sent events
with ``stream: true``.

Each request is authenticated (tenants with hashed keys, `atomr.core.tenants`), checked against
its tenant's models and concurrency quota, parsed (`openai_wire`) and handed to the backend, which
streams its events. When the client goes away, the request is cancelled down to the engine.
Errors known before the first byte (a stream's first event) are HTTP statuses with JSON bodies;
after it, SSE error events.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from atomr.core.errors import InferenceError, InternalError
from atomr.core.tenants import Tenant
from atomr.core.types import Chunk, InferenceRequest, InferenceResult, StreamEvent, Usage
from atomr.http import openai_requests
from atomr.http import openai_wire as wire
from atomr.http.plumbing import FrontContext, bearer, error_response, log, until_disconnect
from atomr.observability import tracing
from atomr.serving.stream_assembly import assemble_result

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass(frozen=True, slots=True)
class Dialect:
    """One wire an inference endpoint speaks: how its bodies are read, its answers, streams and
    errors written, and where its callers put their key."""

    route: str
    parse: Callable[[bytes, int], tuple[Any, InferenceRequest]]
    render: Callable[[InferenceRequest, Any, InferenceResult], dict[str, Any]]
    writer: Callable[[InferenceRequest, Any], StreamWriter]
    error_response: Callable[[InferenceError], Response] = error_response
    api_key: Callable[[Request], str | None] = bearer
    # The request completed once its tenant is known, before it is checked (the Responses wire
    # puts the stored conversation it continues in front); None: the request as parsed.
    resolve: Callable[[Any, InferenceRequest], InferenceRequest] | None = None


class StreamWriter(Protocol):
    """The bytes of one streamed answer in a dialect's events."""

    def start(self) -> bytes: ...

    def chunk(self, c: Chunk) -> bytes: ...

    def end(self, usage: Usage | None) -> bytes: ...

    def error(self, exc: InferenceError) -> bytes: ...


def _openai_writer(chat: bool) -> Callable[[InferenceRequest, Any], StreamWriter]:
    def writer(req: InferenceRequest, body: Any) -> StreamWriter:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return wire.StreamEncoder(req.request_id, body.model, chat, include_usage)

    return writer


OPENAI_CHAT = Dialect(
    CHAT,
    openai_requests.parse_chat,
    lambda req, body, result: wire.chat_response(req.request_id, body.model, result),
    _openai_writer(True),
)
OPENAI_COMPLETIONS = Dialect(
    COMPLETIONS,
    openai_requests.parse_completion,
    lambda req, body, result: wire.completion_response(req.request_id, body.model, result),
    _openai_writer(False),
)


def routes(ctx: FrontContext) -> list[Route]:
    async def chat_completions(request: Request) -> Response:
        return await serve(ctx, request, OPENAI_CHAT)

    async def completions(request: Request) -> Response:
        return await serve(ctx, request, OPENAI_COMPLETIONS)

    return [Route(CHAT, chat_completions, methods=["POST"]), Route(COMPLETIONS, completions, methods=["POST"])]


async def serve(ctx: FrontContext, request: Request, dialect: Dialect) -> Response:
    """One inference request in `dialect`: admitted, run, and answered whole or streamed."""
    route = dialect.route
    admitted = await _admit(ctx, request, dialect)
    if isinstance(admitted, Response):
        return admitted
    tenant, body, req = admitted
    if req.stream:
        # The status line waits for the first event: an error known before it (unknown model,
        # context too long, rate limited, no replica) is an HTTP status with a JSON body, which
        # the SDKs turn into their typed errors and retry; only later errors are SSE events.
        events = ctx.backend.stream(req)
        first = await until_disconnect(request, _first_event(events))
        if not isinstance(first, StreamEvent):
            await events.aclose()  # type: ignore[attr-defined]
            ctx.quota.leave(tenant)
            ctx.metrics.record(route, 499 if first is None else first.http_status)
            return Response(status_code=499) if first is None else dialect.error_response(first)
        return StreamingResponse(
            _sse(ctx, dialect.writer(req, body), lambda: ctx.quota.leave(tenant), route, first, events),
            media_type="text/event-stream",
            headers={"x-request-id": req.request_id, "cache-control": "no-cache"},
        )
    try:
        outcome = await until_disconnect(request, _whole(ctx, req))
    finally:
        ctx.quota.leave(tenant)
    if isinstance(outcome, InferenceError):
        ctx.metrics.record(route, outcome.http_status)
        return dialect.error_response(outcome)
    if outcome is None:  # the client left; the request was cancelled
        ctx.metrics.record(route, 499)
        return Response(status_code=499)
    ctx.metrics.record(route, 200)
    text = json.dumps(dialect.render(req, body, outcome), separators=(",", ":"))
    return Response(text, media_type="application/json", headers={"x-request-id": req.request_id})


async def _admit(
    ctx: FrontContext, request: Request, dialect: Dialect
) -> tuple[Tenant | None, Any, InferenceRequest] | Response:
    """The caller's tenant, body and request, counted in the tenant's quota; or the refusal."""
    tenant: Tenant | None = None
    route = dialect.route
    span = tracing.http_span(request.headers, route)  # None unless tracing is on
    try:
        tenant = ctx.tenants.authenticate(dialect.api_key(request))
        raw = await ctx.read_body(request)
        body, req = dialect.parse(raw, ctx.settings.default_max_tokens)
        ctx.tenants.authorize(tenant, req.model)
        wanted = ctx.backend.forwarded_headers()
        headers = {k: v for k, v in request.headers.items() if k in wanted} if wanted else None
        req = dataclasses.replace(
            req,
            tenant=tenant.name if tenant is not None else "default",
            key_id=tenant.key_id if tenant is not None else None,
            priority=tenant.priority if tenant is not None else 0,
            deadline=time.time() + ctx.settings.request_timeout_s,
            headers=headers or None,
            endpoint=route,
            trace=None if span is None else span.admit(req),  # each process's spans join the front's trace
        )
        if dialect.resolve is not None:
            req = dialect.resolve(body, req)
        req.validate()
        ctx.quota.enter(tenant)  # last: nothing after it refuses the request
    except ClientDisconnect:
        return Response(status_code=499)
    except InferenceError as exc:
        ctx.metrics.record(route, exc.http_status)
        log.info("http request refused", route=route, status=exc.http_status, kind=exc.kind, field=exc.field)
        return dialect.error_response(exc)
    return tenant, body, req


async def _first_event(events: AsyncIterator[StreamEvent]) -> StreamEvent | InferenceError:
    """The stream's first event, or the error that ended it before any."""
    try:
        return await anext(events)
    except InferenceError as exc:
        return exc
    except StopAsyncIteration:
        return InternalError("the request's stream ended before its first event")


async def _then(first: StreamEvent, events: AsyncIterator[StreamEvent]) -> AsyncIterator[StreamEvent]:
    yield first
    async for ev in events:
        yield ev


async def _sse(
    ctx: FrontContext,
    enc: StreamWriter,
    done: Callable[[], None],
    route: str,
    first_event: StreamEvent,
    events: AsyncIterator[StreamEvent],
) -> AsyncIterator[bytes]:
    status = 200
    try:
        first = True
        async for ev in _then(first_event, events):
            out = enc.start() if first else b""
            first = False
            if ev.chunk is not None:
                out += enc.chunk(ev.chunk)
            if ev.final:
                out += enc.end(ev.usage)
            if out:
                yield out
    except InferenceError as exc:
        status = exc.http_status
        yield enc.error(exc)
    except asyncio.CancelledError:
        status = 499
        raise
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        done()
        ctx.metrics.record(route, status)


async def _whole(ctx: FrontContext, req: InferenceRequest) -> Any:
    """The whole answer (an InferenceResult), or the request's InferenceError."""
    chunks: list[Chunk] = []
    last = StreamEvent(req.request_id)
    try:
        async for ev in ctx.backend.stream(req):
            if ev.chunk is not None:
                chunks.append(ev.chunk)
            last = ev
    except InferenceError as exc:
        return exc
    return assemble_result(req, chunks, last)
