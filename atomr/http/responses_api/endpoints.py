"""The routes of the Responses API: ``POST /v1/responses`` (a `Dialect` of the one inference flow,
`atomr.http.chat.serve`), ``GET`` and ``DELETE /v1/responses/{response_id}`` over the front's
store of answers.

``store`` (true unless the caller says false) keeps an answer and the conversation that led to
it, for ``previous_response_id`` and ``GET``. With the store off (``responses_store_max_items``
0), ``previous_response_id`` and an explicit ``store: true`` are refused by name; a
``previous_response_id`` not kept (unknown, expired, deleted, or another tenant's) is a 404
naming it.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atomr.core.errors import InferenceError, InvalidRequestError, NotFoundError, quote
from atomr.core.types import InferenceRequest, InferenceResult
from atomr.http.chat import Dialect, serve
from atomr.http.plumbing import FrontContext, bearer, error_response
from atomr.http.responses_api import protocol, rendering
from atomr.http.responses_api.protocol import ResponsesBody
from atomr.http.responses_api.rendering import ResponseHead
from atomr.http.responses_api.store import ResponseStore, StoredResponse
from atomr.http.responses_api.streaming import ResponsesStream

RESPONSES = "/v1/responses"
ONE_RESPONSE = "/v1/responses/{response_id}"


class ResponsesWire:
    """The Responses dialect's parts that use the store: reading a request (and the conversation
    it continues), and keeping its answer, whole or streamed."""

    def __init__(self, store: ResponseStore) -> None:
        self.store = store

    def parse(self, raw: bytes, default_max_tokens: int) -> tuple[ResponsesBody, InferenceRequest]:
        body, req = protocol.parse(raw, default_max_tokens)
        if not self.store.enabled:
            off = "this server keeps no responses (its responses store is off)"
            if body.store:
                raise InvalidRequestError(f"store: {off}", field="store")
            if body.previous_response_id is not None:
                raise InvalidRequestError(f"previous_response_id: {off}", field="previous_response_id")
        return body, req

    def resolve(self, body: ResponsesBody, req: InferenceRequest) -> InferenceRequest:
        """The request after the stored conversation it continues, found as its tenant's."""
        if body.previous_response_id is None:
            return req
        earlier = self.store.get(body.previous_response_id, req.tenant)
        if earlier is None:
            raise NotFoundError(
                f"previous_response_id: no stored response {body.previous_response_id!r} (unknown or expired)",
                field="previous_response_id",
            )
        return protocol.continued(req, body, earlier.conversation)

    def render(self, req: InferenceRequest, body: ResponsesBody, result: InferenceResult) -> dict[str, Any]:
        response = rendering.whole(self._head(req, body), result)
        self._keep(req, body, response)
        return response

    def writer(self, req: InferenceRequest, body: ResponsesBody) -> ResponsesStream:
        return ResponsesStream(self._head(req, body), lambda response: self._keep(req, body, response))

    def _head(self, req: InferenceRequest, body: ResponsesBody) -> ResponseHead:
        return ResponseHead.of(req.request_id, body, kept=self.store.enabled and body.store is not False)

    def _keep(self, req: InferenceRequest, body: ResponsesBody, response: dict[str, Any]) -> None:
        if not response["store"]:
            return
        said = protocol.input_messages(response["output"])
        conversation = protocol.conversation(req, body) + said
        self.store.put(StoredResponse(response["id"], req.tenant, response, conversation))


def _error_response(exc: InferenceError) -> Response:
    return error_response(protocol.in_wire_terms(exc))


def routes(ctx: FrontContext) -> list[Route]:
    settings = ctx.settings
    shared = ctx.place.shared_dir
    path = os.path.join(shared, "responses.sqlite") if shared else None
    store = ResponseStore(settings.responses_store_max_items, settings.responses_store_max_age_s, path)
    wire = ResponsesWire(store)
    dialect = Dialect(RESPONSES, wire.parse, wire.render, wire.writer, _error_response, bearer, wire.resolve)

    async def create(request: Request) -> Response:
        return await serve(ctx, request, dialect)

    async def retrieve(request: Request) -> Response:
        try:
            found = _stored(ctx, wire.store, request)
        except InferenceError as exc:
            ctx.metrics.record(ONE_RESPONSE, exc.http_status)
            return error_response(exc)
        ctx.metrics.record(ONE_RESPONSE, 200)
        return JSONResponse(found.response)

    async def delete(request: Request) -> Response:
        try:
            found = _stored(ctx, wire.store, request)
        except InferenceError as exc:
            ctx.metrics.record(ONE_RESPONSE, exc.http_status)
            return error_response(exc)
        wire.store.delete(found.id, found.tenant)
        ctx.metrics.record(ONE_RESPONSE, 200)
        return JSONResponse({"id": found.id, "object": "response", "deleted": True})

    return [
        Route(RESPONSES, create, methods=["POST"]),
        Route(ONE_RESPONSE, retrieve, methods=["GET"]),
        Route(ONE_RESPONSE, delete, methods=["DELETE"]),
    ]


def _stored(ctx: FrontContext, store: ResponseStore, request: Request) -> StoredResponse:
    """The caller's stored response the path names; 401, 400 (a query parameter) or 404 otherwise."""
    tenant = ctx.authenticate(request)
    unknown = next(iter(request.query_params), None)
    if unknown is not None:
        raise InvalidRequestError(f"{unknown} is not taken by this endpoint", field=unknown)
    response_id = request.path_params["response_id"]
    found = store.get(response_id, tenant.name if tenant is not None else "default")
    if found is None:
        raise NotFoundError(f"no stored response {quote(response_id)}", field="response_id")
    return found
