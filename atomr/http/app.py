"""The OpenAI-compatible HTTP application (Starlette), over an `InferenceBackend`.

Routes: ``POST /v1/chat/completions``, ``POST /v1/completions`` (JSON, or server-sent events with
``stream: true``), ``GET /v1/models``, ``GET /healthz`` (the process is up), ``GET /readyz`` (every
configured model has a ready replica), ``GET /metrics`` (Prometheus text for the whole cluster).

Each request is authenticated (tenants with hashed keys, `atomr.core.tenants`), checked against
its tenant's models and concurrency quota, parsed (`openai_wire`) and handed to the backend, which
streams its events. When the client goes away, the request is cancelled down to the engine.
Errors are OpenAI-style JSON with the matching status and, for rate_limited / overloaded, a
``Retry-After`` header. This module knows nothing of actors: the gateway process supplies the
backend (`atomr.http.lane`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import structlog
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from atomr.core.errors import InferenceError, InternalError, InvalidRequestError, RateLimitedError
from atomr.core.tenants import Tenant, TenantTable
from atomr.core.types import Chunk, InferenceRequest, StreamEvent
from atomr.http import openai_wire as wire
from atomr.http.openapi import openapi_document
from atomr.http.settings import HttpSettings
from atomr.observability.metrics import HttpMetrics
from atomr.serving.stream_assembly import assemble_result

log = structlog.get_logger("atomr.http")


class InferenceBackend(Protocol):
    """What the HTTP front needs from the cluster."""

    def stream(self, request: InferenceRequest) -> AsyncIterator[StreamEvent]:
        """Events of `request` (chunks, then the final one); raises its InferenceError.
        Closing the iterator early cancels the request."""
        ...

    def model_names(self) -> list[str]: ...

    async def readiness(self) -> tuple[bool, dict[str, str]]: ...

    async def metrics(self) -> bytes: ...


class PayloadTooLargeError(InvalidRequestError):
    http_status = 413


def _error(exc: InferenceError) -> JSONResponse:
    return JSONResponse(wire.error_body(exc), status_code=exc.http_status, headers=wire.error_headers(exc))


class _Quota:
    """Requests in flight per tenant, against the tenant's max_concurrency."""

    def __init__(self) -> None:
        self.inflight: dict[str, int] = {}

    def enter(self, tenant: Tenant | None) -> None:
        if tenant is None:
            return
        n = self.inflight.get(tenant.name, 0)
        if n >= tenant.max_concurrency:
            raise RateLimitedError(
                f"tenant {tenant.name!r} already has {n} requests in flight (max_concurrency)", retry_after=1.0
            )
        self.inflight[tenant.name] = n + 1

    def leave(self, tenant: Tenant | None) -> None:
        if tenant is not None:
            self.inflight[tenant.name] -= 1


