"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: Anthropic's Messages wire over
any deployment (the answers' side is `atomr.http.anthropic_answers`).

A Messages body becomes the same `InferenceRequest` an OpenAI chat body does: ``system`` a system
message; content blocks text, image (base64 or URL), ``tool_use`` (assistant tool calls) and
``tool_result`` (tool messages, in their order); ``tools`` (``input_schema``) and ``tool_choice``
(auto / any / tool / none, ``disable_parallel_tool_use``); ``stop_sequences``, ``max_tokens``,
``temperature`` / ``top_p`` / ``top_k``, ``metadata.user_id`` (as ``user``).

The body also travels as sent (`InferenceRequest.wire`, ``wire_api`` "anthropic"): an `anthropic`
deployment forwards it as it came, so what atomr does not model reaches it too: fields such as
``thinking`` or ``service_tier`` (kept in `extra`), blocks such as ``thinking``, ``document`` or
non-text tool results (content parts kept as sent), the API's own tools (web search...).
Every other runtime refuses those by name (`atomr.core.runner.check_supported`). One thing is
dropped for them without a word: ``cache_control`` marks, a caching hint that changes no answer.

``count_tokens`` takes the same prompt without ``max_tokens`` and answers ``{"input_tokens": N}``
from the deployment's own tokenizer (local runtimes) or its provider (`anthropic`); runtimes that
cannot count refuse it, naming ``model``.

The caller's key may come as ``x-api-key`` (Anthropic's way) or ``Authorization: Bearer``;
``anthropic-version`` and ``anthropic-beta`` headers are accepted (a deployment passes them on
when its ``forward_headers`` names them).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atomr.core.errors import InvalidRequestError, quote
from atomr.core.messages import ContentPart, Message, Tool, ToolCall, ToolChoice
from atomr.core.types import InferenceRequest, SamplingParams
from atomr.http.anthropic_answers import MessagesStream, error_response, render, render_count
from atomr.http.bodies import decode_body
from atomr.http.chat import Dialect, serve
from atomr.http.plumbing import FrontContext, bearer

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"


class _Prompt(BaseModel):
    """What both ``/v1/messages`` and its ``count_tokens`` take. Fields atomr does not model
    (``thinking``, ``service_tier``, ``mcp_servers``...) are kept as sent: the anthropic runtime
    forwards them, every other runtime refuses them by name."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    messages: list[Any] = Field(min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None


class MessagesBody(_Prompt):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=8)
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None
    stream: bool = False


def parse(raw: bytes, default_max_tokens: int) -> tuple[MessagesBody, InferenceRequest]:
    data, body = decode_body(raw, MessagesBody)
    user = (body.metadata or {}).get("user_id")
    params = SamplingParams(
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        stop=tuple(body.stop_sequences or ()),
        default_max_tokens=default_max_tokens,
    )
    request = _request(data, body, params=params, stream=body.stream, user=str(user) if user is not None else None)
    return body, request


def parse_count(raw: bytes, default_max_tokens: int) -> tuple[_Prompt, InferenceRequest]:
    """A ``count_tokens`` body: the prompt of a Messages request, answered with its token count."""
    data, body = decode_body(raw, _Prompt)
    return body, _request(data, body, task="count_tokens")


def _request(data: dict[str, Any], body: _Prompt, **fields: Any) -> InferenceRequest:
    """The request of a Messages-wire body: its prompt typed, and the body as sent in `wire`."""
    tools, unmodeled = _tools(body.tools or [])
    choice, parallel = _tool_choice(body.tool_choice, tools)
    return InferenceRequest(
        model=body.model,
        messages=_system(body.system) + _messages(body.messages),
        tools=tools,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        extra={**(body.model_extra or {}), **unmodeled} or None,
        wire=data,
        wire_api="anthropic",
        **fields,
    )


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
        if not isinstance(content, list) or not content:
            raise InvalidRequestError(f"{where}.content must be a string or blocks", field=f"{where}.content")
        parts: list[ContentPart] = []
        calls: list[ToolCall] = []
        for j, block in enumerate(content):
            at = f"{where}.content[{j}]"
            if not isinstance(block, dict) or not isinstance(block.get("type"), str):
                raise InvalidRequestError(f"{at} must be a content block with a type", field=at)
            kind = block["type"]
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
                result = _result_content(block.get("content"), at)
                out.append(Message("tool", result, tool_call_id=block["tool_use_id"]))
            elif kind in ("text", "image", "tool_use", "tool_result"):
                raise InvalidRequestError(
                    f"{at}: a {quote(kind)} block is not taken in a {m['role']} message", field=at
                )
            else:  # thinking, document, search_result...: only the anthropic runtime takes them
                parts.append(ContentPart(kind, data=block))
        if parts or calls:
            out.append(Message(m["role"], tuple(parts) if parts else None, tool_calls=tuple(calls)))
    return tuple(out)


def _image_url(source: Any, at: str) -> str:
    if isinstance(source, dict) and source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    if isinstance(source, dict) and source.get("type") == "url" and isinstance(source.get("url"), str):
        return str(source["url"])
    raise InvalidRequestError(f"{at}.source must be a base64 or url image source", field=f"{at}.source")


def _result_content(content: Any, at: str) -> str | tuple[ContentPart, ...]:
    """A tool result's content: its text, or (images, documents...) its blocks as sent."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise InvalidRequestError(f"{at}.content must be a string or blocks", field=f"{at}.content")
    if all(b.get("type") == "text" for b in content):
        return "".join(str(b.get("text", "")) for b in content)
    return tuple(ContentPart(str(b.get("type")), data=b) for b in content)


def _tools(raw: list[dict[str, Any]]) -> tuple[tuple[Tool, ...], dict[str, Any]]:
    """Client tools typed; the API's own tools (web search, code execution...) kept as sent,
    keyed by where they are (``tools[2]``), for the anthropic runtime alone."""
    typed: list[Tool] = []
    unmodeled: dict[str, Any] = {}
    for i, tool in enumerate(raw):
        if tool.get("type", "custom") == "custom":
            typed.append(_tool(tool, i))
        else:
            unmodeled[f"tools[{i}]"] = tool
    return tuple(typed), unmodeled


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
    if not isinstance(kind, str) or kind not in modes:
        raise InvalidRequestError("tool_choice.type must be auto, any, tool or none", field="tool_choice.type")
    return ToolChoice(modes[str(kind)]), parallel


def api_key(request: Request) -> str | None:
    return request.headers.get("x-api-key") or bearer(request)


MESSAGES_DIALECT = Dialect(MESSAGES, parse, render, MessagesStream, error_response, api_key)
COUNT_DIALECT = Dialect(COUNT_TOKENS, parse_count, render_count, MessagesStream, error_response, api_key)


def routes(ctx: FrontContext) -> list[Route]:
    async def messages(request: Request) -> Response:
        return await serve(ctx, request, MESSAGES_DIALECT)

    async def count_tokens(request: Request) -> Response:
        return await serve(ctx, request, COUNT_DIALECT)

    return [Route(MESSAGES, messages, methods=["POST"]), Route(COUNT_TOKENS, count_tokens, methods=["POST"])]
