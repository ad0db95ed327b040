"""What every endpoint of the HTTP front shares: its context, auth, tenant quotas, body reading,
error responses and the handlers of unknown routes and failures.

Errors are OpenAI-style JSON (`openai_wire.error_body`) with the matching status and, for
rate_limited / overloaded, a ``Retry-After`` header.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from atomr.core.errors import InferenceError, InternalError, InvalidRequestError, NotFoundError, quote
from atomr.core.tenants import Tenant, TenantTable
from atomr.http import openai_wire as wire
from atomr.http.port import InferenceBackend
from atomr.http.quota import Quota
from atomr.http.settings import HttpSettings
from atomr.http.workers import WorkerPlace
from atomr.observability.metrics import HttpMetrics

log = structlog.get_logger("atomr.http")


class PayloadTooLargeError(InvalidRequestError):
    http_status = 413


@dataclass(slots=True)
class FrontContext:
    """What the endpoints share: the backend, the tenants and their quotas, settings, metrics."""

    backend: InferenceBackend
    tenants: TenantTable
    settings: HttpSettings
    metrics: HttpMetrics
    place: WorkerPlace = field(default_factory=WorkerPlace)
    quota: Quota = field(init=False)

    def __post_init__(self) -> None:
        place = self.place
        path = os.path.join(place.shared_dir, "quota") if place.shared_dir else None
        names = [t.name for t in self.tenants.tenants]
        self.quota = Quota(names, worker=place.worker, workers=place.workers, path=path)

    def authenticate(self, request: Request) -> Tenant | None:
        """The caller's tenant (None when the front is open); raises 401 for a missing or wrong key."""
        return self.tenants.authenticate(bearer(request))

    def refused(self, request: Request) -> Response | None:
        """For a path outside `public_paths` when the front asks for keys: the 401 of a caller
        without a valid one (else None)."""
        if self.tenants.open or request.url.path in self.settings.public_paths:
            return None
        try:
            self.authenticate(request)
        except InferenceError as exc:
            return error_response(exc)
        return None

    async def read_body(self, request: Request) -> bytes:
        """The request's body, refused (413) past `max_body_bytes`, declared or sent."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"the body is larger than {limit} bytes", field="body")
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise PayloadTooLargeError(f"the body is larger than {limit} bytes", field="body")
        return bytes(body)


def bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def error_response(exc: InferenceError) -> JSONResponse:
    return JSONResponse(wire.error_body(exc), status_code=exc.http_status, headers=wire.error_headers(exc))


async def until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
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


# ---- unknown routes, wrong methods, failures ----


async def _not_found(request: Request, exc: Exception) -> Response:
    return error_response(NotFoundError(f"no route {request.method} {quote(request.url.path)}", field="path"))


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("http handler failed", path=request.url.path, error=f"{type(exc).__name__}: {exc}")
    return error_response(InternalError("the server failed on this request"))


async def _method_not_allowed(request: Request, exc: Exception) -> Response:
    err = InvalidRequestError(f"{request.method} is not allowed on {request.url.path}", field="method")
    return JSONResponse(wire.error_body(err), status_code=405, headers=getattr(exc, "headers", None))


def exception_handlers() -> dict[Any, Callable[[Request, Exception], Awaitable[Response]]]:
    return {404: _not_found, 405: _method_not_allowed, 500: _server_error, Exception: _server_error}
