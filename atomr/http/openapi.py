"""The OpenAPI 3.0 description of the HTTP front (served at ``GET /openapi.json``).

The bodies' schemas are generated from the pydantic models in `atomr.http.schemas` (their JSON
schemas, turned into OpenAPI 3.0.3's dialect by `openapi30`); this module adds the operations:
the responses of every route (JSON, or server-sent events with ``stream: true``), the OpenAI-style
error body with its statuses, and bearer authentication when the node has tenants. The request
examples name a model the node serves, so a client generated from this document (or a fuzzer
reading it) can make a successful call at once.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atomr.cluster.key_store import GROUPS
from atomr.core.keys import KeyRequest
from atomr.http import anthropic_schemas, schemas
from atomr.http.plumbing import FrontContext
from atomr.http.responses_api import schemas as responses_schemas

OPENAPI_VERSION = "3.0.3"
_REF = "#/components/schemas/"
_STRING = {"type": "string"}


# ---- schemas: pydantic's JSON Schema (2020-12) in OpenAPI 3.0.3's dialect ----


def openapi30(schema: Any, inline: dict[str, Any]) -> Any:
    """`schema` (pydantic's JSON schema, refs as ``#/components/schemas/<Model>``) for OpenAPI 3.0.3:
    no titles; unions are ``oneOf`` (ours are of disjoint types) and ``X | None`` is X made
    nullable (null added to an enum, as 3.0.3 wants); ``const`` becomes a one-value ``enum``;
    ``exclusiveMinimum`` is the boolean form; a ``None`` default and ``additionalProperties: true``
    (the default) are left out; 3.0.3 has no null type, so a null-only field is a nullable string
    whose enum holds only null. References to the models in `inline` are replaced by their
    schema."""
    if isinstance(schema, list):
        return [openapi30(s, inline) for s in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.removeprefix(_REF) in inline:
        return openapi30(inline[ref.removeprefix(_REF)], inline)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and value is True:
            continue
        if key == "const":
            out["enum"] = [value]
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True
        elif key in ("properties", "$defs"):
            out[key] = {name: openapi30(s, inline) for name, s in value.items()}
        else:
            out[key] = openapi30(value, inline)
    if out.get("type") == "null":
        out.update(type="string", enum=[None], nullable=True)
    if "anyOf" in out:
        return _union(out)
    return out


def _union(schema: dict[str, Any]) -> dict[str, Any]:
    branches = schema.pop("anyOf")
    kept = [b for b in branches if b != {"type": "string", "enum": [None], "nullable": True}]
    nullable = len(kept) < len(branches)
    merged: dict[str, Any] = dict(kept[0]) if len(kept) == 1 else {"oneOf": kept}
    if nullable:
        merged["nullable"] = True
        if "enum" in merged:  # OpenAPI 3.0.3: null passes an enum only when the enum lists it
            merged["enum"] = [*merged["enum"], None]
    return {**merged, **schema}


@functools.cache
def _schemas() -> dict[str, Any]:
    components = (*schemas.COMPONENTS, *anthropic_schemas.COMPONENTS, *responses_schemas.COMPONENTS)
    _, top = models_json_schema([(m, "validation") for m in components], ref_template=_REF + "{model}")
    defs: dict[str, Any] = top["$defs"]
    named = [m.__name__ for m in components]
    inline = {name: s for name, s in defs.items() if name not in named}
    return {name: openapi30(defs[name], inline) for name in named}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


# ---- operations ----


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERROR_TEXT = {
    "400": "invalid request: the body, a parameter (named in error.param) or a context too long",
    "401": "no API key, or an unknown one",
    "403": "the tenant may not use this model",
    "404": "no such model",
    "413": "the body is larger than the server's limit",
    "429": "rate limited, or the tenant's concurrency quota is full (see Retry-After)",
    "500": "internal error",
    "502": "the engine's process crashed during the request",
    "503": "overloaded or unavailable (see Retry-After)",
    "504": "the request's deadline passed",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def _errors(*statuses: str, schema: str = "Error") -> dict[str, Any]:
    out = {}
    for status in statuses:
        out[status] = _json(_ref(schema), _ERROR_TEXT[status])
        if status in ("429", "503"):
            out[status]["headers"] = _RETRY_AFTER
    return out


def _inference(
    kind: str,
    summary: str,
    example: dict[str, Any],
    auth: bool,
    *,
    answer: str | None = None,
    error: str = "Error",
    streams: bool = True,
) -> dict[str, Any]:
    """A POST that runs a request on a deployment: `kind` + "Request" in, `answer` (default
    `kind`) out, or server-sent events with ``stream: true``; errors in the `error` schema."""
    request_id = {"x-request-id": {"description": "the request's id, as in the logs", "schema": _STRING}}
    content: dict[str, Any] = {"application/json": {"schema": _ref(answer or kind)}}
    if streams:
        content["text/event-stream"] = {"schema": _ref("ServerSentEvent")}
    statuses = ("400", *(("401", "403") if auth else ()), "404", "413", "429", "500", "502", "503", "504")
    op: dict[str, Any] = {
        "operationId": "create" + kind,
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref(kind + "Request"), "example": example}},
        },
        "responses": {
            "200": {
                "description": "the answer: one JSON object" + (", or server-sent events with stream: true" * streams),
                "headers": request_id,
                "content": content,
            },
            **_errors(*statuses, schema=error),
        },
    }
    if not auth:
        op["security"] = []
    elif error == "MessagesError":  # Anthropic's clients send their key as x-api-key
        op["security"] = [{"bearer": []}, {"x-api-key": []}]
    return op


def _stored_response(auth: bool) -> dict[str, Any]:
    """``GET`` and ``DELETE /v1/responses/{response_id}``: an answer the caller's tenant stored."""
    param = {"name": "response_id", "in": "path", "required": True, "schema": _STRING}
    errors = _errors("400", *(("401",) if auth else ()), "404")
    ops = {
        "get": ("getResponse", "a stored answer", _json(_ref("Response"), "the stored answer")),
        "delete": ("deleteResponse", "forget a stored answer", _json(_ref("DeletedResponse"), "it is gone")),
    }
    out: dict[str, Any] = {}
    for method, (operation_id, summary, ok) in ops.items():
        out[method] = {"operationId": operation_id, "summary": summary, "parameters": [param]}
        out[method]["responses"] = {"200": ok, **errors}
        if not auth:
            out[method]["security"] = []
    return out


def _paths(model: str, auth: bool, public: Sequence[str] = ()) -> dict[str, Any]:
    def _public(operation_id: str, summary: str, responses: dict[str, Any], path: str) -> dict[str, Any]:
        """An operation that asks for no key unless keys are on and `path` is not public."""
        if auth and path not in public:
            return {
                "get": {"operationId": operation_id, "summary": summary, "responses": {**responses, **_errors("401")}}
            }
        return {"get": {"operationId": operation_id, "summary": summary, "security": [], "responses": responses}}

    hello = [{"role": "user", "content": "Hello"}]
    chat_example = {"model": model, "messages": hello, "max_tokens": 16}
    completion_example = {"model": model, "prompt": "The actor model", "max_tokens": 16}
    models_op: dict[str, Any] = {
        "operationId": "listModels",
        "summary": "the models the caller may use",
        "responses": {"200": _json(_ref("ModelList"), "the models"), **(_errors("401") if auth else {})},
    }
    if not auth:
        models_op["security"] = []
    not_ready = _json({"oneOf": [_ref("Readiness"), _ref("Error")]}, "not ready, or the cluster did not answer")
    prometheus = {"description": "Prometheus text format 0.0.4", "content": {"text/plain": {"schema": _STRING}}}
    return {
        "/v1/chat/completions": {
            "post": _inference("ChatCompletion", "a chat completion (JSON, or SSE with stream)", chat_example, auth)
        },
        "/v1/completions": {
            "post": _inference("Completion", "a text completion (JSON, or SSE with stream)", completion_example, auth)
        },
        "/v1/embeddings": {
            "post": _inference(
                "Embedding",
                "embeddings of one text or several (every input in one engine or provider call)",
                {"model": model, "input": ["The actor model", "Hello"]},
                auth,
                answer="EmbeddingList",
                streams=False,
            )
        },
        "/v1/messages": {
            "post": _inference(
                "Messages",
                "Anthropic's Messages wire (JSON, or its SSE events with stream)",
                chat_example,
                auth,
                answer="Message",
                error="MessagesError",
            )
        },
        "/v1/messages/count_tokens": {
            "post": _inference(
                "CountTokens",
                "the input tokens of a Messages prompt (where the deployment's runtime can count)",
                {"model": model, "messages": hello},
                auth,
                answer="TokenCount",
                error="MessagesError",
                streams=False,
            )
        },
        "/v1/responses": {
            "post": _inference(
                "Response",
                "OpenAI's Responses API (JSON, or its semantic SSE events with stream)",
                {"model": model, "input": "Hello", "max_output_tokens": 16},
                auth,
            )
        },
        "/v1/responses/{response_id}": _stored_response(auth),
        "/v1/models": {"get": models_op},
        "/healthz": _public("health", "the process is up", {"200": _json(_ref("Health"), "up")}, "/healthz"),
        "/health": _public(
            "health_alias", "the process is up (vLLM's name)", {"200": _json(_ref("Health"), "up")}, "/health"
        ),
        "/readyz": _public(
            "readiness",
            "every configured model has a ready replica",
            {"200": _json(_ref("Readiness"), "ready"), "503": not_ready, **_errors("500", "502", "504")},
            "/readyz",
        ),
        "/metrics": _public(
            "metrics",
            "Prometheus metrics of the whole cluster",
            {"200": prometheus, **_errors("500", "502", "503", "504")},
            "/metrics",
        ),
        "/openapi.json": _public(
            "openapi", "this document", {"200": _json({"type": "object"}, "the OpenAPI document")}, "/openapi.json"
        ),
    }


def _admin_paths() -> dict[str, Any]:
    """``/admin/keys`` and ``/admin/spend`` (`atomr.http.admin`), with the admin key."""
    security: list[dict[str, list[str]]] = [{"admin": []}]
    key_id = [{"name": "key_id", "in": "path", "required": True, "schema": _STRING}]
    a_key = _json({"type": "object"}, "the key, with what it spent in its period")
    with_secret = _json(
        {"type": "object", "properties": {"key": {"type": "object"}, "secret": _STRING}},
        "the key and its secret, shown this once",
    )
    listing = _json({"type": "object", "properties": {"object": _STRING, "data": {"type": "array"}}}, "the list")
    errors = {**_errors("400", "401"), "403": _json(_ref("Error"), "the node has no admin key: no admin API")}

    def op(operation_id: str, summary: str, ok: dict[str, Any], status: str = "200", **more: Any) -> dict[str, Any]:
        return {
            "operationId": operation_id,
            "summary": summary,
            "security": security,
            **more,
            "responses": {status: ok, **errors},
        }

    body = {
        "required": True,
        "content": {"application/json": {"schema": openapi30(KeyRequest.model_json_schema(), {})}},
    }
    group = {"name": "group_by", "in": "query", "schema": {"type": "string", "enum": list(GROUPS)}}
    times = [{"name": n, "in": "query", "schema": {"type": "number"}} for n in ("since", "until")]
    return {
        "/admin/keys": {
            "post": op("createKey", "make a key", with_secret, "201", requestBody=body),
            "get": op("listKeys", "every key", listing),
        },
        "/admin/keys/{key_id}": {
            "get": op("showKey", "one key", a_key, parameters=key_id),
            "delete": op("revokeKey", "revoke a key (refused everywhere at once)", a_key, parameters=key_id),
        },
        "/admin/keys/{key_id}/revoke": {"post": op("revokeKeyPost", "revoke a key", a_key, parameters=key_id)},
        "/admin/keys/{key_id}/rotate": {
            "post": op("rotateKey", "a new secret (the old one stops working)", with_secret, parameters=key_id)
        },
        "/admin/spend": {"get": op("spend", "the spend log, summed", listing, parameters=[group, *times])},
    }


def openapi_document(
    models: Sequence[str] = (),
    *,
    auth: bool = True,
    admin: bool = False,
    public: Sequence[str] = ("/health", "/healthz", "/readyz"),
) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the HTTP front.

    `models`: names the node serves (the first one goes in the request examples); `auth`: whether
    the node has tenants, i.e. whether every ``/v1`` route wants ``Authorization: Bearer <key>``;
    `admin`: whether the node has an admin key (the ``/admin`` routes); `public`: the paths served
    without a key when `auth` (``http.public_paths``).
    """
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "atomr HTTP front",
            "version": "1",
            "description": "OpenAI's and Anthropic's wires over atomr's deployments, routes and cascades.",
        },
        "paths": _paths(models[0] if models else "tiny", auth, public),
        "components": {"schemas": copy.deepcopy(_schemas())},
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "a tenant's API key (atomr-key makes one)"},
            "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key", "description": "the same key"},
        }
        doc["security"] = [{"bearer": []}]
    if admin:
        doc["paths"].update(_admin_paths())
        doc["components"].setdefault("securitySchemes", {})["admin"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "the admin key (http.admin_key_file)",
        }
    return doc


def routes(ctx: FrontContext) -> list[Route]:
    async def openapi(request: Request) -> Response:
        refused = ctx.refused(request)
        if refused is not None:  # (it names every model the node serves)
            return refused
        names = sorted(ctx.backend.model_names())
        doc = openapi_document(
            names, auth=not ctx.tenants.open, admin=ctx.tenants.runtime_keys, public=ctx.settings.public_paths
        )
        return JSONResponse(doc)

    return [Route("/openapi.json", openapi, methods=["GET"])]
