"""Responses API request bodies in: ``POST /v1/responses`` as an `InferenceRequest`.

``instructions`` becomes a system message first; ``input`` (a string, or items) the chat after
it: ``message`` items (role user, assistant, system or developer; content a string or parts:
``input_text`` and ``input_image``, or for the assistant ``input_text``, ``output_text`` and
``refusal``, read as its text), ``function_call`` items (the assistant's tool calls, joined to
the assistant message before them), ``function_call_output`` items (tool messages) and
``reasoning`` items, which are left out of the chat as chat templates leave out earlier turns'
reasoning. Function ``tools`` (``name``, ``description``, ``parameters``, ``strict``),
``tool_choice``, ``parallel_tool_calls``, ``text.format`` (text, json_object, json_schema),
``reasoning.effort``, ``max_output_tokens``, ``temperature``, ``top_p``, ``metadata`` and
``user`` map to their `InferenceRequest` fields.

A field or item this wire does not serve (built-in tools, ``include``, ``truncation``,
``item_reference``...) is refused with an `InvalidRequestError` naming it the way OpenAI does
(``input[2].content[0].type``): nothing sent is dropped silently. The output items of a
response read as input items too, which is how a stored conversation is continued.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from atomr.core.errors import InferenceError, InvalidRequestError, quote
from atomr.core.messages import ContentPart, Message, ResponseFormat, Tool, ToolCall, ToolChoice
from atomr.core.types import InferenceRequest, SamplingParams
from atomr.http.bodies import decode_body

_MESSAGE_KEYS = frozenset({"type", "role", "content", "id", "status"})
_CALL_KEYS = frozenset({"type", "call_id", "name", "arguments", "id", "status"})
_CALL_OUTPUT_KEYS = frozenset({"type", "call_id", "output", "id", "status"})
_REASONING_KEYS = frozenset({"type", "id", "summary", "content", "encrypted_content", "status"})
_PART_KEYS = {
    "input_text": frozenset({"type", "text"}),
    "output_text": frozenset({"type", "text", "annotations", "logprobs"}),
    "refusal": frozenset({"type", "refusal"}),
    "input_image": frozenset({"type", "image_url", "detail", "file_id"}),
}
_TOOL_KEYS = frozenset({"type", "name", "description", "parameters", "strict"})
_FORMAT_KEYS = {
    "text": frozenset({"type"}),
    "json_object": frozenset({"type"}),
    "json_schema": frozenset({"type", "name", "schema", "strict"}),
}
# The request fields whose names differ on this wire, for errors found past parsing (a
# runtime's capability check names the fields of the chat request).
_WIRE_FIELDS = {
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
    "response_format.type": "text.format.type",
    "response_format.json_schema": "text.format.schema",
    "max_tokens": "max_output_tokens",
    "messages": "input",
}


class _Text(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: dict[str, Any] | None = None


class _Reasoning(BaseModel):
    model_config = ConfigDict(extra="forbid")
    effort: str | None = None


class ResponsesBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    input: str | list[Any]
    instructions: str | None = None
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: _Text | None = None
    reasoning: _Reasoning | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    metadata: dict[str, str] | None = None
    user: str | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1)


def parse(raw: bytes, default_max_tokens: int) -> tuple[ResponsesBody, InferenceRequest]:
    """The body and the request it asks for (without the conversation it may continue)."""
    _, body = decode_body(raw, ResponsesBody)
    tools = _tools(body.tools)
    params = SamplingParams(
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        default_max_tokens=default_max_tokens,
    )
    request = InferenceRequest(
        model=body.model,
        messages=_instructions(body) + input_messages(body.input),
        params=params,
        stream=body.stream,
        tools=tools,
        tool_choice=_tool_choice(body.tool_choice, tools),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=_response_format(body.text.format if body.text else None),
        reasoning_effort=body.reasoning.effort if body.reasoning else None,
        user=body.user,
        metadata=body.metadata,
    )
    return body, request


def continued(req: InferenceRequest, body: ResponsesBody, earlier: tuple[Message, ...]) -> InferenceRequest:
    """`req` following the `earlier` conversation: this request's instructions, then it, then the input."""
    n = len(_instructions(body))
    messages = req.messages or ()
    return dataclasses.replace(req, messages=messages[:n] + earlier + messages[n:])


def conversation(req: InferenceRequest, body: ResponsesBody) -> tuple[Message, ...]:
    """The request's chat without its instructions: what a later response continues."""
    return (req.messages or ())[len(_instructions(body)) :]


