"""The OpenAPI 3.0 description of the HTTP front (served at ``GET /openapi.json``).

One plain dict, built here by hand so that it says exactly what `openai_wire` accepts: the chat
and completion bodies with their ranges, the parameters taken only at their neutral value (``n``
1, no tools, no penalties...), the responses of every route (JSON, or server-sent events with
``stream: true``), the OpenAI-style error body, and bearer authentication when the node has
tenants. The request examples name a model the node serves, so a client generated from this
document (or a fuzzer reading it) can make a successful call at once.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

OPENAPI_VERSION = "3.0.3"
_REF = "#/components/schemas/"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": _REF + name}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    out = {**schema, "nullable": True}
    if "enum" in out:  # OpenAPI 3.0.3: null passes an enum only when the enum lists it
        out["enum"] = [*out["enum"], None]
    return out


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_INT64_MAX = 2**63 - 1
_STRING = {"type": "string"}


def _completion_schema(obj: str, answer: dict[str, Any], logprobs: str) -> dict[str, Any]:
    """A whole (non-streamed) answer: one choice holding `answer`'s field, and usage."""
    (field,) = answer
    return {
        "type": "object",
        "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": _STRING,
            "object": {"type": "string", "enum": [obj]},
            "created": {"type": "integer"},
            "model": _STRING,
            "system_fingerprint": _STRING,
            "choices": {
                "type": "array",
                "minItems": 1,
                "maxItems": 1,
                "items": {
                    "type": "object",
                    "required": ["index", field, "logprobs", "finish_reason"],
                    "properties": {
                        "index": {"type": "integer", "enum": [0]},
                        **answer,
                        "logprobs": _nullable(_ref(logprobs)),
                        "finish_reason": _STRING,
                    },
                },
            },
            "usage": _nullable(_ref("Usage")),
        },
    }


# Parameters of both bodies (`openai_wire._Common`).
_COMMON: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1, "description": "a deployment, alias, route or cascade name"},
    "max_tokens": _nullable({"type": "integer", "minimum": 1}),
    "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
    "top_p": _nullable({"type": "number", "minimum": 0, "exclusiveMinimum": True, "maximum": 1}),
    "top_k": _nullable({"type": "integer", "minimum": 0, "description": "extension: 0 disables top-k"}),
    "seed": _nullable({"type": "integer", "minimum": 0, "maximum": _INT64_MAX}),
    "stop": _nullable(
        {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "maxItems": 8, "items": {"type": "string", "minLength": 1}},
            ]
        }
    ),
    "stream": {"type": "boolean", "default": False},
    "stream_options": _nullable(_ref("StreamOptions")),
    "user": _nullable(_STRING),
    # Accepted only at their neutral value: anything else is a 400 naming the parameter.
    "n": _nullable({"type": "integer", "enum": [1]}),
    "presence_penalty": _nullable({"type": "number", "enum": [0]}),
    "frequency_penalty": _nullable({"type": "number", "enum": [0]}),
    "logit_bias": _nullable({"type": "object", "maxProperties": 0}),
    "tools": _nullable({"type": "array", "maxItems": 0, "items": {}}),
    "functions": _nullable({"type": "array", "maxItems": 0, "items": {}}),
    "tool_choice": _nullable({"type": "object", "maxProperties": 0}),
    "function_call": _nullable({"type": "object", "maxProperties": 0}),
}

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": _STRING,
                    "type": {"type": "string", "description": "OpenAI's error type, e.g. invalid_request_error"},
                    "param": _nullable({"type": "string", "description": "the parameter that was wrong"}),
                    "code": _nullable({"type": "string", "description": "atomr's error kind"}),
                },
            }
        },
    },
    "TextPart": {
        "type": "object",
        "required": ["type", "text"],
        "properties": {"type": {"type": "string", "enum": ["text"]}, "text": _STRING},
    },
    "ChatMessage": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"oneOf": [_STRING, {"type": "array", "items": _ref("TextPart")}]},
            "name": _STRING,
        },
    },
    "StreamOptions": {"type": "object", "properties": {"include_usage": {"type": "boolean", "default": False}}},
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_COMMON,
            "messages": {"type": "array", "minItems": 1, "items": _ref("ChatMessage")},
            "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
            "logprobs": {"type": "boolean", "default": False},
            "top_logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 20}),
            "response_format": _nullable(
                {"type": "object", "properties": {"type": {"type": "string", "enum": ["text"]}}}
            ),
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            **_COMMON,
            "prompt": {
                "oneOf": [_STRING, {"type": "array", "minItems": 1, "maxItems": 1, "items": _STRING}],
                "description": "one prompt per request",
            },
            "logprobs": _nullable({"type": "integer", "minimum": 0, "maximum": 5}),
            "echo": {"type": "boolean", "enum": [False]},
            "suffix": _nullable({"type": "string", "enum": []}),  # null only
            "best_of": _nullable({"type": "integer", "enum": [1]}),
        },
    },
    "Usage": {
        "type": "object",
        "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
        "properties": {
            "prompt_tokens": {"type": "integer", "minimum": 0},
            "completion_tokens": {"type": "integer", "minimum": 0},
            "total_tokens": {"type": "integer", "minimum": 0},
        },
    },
    "ChatTokenLogprob": {
        "type": "object",
        "required": ["token", "logprob", "bytes", "top_logprobs"],
        "properties": {
            "token": _STRING,
            "logprob": {"type": "number"},
            "bytes": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 255}},
            "top_logprobs": {"type": "array", "items": {}},
        },
    },
    "ChatLogprobs": {
        "type": "object",
        "required": ["content"],
        "properties": {"content": {"type": "array", "items": _ref("ChatTokenLogprob")}},
    },
    "CompletionLogprobs": {
        "type": "object",
        "required": ["tokens", "token_logprobs", "top_logprobs", "text_offset"],
        "properties": {
            "tokens": {"type": "array", "items": _STRING},
            "token_logprobs": {"type": "array", "items": {"type": "number"}},
            "top_logprobs": {"type": "array", "items": {"type": "object"}},
            "text_offset": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        },
    },
    "ChatCompletion": _completion_schema(
        "chat.completion",
        {
            "message": {
                "type": "object",
                "required": ["role", "content"],
                "properties": {"role": {"type": "string", "enum": ["assistant"]}, "content": _STRING},
            }
        },
        "ChatLogprobs",
    ),
    "Completion": _completion_schema("text_completion", {"text": _STRING}, "CompletionLogprobs"),
    "ServerSentEvent": {
        "type": "object",
        "required": ["data"],
        "description": "one event of a stream: a JSON chunk (or an error body), the last one '[DONE]'",
        "properties": {"data": _STRING, "event": _STRING},
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": _STRING,
            "object": {"type": "string", "enum": ["model"]},
            "created": {"type": "integer"},
            "owned_by": _STRING,
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "enum": ["list"]},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}},
    "Readiness": {
        "type": "object",
        "required": ["ready", "deployments"],
        "properties": {
            "ready": {"type": "boolean"},
            "deployments": {"type": "object", "additionalProperties": _STRING},
        },
    },
}

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


