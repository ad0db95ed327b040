"""``POST /v1/messages``: Anthropic's Messages wire over any deployment.

A Messages body becomes the same `InferenceRequest` an OpenAI chat body does: ``system`` a system
message; content blocks text, image (base64 or URL), ``tool_use`` (assistant tool calls) and
``tool_result`` (tool messages, in their order); ``tools`` (``input_schema``) and ``tool_choice``
(auto / any / tool / none, ``disable_parallel_tool_use``); ``stop_sequences``, ``max_tokens``,
``temperature`` / ``top_p`` / ``top_k``, ``metadata.user_id`` (as ``user``). A field this wire
does not take over every runtime (``thinking``, ``service_tier``...) is refused by name.

Answers are Messages: text and ``tool_use`` content blocks, ``stop_reason`` (end_turn,
max_tokens, tool_use, refusal) and usage; streams are Anthropic's events (``message_start``,
``content_block_start`` / ``_delta`` (``text_delta``, ``input_json_delta``) / ``_stop``,
``message_delta`` with stop_reason and usage, ``message_stop``). Errors are
``{"type": "error", "error": {"type", "message"}}`` with Anthropic's statuses. The caller's key
may come as ``x-api-key`` (Anthropic's way) or ``Authorization: Bearer``.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atomr.core.errors import InferenceError, InvalidRequestError
from atomr.core.messages import ContentPart, Message, Tool, ToolCall, ToolChoice
from atomr.core.types import Chunk, InferenceRequest, InferenceResult, SamplingParams, Usage
from atomr.http.bodies import decode_body
from atomr.http.chat import Dialect, serve
from atomr.http.plumbing import FrontContext, bearer

MESSAGES = "/v1/messages"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


class MessagesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    max_tokens: int = Field(ge=1)
    messages: list[Any] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = Field(default=None, max_length=8)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    stream: bool = False


def parse(raw: bytes, default_max_tokens: int) -> tuple[MessagesBody, InferenceRequest]:
    _, body = decode_body(raw, MessagesBody)
    messages = _system(body.system) + _messages(body.messages)
    tools = tuple(_tool(t, i) for i, t in enumerate(body.tools or ()))
    choice, parallel = _tool_choice(body.tool_choice, tools)
    user = (body.metadata or {}).get("user_id")
    params = SamplingParams(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=tuple(body.stop_sequences or ()),
        default_max_tokens=default_max_tokens,
    )
    request = InferenceRequest(
        model=body.model,
        messages=messages,
        params=params,
        stream=body.stream,
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        user=str(user) if user is not None else None,
    )
    return body, request


def _system(system: str | list[dict[str, Any]] | None) -> tuple[Message, ...]:
    if system is None:
        return ()
    if isinstance(system, str):
        return (Message("system", system),)
    texts = [b.get("text") for b in system if b.get("type") == "text"]
    if len(texts) != len(system) or not all(isinstance(t, str) for t in texts):
        raise InvalidRequestError("system blocks must be text blocks", field="system")
    return (Message("system", "".join(str(t) for t in texts)),)


def _messages(raw: list[Any]) -> tuple[Message, ...]:
    out: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise InvalidRequestError(f"{where}.role must be user or assistant", field=f"{where}.role")
        content = m.get("content")
        if isinstance(content, str):
            out.append(Message(m["role"], content))
            continue
        if not isinstance(content, list):
            raise InvalidRequestError(f"{where}.content must be a string or blocks", field=f"{where}.content")
        parts: list[ContentPart] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text" and isinstance(block.get("text"), str):
                parts.append(ContentPart("text", text=block["text"]))
            elif kind == "image" and m["role"] == "user":
                parts.append(ContentPart("image_url", url=_image_url(block.get("source"), at)))
            elif kind == "tool_use" and m["role"] == "assistant":
                if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                    raise InvalidRequestError(f"{at} needs an id and a name", field=at)
                calls.append(ToolCall(block["id"], block["name"], json.dumps(block.get("input") or {})))
            elif kind == "tool_result" and m["role"] == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise InvalidRequestError(f"{at}.tool_use_id is required", field=f"{at}.tool_use_id")
                out.append(Message("tool", _result_text(block.get("content"), at), tool_call_id=block["tool_use_id"]))
            else:
                raise InvalidRequestError(f"{at}: a {kind!r} block is not taken in a {m['role']} message", field=at)
        if parts or calls:
            out.append(Message(m["role"], tuple(parts) if parts else None, tool_calls=tuple(calls)))
    return tuple(out)


def _image_url(source: Any, at: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise InvalidRequestError(f"{at}.source must be a base64 or url image source", field=f"{at}.source")


def _result_text(content: Any, at: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(b, dict) and b.get("type") == "text" for b in content):
        return "".join(str(b.get("text", "")) for b in content)
    raise InvalidRequestError(f"{at}.content: tool results are taken as text", field=f"{at}.content")


def _tool(raw: dict[str, Any], i: int) -> Tool:
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"tools[{i}].name is required", field=f"tools[{i}].name")
    schema = raw.get("input_schema")
    if not isinstance(schema, dict):
        raise InvalidRequestError(f"tools[{i}].input_schema must be a JSON schema", field=f"tools[{i}].input_schema")
    desc = raw.get("description")
    return Tool(name, desc if isinstance(desc, str) else None, schema)


def _tool_choice(raw: dict[str, Any] | None, tools: tuple[Tool, ...]) -> tuple[ToolChoice | None, bool | None]:
    if raw is None:
        return None, None
    parallel = False if raw.get("disable_parallel_tool_use") else None
    kind = raw.get("type")
    if kind == "tool":
        name = raw.get("name")
        if not any(t.name == name for t in tools):
            raise InvalidRequestError("tool_choice.name names no tool of tools", field="tool_choice.name")
        return ToolChoice("function", str(name)), parallel
    modes = {"auto": "auto", "any": "required", "none": "none"}
    if kind not in modes:
        raise InvalidRequestError("tool_choice.type must be auto, any, tool or none", field="tool_choice.type")
    return ToolChoice(modes[str(kind)]), parallel


# ---- answers ----


def _message_id(req: InferenceRequest) -> str:
    return f"msg_{req.request_id}"


def _usage(u: Usage | None) -> dict[str, int]:
    u = u or Usage()
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}


def render(req: InferenceRequest, body: Any, result: InferenceResult) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if result.text:
        content.append({"type": "text", "text": result.text})
    for call in result.tool_calls:
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments_object("tool")})
    return {
        "id": _message_id(req),
        "type": "message",
        "role": "assistant",
        "model": body.model,
        "content": content,
        "stop_reason": STOP_REASONS.get(result.finish_reason, "end_turn"),
        "stop_sequence": None,
        "usage": _usage(result.usage),
    }


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


class MessagesStream:
    """Anthropic's stream events for one answer: one content block per run of text and per tool call."""

    def __init__(self, req: InferenceRequest, body: Any) -> None:
        self.req, self.model = req, body.model
        self._block = -1  # index of the open block
        self._open: str | None = None  # "text", or the tool call index as "call:<k>"
        self._finish = "stop"

    def start(self) -> bytes:
        message = {
            "id": _message_id(self.req),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": message})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"index": self._block})

    def _begin(self, name: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block += 1
        self._open = name
        return out + _event("content_block_start", {"index": self._block, "content_block": block})

    def chunk(self, c: Chunk) -> bytes:
        if c.index != 0:
            return b""  # Messages has one choice
        out = b""
        if c.text:
            if self._open != "text":
                out += self._begin("text", {"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": c.text}
            out += _event("content_block_delta", {"index": self._block, "delta": delta})
        for d in c.tool_calls:
            name = f"call:{d.index}"
            if self._open != name:
                block = {"type": "tool_use", "id": d.id or "", "name": d.name or "", "input": {}}
                out += self._begin(name, block)
            if d.arguments:
                delta = {"type": "input_json_delta", "partial_json": d.arguments}
                out += _event("content_block_delta", {"index": self._block, "delta": delta})
        if c.finish_reason:
            self._finish = c.finish_reason
        return out

    def end(self, usage: Usage | None) -> bytes:
        delta = {"stop_reason": STOP_REASONS.get(self._finish, "end_turn"), "stop_sequence": None}
        out = self._close()
        out += _event("message_delta", {"delta": delta, "usage": {"output_tokens": _usage(usage)["output_tokens"]}})
        return out + _event("message_stop", {})

    def error(self, exc: InferenceError) -> bytes:
        return _event("error", {"error": error_body(exc)["error"]})


def error_body(exc: InferenceError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(exc.http_status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def error_response(exc: InferenceError) -> Response:
    headers = {"retry-after": str(max(1, round(exc.retry_after + 0.499)))} if exc.retry_after else None
    return JSONResponse(error_body(exc), status_code=exc.http_status, headers=headers)


def api_key(request: Request) -> str | None:
    return request.headers.get("x-api-key") or bearer(request)


MESSAGES_DIALECT = Dialect(MESSAGES, parse, render, MessagesStream, error_response, api_key)


def routes(ctx: FrontContext) -> list[Route]:
    async def messages(request: Request) -> Response:
        return await serve(ctx, request, MESSAGES_DIALECT)

    return [Route(MESSAGES, messages, methods=["POST"])]