def in_wire_terms(exc: InferenceError) -> InferenceError:
    """`exc` naming its field as this wire does (``reasoning.effort``, not ``reasoning_effort``)."""
    name = _WIRE_FIELDS.get(exc.field or "")
    if name is None or exc.field is None:
        return exc
    return type(exc)(exc.message.replace(exc.field, name), field=name, retry_after=exc.retry_after, details=exc.details)


def _instructions(body: ResponsesBody) -> tuple[Message, ...]:
    return (Message("system", body.instructions),) if body.instructions is not None else ()


# ---- input items ----


def input_messages(raw: str | list[Any]) -> tuple[Message, ...]:
    """The chat messages of an ``input`` (or of a response's ``output`` items)."""
    if isinstance(raw, str):
        return (Message("user", raw),)
    if not raw:
        raise InvalidRequestError("input must be a string or a non-empty list of items", field="input")
    out: list[Message] = []
    for i, item in enumerate(raw):
        at = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidRequestError(f"{at} must be an object", field=at)
        kind = item.get("type", "message")
        if kind == "message":
            out.append(_message(item, at))
        elif kind == "function_call":
            _append_call(out, _call(item, at))
        elif kind == "function_call_output":
            out.append(_call_output(item, at))
        elif kind == "reasoning":
            _known_keys(item, _REASONING_KEYS, at)
        else:
            what = "message, function_call, function_call_output or reasoning"
            raise InvalidRequestError(
                f"{at}.type: a {quote(kind)} item is not served (only {what})", field=f"{at}.type"
            )
    return tuple(out)


def _message(item: Mapping[str, Any], at: str) -> Message:
    _known_keys(item, _MESSAGE_KEYS, at)
    role = item.get("role")
    if role not in ("user", "assistant", "system", "developer"):
        raise InvalidRequestError(f"{at}.role must be user, assistant, system or developer", field=f"{at}.role")
    role = "system" if role == "developer" else str(role)
    content = item.get("content")
    if isinstance(content, str):
        return Message(role, content)
    if not isinstance(content, list):
        raise InvalidRequestError(f"{at}.content must be a string or a list of parts", field=f"{at}.content")
    parts = tuple(_part(p, role, f"{at}.content[{j}]") for j, p in enumerate(content))
    if all(p.type == "text" for p in parts):
        return Message(role, "".join(p.text for p in parts))
    return Message(role, parts)


def _part(part: Any, role: str, at: str) -> ContentPart:
    kind = part.get("type") if isinstance(part, Mapping) else None
    taken = ("input_text", "output_text", "refusal") if role == "assistant" else ("input_text", "input_image")
    if not isinstance(kind, str) or kind not in taken:
        raise InvalidRequestError(f"{at}.type: {role} messages take {', '.join(taken)} parts", field=f"{at}.type")
    _known_keys(part, _PART_KEYS[kind], at)
    if kind == "input_image":
        return _image(part, at)
    key = "refusal" if kind == "refusal" else "text"
    text = part.get(key)
    if not isinstance(text, str):
        raise InvalidRequestError(f"{at}.{key} is required and must be a string", field=f"{at}.{key}")
    return ContentPart("text", text=text)


def _image(part: Mapping[str, Any], at: str) -> ContentPart:
    if part.get("file_id") is not None:
        raise InvalidRequestError(f"{at}.file_id: files are not served; give image_url", field=f"{at}.file_id")
    url = part.get("image_url")
    if not isinstance(url, str) or not url.startswith(("https://", "http://", "data:image/")):
        what = "is required: an http(s) URL or a data:image/... URL"
        raise InvalidRequestError(f"{at}.image_url {what}", field=f"{at}.image_url")
    detail = part.get("detail")
    if detail not in (None, "auto", "low", "high"):
        raise InvalidRequestError(f"{at}.detail must be auto, low or high", field=f"{at}.detail")
    return ContentPart("image_url", url=url, detail=detail)


def _call(item: Mapping[str, Any], at: str) -> ToolCall:
    _known_keys(item, _CALL_KEYS, at)
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise InvalidRequestError(f"{at}.{key} is required and must be a string", field=f"{at}.{key}")
    return ToolCall(item["call_id"], item["name"], item["arguments"])


