"""Chat messages and the agent features of a request: content parts, tool calls, tools, tool choice
and response formats, as frozen values; and their reading from OpenAI-shaped dicts.

The OpenAI chat format is the lingua franca: `Message.from_openai` reads one message as OpenAI
sends it (what the HTTP front and `Client` receive) and `Message.to_openai` writes it back,
losslessly for everything modelled here, so OpenAI-wire runtimes and the engines whose chat
templates take OpenAI messages (vLLM, mistral.rs, ORT) share one rendering. Every problem is an
`InvalidRequestError` naming the element the way OpenAI does (``messages[1].tool_calls[0].id``).

JSON values (a tool's parameter schema, a response format's schema) are kept as the plain dicts
they came as: atomr validates their shape, not their contents, and forwards them unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from atomr.core.errors import InvalidRequestError

ROLES = ("system", "user", "assistant", "tool")
_MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})
TOOL_CHOICE_MODES = ("none", "auto", "required", "function")
RESPONSE_FORMATS = ("text", "json_object", "json_schema", "regex")


@dataclass(frozen=True, slots=True)
class ContentPart:
    """One part of a message's content: ``text``, or ``image_url`` (an https or ``data:`` URL).
    Any other type (``input_audio``, ``file``...) keeps its `data` as sent: only OpenAI-wire
    runtimes take those, every other runtime refuses them by name."""

    type: str
    text: str = ""
    url: str = ""
    detail: str | None = None
    data: Mapping[str, Any] | None = None

    def to_openai(self) -> dict[str, Any]:
        if self.data is not None:
            return dict(self.data)
        if self.type == "text":
            return {"type": "text", "text": self.text}
        image: dict[str, Any] = {"url": self.url}
        if self.detail is not None:
            image["detail"] = self.detail
        return {"type": "image_url", "image_url": image}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A function call the model made: `arguments` is the JSON text as the model wrote it."""

    id: str
    name: str
    arguments: str

    def to_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}

    def parsed_arguments(self) -> Any:
        """The arguments as JSON values (raises ValueError when the model wrote invalid JSON)."""
        return json.loads(self.arguments) if self.arguments else {}

    def arguments_object(self, field_name: str) -> dict[str, Any]:
        """The arguments as a JSON object, for APIs that take them as one; InvalidRequestError
        naming `field_name` when they are not valid JSON or not an object."""
        try:
            args = self.parsed_arguments()
        except ValueError as exc:
            raise InvalidRequestError(f"{field_name} is not valid JSON: {exc}", field=field_name) from None
        if not isinstance(args, dict):
            raise InvalidRequestError(f"{field_name} must be a JSON object", field=field_name)
        return args


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a streamed tool call, as OpenAI streams them: the first piece of call `index`
    carries its id and name, later pieces more of its arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index}
        function: dict[str, Any] = {"arguments": self.arguments}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
        if self.name is not None:
            function["name"] = self.name
        out["function"] = function
        return out


def merge_tool_deltas(deltas: Sequence[ToolCallDelta]) -> tuple[ToolCallDelta, ...]:
    """Consecutive pieces of the same call joined (what chunk coalescing sends in one message)."""
    out: list[ToolCallDelta] = []
    for d in deltas:
        last = out[-1] if out else None
        if last is not None and last.index == d.index and d.id is None and d.name is None:
            out[-1] = ToolCallDelta(last.index, last.id, last.name, last.arguments + d.arguments)
        else:
            out.append(d)
    return tuple(out)