def _error(status: str) -> dict[str, Any]:
    out = _json(_ref("Error"), _ERROR_TEXT[status])
    if status in ("429", "503"):
        out["headers"] = _RETRY_AFTER
    return out


def _errors(*statuses: str) -> dict[str, Any]:
    return {s: _error(s) for s in statuses}


def _inference(kind: str, summary: str, example: dict[str, Any], auth: bool) -> dict[str, Any]:
    request_id = {"x-request-id": {"description": "the request's id, as in the logs", "schema": _STRING}}
    op: dict[str, Any] = {
        "operationId": "create" + kind,
        "summary": summary,
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref(kind + "Request"), "example": example}},
        },
        "responses": {
            "200": {
                "description": "the answer: one JSON object, or server-sent events with stream: true",
                "headers": request_id,
                "content": {
                    "application/json": {"schema": _ref(kind)},
                    "text/event-stream": {"schema": _ref("ServerSentEvent")},
                },
            },
            **_errors("400", *(("401", "403") if auth else ()), "404", "413", "429", "500", "502", "503", "504"),
        },
    }
    if not auth:
        op["security"] = []
    return op


def openapi_document(models: Sequence[str] = (), *, auth: bool = True) -> dict[str, Any]:
    """The OpenAPI 3.0 document of the HTTP front.

    `models`: names the node serves (the first one goes in the request examples); `auth`: whether
    the node has tenants, i.e. whether every ``/v1`` route wants ``Authorization: Bearer <key>``.
    """
    model = models[0] if models else "tiny"
    chat_example = {"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16}
    completion_example = {"model": model, "prompt": "The actor model", "max_tokens": 16}
    public: dict[str, Any] = {"security": []}
    backend_errors = _errors("500", "502", "503", "504")
    models_op: dict[str, Any] = {
        "operationId": "listModels",
        "summary": "the models the caller may use",
        "responses": {"200": _json(_ref("ModelList"), "the models"), **(_errors("401") if auth else {})},
    }
    if not auth:
        models_op["security"] = []
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "atomr HTTP front",
            "version": "1",
            "description": "OpenAI-compatible chat and completions over atomr's deployments, routes and cascades.",
        },
        "paths": {
            "/v1/chat/completions": {
                "post": _inference("ChatCompletion", "a chat completion (JSON, or SSE with stream)", chat_example, auth)
            },
            "/v1/completions": {
                "post": _inference(
                    "Completion", "a text completion (JSON, or SSE with stream)", completion_example, auth
                )
            },
            "/v1/models": {"get": models_op},
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "the process is up",
                    **public,
                    "responses": {"200": _json(_ref("Health"), "up")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readiness",
                    "summary": "every configured model has a ready replica",
                    **public,
                    "responses": {
                        "200": _json(_ref("Readiness"), "ready"),
                        "503": _json(
                            {"oneOf": [_ref("Readiness"), _ref("Error")]}, "not ready, or the cluster did not answer"
                        ),
                        **_errors("500", "502", "504"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics of the whole cluster",
                    **public,
                    "responses": {
                        "200": {
                            "description": "Prometheus text format 0.0.4",
                            "content": {"text/plain": {"schema": _STRING}},
                        },
                        **backend_errors,
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "this document",
                    **public,
                    "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
                }
            },
        },
        "components": {"schemas": copy.deepcopy(_SCHEMAS)},
    }
    if auth:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "a tenant's API key (atomr-key makes one)"}
        }
        doc["security"] = [{"bearer": []}]
    return doc