def _append_call(out: list[Message], call: ToolCall) -> None:
    """The call joined to the assistant message just before it, or in an assistant message of its own."""
    last = out[-1] if out else None
    if last is not None and last.role == "assistant":
        out[-1] = dataclasses.replace(last, tool_calls=(*last.tool_calls, call))
    else:
        out.append(Message("assistant", None, tool_calls=(call,)))


def _call_output(item: Mapping[str, Any], at: str) -> Message:
    _known_keys(item, _CALL_OUTPUT_KEYS, at)
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequestError(f"{at}.call_id is required and must be a string", field=f"{at}.call_id")
    output = item.get("output")
    if isinstance(output, list) and all(isinstance(p, Mapping) and p.get("type") == "input_text" for p in output):
        output = "".join(str(p.get("text", "")) for p in output)
    if not isinstance(output, str):
        raise InvalidRequestError(f"{at}.output must be a string or input_text parts", field=f"{at}.output")
    return Message("tool", output, tool_call_id=call_id)


def _known_keys(item: Mapping[str, Any], known: frozenset[str], at: str) -> None:
    for key in item:
        if key not in known:
            raise InvalidRequestError(f"{at}.{key} is not taken by this endpoint", field=f"{at}.{key}")


# ---- tools, tool choice, text format ----


def _tools(raw: list[Any] | None) -> tuple[Tool, ...]:
    tools = tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(raw or ()))
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise InvalidRequestError("tools: function names must be unique", field="tools")
    return tools


def _tool(raw: Any, at: str) -> Tool:
    if not isinstance(raw, Mapping):
        raise InvalidRequestError(f"{at} must be an object", field=at)
    if raw.get("type") != "function":
        what = f"only function tools are served, not {raw.get('type')!r}"
        raise InvalidRequestError(f"{at}.type: {what}", field=f"{at}.type")
    _known_keys(raw, _TOOL_KEYS, at)
    name = raw.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= 64 or not all(c.isalnum() or c in "_-" for c in name):
        raise InvalidRequestError(f"{at}.name must be 1-64 letters, digits, _ or -", field=f"{at}.name")
    params, desc, strict = raw.get("parameters"), raw.get("description"), raw.get("strict")
    if params is not None and not isinstance(params, Mapping):
        raise InvalidRequestError(f"{at}.parameters must be a JSON schema object", field=f"{at}.parameters")
    if desc is not None and not isinstance(desc, str):
        raise InvalidRequestError(f"{at}.description must be a string", field=f"{at}.description")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequestError(f"{at}.strict must be true or false", field=f"{at}.strict")
    return Tool(name, desc, params, strict)


def _tool_choice(raw: str | dict[str, Any] | None, tools: tuple[Tool, ...]) -> ToolChoice | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        if raw not in ("none", "auto", "required"):
            raise InvalidRequestError("tool_choice must be none, auto, required or a function", field="tool_choice")
        choice = ToolChoice(raw)
    elif raw.get("type") != "function":
        what = f"only none, auto, required or a function are served, not {raw.get('type')!r}"
        raise InvalidRequestError(f"tool_choice.type: {what}", field="tool_choice.type")
    else:
        _known_keys(raw, frozenset({"type", "name"}), "tool_choice")
        if not any(t.name == raw.get("name") for t in tools):
            raise InvalidRequestError("tool_choice.name names no tool of tools", field="tool_choice.name")
        choice = ToolChoice("function", str(raw["name"]))
    if choice.mode == "required" and not tools:
        raise InvalidRequestError("tool_choice 'required' needs tools", field="tool_choice")
    return choice


def _response_format(raw: dict[str, Any] | None) -> ResponseFormat | None:
    if raw is None:
        return None
    kind = raw.get("type")
    if kind not in _FORMAT_KEYS:
        raise InvalidRequestError("text.format.type must be text, json_object or json_schema", field="text.format.type")
    _known_keys(raw, _FORMAT_KEYS[kind], "text.format")
    if kind == "text":
        return None  # plain text is what is answered without a format
    if kind == "json_object":
        return ResponseFormat("json_object")
    name, schema, strict = raw.get("name"), raw.get("schema"), raw.get("strict")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError("text.format.name is required", field="text.format.name")
    if not isinstance(schema, Mapping):
        raise InvalidRequestError("text.format.schema must be a JSON schema object", field="text.format.schema")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequestError("text.format.strict must be true or false", field="text.format.strict")
    return ResponseFormat("json_schema", schema=schema, name=name, strict=strict)