def assemble_tool_calls(deltas: Sequence[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """Whole calls from the pieces of a stream, in order of their index."""
    calls: dict[int, list[str]] = {}
    for d in deltas:
        parts = calls.setdefault(d.index, ["", "", ""])
        parts[0] = parts[0] or (d.id or "")
        parts[1] = parts[1] or (d.name or "")
        parts[2] += d.arguments
    return tuple(ToolCall(id_, name, args) for _, (id_, name, args) in sorted(calls.items()))


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. `content` is text, a tuple of parts, or None (an assistant message that
    only calls tools). ``developer`` messages are read as ``system``."""

    role: str
    content: str | tuple[ContentPart, ...] | None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None  # a tool message: the call it answers
    extra: Mapping[str, Any] | None = None  # fields not modelled here, as sent (OpenAI-wire runtimes only)

    @property
    def text(self) -> str:
        """The message's text (its text parts joined; images left out)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content if p.type == "text")

    @property
    def images(self) -> tuple[ContentPart, ...]:
        if isinstance(self.content, tuple):
            return tuple(p for p in self.content if p.type == "image_url")
        return ()

    def to_openai(self) -> dict[str, Any]:
        content: Any = self.content
        if isinstance(content, tuple):
            content = [p.to_openai() for p in content]
        out: dict[str, Any] = {"role": self.role, "content": content}
        if self.name is not None:
            out["name"] = self.name
        if self.tool_calls:
            out["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.extra:
            out.update(self.extra)
        return out

    def for_template(self) -> dict[str, Any]:
        """The message as a chat template takes it: `to_openai` with the content as plain text
        (local engines take text only; an assistant message that only calls tools has "")."""
        out = self.to_openai()
        out["content"] = self.text
        return out

    @staticmethod
    def from_openai(raw: object, where: str) -> Message:
        """A message from an OpenAI-shaped dict; errors name `where` (``messages[2]``) and the field."""
        if isinstance(raw, Message):
            return raw
        if not isinstance(raw, Mapping):
            raise InvalidRequestError(f"{where} must be an object with role and content", field=where)
        role = raw.get("role")
        _check(isinstance(role, str), f"{where}.role", "is required and must be a string")
        role = "system" if role == "developer" else role
        _check(role in ROLES, f"{where}.role", f"must be one of system, developer, {', '.join(ROLES[1:])}")
        name = raw.get("name")
        _check(name is None or isinstance(name, str), f"{where}.name", "must be a string")
        calls = _tool_calls(raw.get("tool_calls"), f"{where}.tool_calls") if role == "assistant" else ()
        if role != "assistant" and raw.get("tool_calls") is not None:
            raise InvalidRequestError(f"{where}.tool_calls is only for assistant messages", field=f"{where}.tool_calls")
        content = _content(raw.get("content"), f"{where}.content", allow_none=role == "assistant")
        call_id = raw.get("tool_call_id")
        if role == "tool":
            _check(isinstance(call_id, str) and call_id != "", f"{where}.tool_call_id", "is required for tool messages")
        elif call_id is not None:
            raise InvalidRequestError(f"{where}.tool_call_id is only for tool messages", field=f"{where}.tool_call_id")
        extra = {k: v for k, v in raw.items() if k not in _MESSAGE_FIELDS and v is not None}
        return Message(str(role), content, name, calls, call_id, extra or None)


def _content(raw: object, where: str, allow_none: bool) -> str | tuple[ContentPart, ...] | None:
    if raw is None and allow_none:
        return None
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise InvalidRequestError(f"{where} is required and must be a string or a list of parts", field=where)
    parts: list[ContentPart] = []
    for i, part in enumerate(raw):
        at = f"{where}[{i}]"
        if not isinstance(part, Mapping):
            raise InvalidRequestError(f"{at} must be an object", field=at)
        kind = part.get("type")
        if kind == "text":
            _check(isinstance(part.get("text"), str), f"{at}.text", "is required and must be a string")
            parts.append(ContentPart("text", text=part["text"]))
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            _check(isinstance(url, str), f"{at}.image_url.url", "is required and must be a string")
            _check(
                str(url).startswith(("https://", "http://", "data:image/")),
                f"{at}.image_url.url",
                "must be an http(s) URL or a data:image/... URL",
            )
            detail = image.get("detail") if isinstance(image, Mapping) else None
            _check(detail in (None, "auto", "low", "high"), f"{at}.image_url.detail", "must be auto, low or high")
            parts.append(ContentPart("image_url", url=str(url), detail=detail))
        else:
            _check(isinstance(kind, str) and kind != "", f"{at}.type", "is required")
            parts.append(ContentPart(str(kind), data=part))
    return tuple(parts)


def _tool_calls(raw: object, where: str) -> tuple[ToolCall, ...]:
    if raw is None:
        return ()
    calls: list[ToolCall] = []
    for i, item in enumerate(_list(raw, where, "must be a list of tool calls")):
        at = f"{where}[{i}]"
        call = _obj(item, at, "must be an object")
        _check(isinstance(call.get("id"), str), f"{at}.id", "is required and must be a string")
        _check(call.get("type", "function") == "function", f"{at}.type", "must be 'function'")
        fn = _obj(call.get("function"), f"{at}.function", "is required and must be an object")
        _check(isinstance(fn.get("name"), str), f"{at}.function.name", "is required and must be a string")
        args = fn.get("arguments", "")
        _check(isinstance(args, str), f"{at}.function.arguments", "must be a string (JSON text)")
        calls.append(ToolCall(call["id"], fn["name"], args))
    return tuple(calls)


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is its JSON schema as the caller sent it."""

    name: str
    description: str | None = None
    parameters: Mapping[str, Any] | None = None
    strict: bool | None = None

    def to_openai(self) -> dict[str, Any]:
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        if self.parameters is not None:
            fn["parameters"] = self.parameters
        if self.strict is not None:
            fn["strict"] = self.strict
        return {"type": "function", "function": fn}

    @property
    def schema(self) -> Mapping[str, Any]:
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """none / auto / required, or ``function`` with the one function's `name`."""

    mode: str
    name: str | None = None

    def to_openai(self) -> Any:
        if self.mode == "function":
            return {"type": "function", "function": {"name": self.name}}
        return self.mode


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """text, json_object, json_schema (`schema`, `name`, `strict`) or regex (`pattern`, an atomr
    extension honoured by local engines)."""

    type: str
    schema: Mapping[str, Any] | None = None
    name: str | None = None
    strict: bool | None = None
    pattern: str | None = None

    def to_openai(self) -> dict[str, Any]:
        if self.type == "json_schema":
            spec: dict[str, Any] = {"name": self.name or "response", "schema": self.schema}
            if self.strict is not None:
                spec["strict"] = self.strict
            return {"type": "json_schema", "json_schema": spec}
        if self.type == "regex":
            return {"type": "regex", "pattern": self.pattern}
        return {"type": self.type}


def tools_from_openai(raw: object) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    tools: list[Tool] = []
    for i, item in enumerate(_list(raw, "tools", "must be a list of tools")):
        at = f"tools[{i}]"
        tool = _obj(item, at, "must be an object")
        _check(tool.get("type") == "function", f"{at}.type", "must be 'function' (the only tool type served)")
        fn = _obj(tool.get("function"), f"{at}.function", "is required and must be an object")
        name = fn.get("name")
        _check(
            isinstance(name, str) and 0 < len(name) <= 64 and all(c.isalnum() or c in "_-" for c in name),
            f"{at}.function.name",
            "must be 1-64 letters, digits, _ or -",
        )
        params = fn.get("parameters")
        _check(
            params is None or isinstance(params, Mapping), f"{at}.function.parameters", "must be a JSON schema object"
        )
        desc = fn.get("description")
        _check(desc is None or isinstance(desc, str), f"{at}.function.description", "must be a string")
        strict = fn.get("strict")
        _check(strict is None or isinstance(strict, bool), f"{at}.function.strict", "must be true or false")
        tools.append(Tool(str(name), desc, params, strict))
    names = [t.name for t in tools]
    _check(len(set(names)) == len(names), "tools", "function names must be unique")
    return tuple(tools)


def tool_choice_from_openai(raw: object, tools: Sequence[Tool]) -> ToolChoice | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        _check(raw in ("none", "auto", "required"), "tool_choice", "must be none, auto, required or a function")
        choice = ToolChoice(raw)
    else:
        named = _obj(raw, "tool_choice", "must be none, auto, required or name a function")
        _check(named.get("type") == "function", "tool_choice.type", "must be 'function'")
        fn = named.get("function")
        name = fn.get("name") if isinstance(fn, Mapping) else None
        _check(isinstance(name, str), "tool_choice.function.name", "is required")
        choice = ToolChoice("function", name)
    if choice.mode in ("required", "function"):
        _check(bool(tools), "tool_choice", f"{choice.mode!r} needs tools")
    if choice.name is not None:
        _check(any(t.name == choice.name for t in tools), "tool_choice.function.name", "names no tool of tools")
    return choice


def response_format_from_openai(raw: object) -> ResponseFormat | None:
    if raw is None:
        return None
    fmt = _obj(raw, "response_format", "must be an object")
    kind = fmt.get("type")
    _check(kind in RESPONSE_FORMATS, "response_format.type", f"must be one of {', '.join(RESPONSE_FORMATS)}")
    if kind == "json_schema":
        spec = _obj(fmt.get("json_schema"), "response_format.json_schema", "is required and must be an object")
        schema = _obj(spec.get("schema"), "response_format.json_schema.schema", "must be a JSON schema object")
        name = spec.get("name")
        _check(isinstance(name, str) and name != "", "response_format.json_schema.name", "is required")
        strict = spec.get("strict")
        _check(strict is None or isinstance(strict, bool), "response_format.json_schema.strict", "must be a boolean")
        return ResponseFormat("json_schema", schema=schema, name=name, strict=strict)
    if kind == "regex":
        pattern = fmt.get("pattern")
        _check(isinstance(pattern, str) and pattern != "", "response_format.pattern", "is required")
        return ResponseFormat("regex", pattern=pattern)
    return ResponseFormat(str(kind))


def _obj(value: object, field_name: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequestError(f"{field_name} {what}", field=field_name)
    return value


def _list(value: object, field_name: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequestError(f"{field_name} {what}", field=field_name)
    return value


def _check(ok: bool, field_name: str, what: str) -> None:
    if not ok:
        raise InvalidRequestError(f"{field_name} {what}", field=field_name)