def make_app(
    backend: InferenceBackend, tenants: TenantTable, settings: HttpSettings, metrics: HttpMetrics
) -> Starlette:
    quota = _Quota()

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_body_bytes:
            raise PayloadTooLargeError(f"the body is larger than {settings.max_body_bytes} bytes", field="body")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > settings.max_body_bytes:
                raise PayloadTooLargeError(f"the body is larger than {settings.max_body_bytes} bytes", field="body")
        return bytes(body)

    def bearer(request: Request) -> str | None:
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None

    async def inference(request: Request, chat: bool) -> Response:
        route = "/v1/chat/completions" if chat else "/v1/completions"
        tenant: Tenant | None = None
        entered = False
        try:
            tenant = tenants.authenticate(bearer(request))
            raw = await read_body(request)
            parse = wire.parse_chat if chat else wire.parse_completion
            body, req = parse(raw, settings.default_max_tokens)
            tenants.authorize(tenant, req.model)
            req = dataclasses.replace(
                req,
                tenant=tenant.name if tenant is not None else "default",
                priority=tenant.priority if tenant is not None else 0,
                deadline=time.time() + settings.request_timeout_s,
            )
            req.validate()
            quota.enter(tenant)
            entered = True
        except ClientDisconnect:
            return Response(status_code=499)
        except InferenceError as exc:
            if entered:
                quota.leave(tenant)
            metrics.record(route, exc.http_status)
            log.info("http request refused", route=route, status=exc.http_status, kind=exc.kind, field=exc.field)
            return _error(exc)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        if req.stream:
            return StreamingResponse(
                _sse(backend, req, body.model, chat, include_usage, lambda: quota.leave(tenant), route),
                media_type="text/event-stream",
                headers={"x-request-id": req.request_id, "cache-control": "no-cache"},
            )
        try:
            outcome = await _until_disconnect(request, _whole(backend, req))
        finally:
            quota.leave(tenant)
        if isinstance(outcome, InferenceError):
            metrics.record(route, outcome.http_status)
            return _error(outcome)
        if outcome is None:  # the client left; the request was cancelled
            metrics.record(route, 499)
            return Response(status_code=499)
        metrics.record(route, 200)
        render = wire.chat_response if chat else wire.completion_response
        text = json.dumps(render(req.request_id, body.model, outcome), separators=(",", ":"))
        return Response(text, media_type="application/json", headers={"x-request-id": req.request_id})

    async def _sse(
        backend: InferenceBackend,
        req: InferenceRequest,
        model: str,
        chat: bool,
        include_usage: bool,
        done: Callable[[], None],
        route: str,
    ) -> AsyncIterator[bytes]:
        enc = wire.StreamEncoder(req.request_id, model, chat, include_usage)
        status = 200
        events = backend.stream(req)
        try:
            first = True
            async for ev in events:
                out = enc.start() if first else b""
                first = False
                if ev.chunk is not None:
                    c = ev.chunk
                    out += enc.chunk(c.text, c.logprobs, c.finish_reason)
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
            metrics.record(route, status)

    async def chat_completions(request: Request) -> Response:
        return await inference(request, chat=True)

    async def completions(request: Request) -> Response:
        return await inference(request, chat=False)

    async def models(request: Request) -> Response:
        try:
            tenant = tenants.authenticate(bearer(request))
        except InferenceError as exc:
            return _error(exc)
        names = [n for n in backend.model_names() if tenant is None or tenant.allows(n)]
        data = [{"id": n, "object": "model", "created": 0, "owned_by": "atomr"} for n in sorted(names)]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:
            ready, states = await backend.readiness()
        except InferenceError as exc:
            return _error(exc)
        return JSONResponse({"ready": ready, "deployments": states}, status_code=200 if ready else 503)

    async def metrics_route(request: Request) -> Response:
        try:
            text = await backend.metrics()
        except InferenceError as exc:
            return _error(exc)
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    async def openapi_route(request: Request) -> Response:
        return JSONResponse(openapi_document(sorted(backend.model_names()), auth=not tenants.open))

    async def not_found(request: Request, exc: Exception) -> Response:
        from atomr.core.errors import NotFoundError

        return _error(NotFoundError(f"no route {request.method} {request.url.path}", field="path"))

    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("http handler failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
        return _error(InternalError("the server failed on this request"))

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        err = InvalidRequestError(f"{request.method} is not allowed on {request.url.path}", field="method")
        return JSONResponse(wire.error_body(err), status_code=405, headers=getattr(exc, "headers", None))

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi_route, methods=["GET"]),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        404: not_found,
        405: method_not_allowed,
        500: server_error,
        Exception: server_error,
    }
    return Starlette(routes=routes, exception_handlers=handlers)


async def _whole(backend: InferenceBackend, req: InferenceRequest) -> Any:
    chunks: list[Chunk] = []
    last = StreamEvent(req.request_id)
    try:
        async for ev in backend.stream(req):
            if ev.chunk is not None:
                chunks.append(ev.chunk)
            last = ev
    except InferenceError as exc:
        return exc
    return assemble_result(req, chunks, last)


async def _until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """`work`'s result, or None when the client disconnects first (the work is then cancelled)."""
    handler = asyncio.current_task()
    assert handler is not None
    watcher = asyncio.ensure_future(_disconnected(request))
    gone = False

    def on_disconnect(w: asyncio.Future[None]) -> None:
        nonlocal gone
        if not w.cancelled() and w.exception() is None:
            gone = True
            handler.cancel()

    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if not gone:
            raise
        handler.uncancel()
        return None
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
