"""Structured outputs and tool calls on local engines: what a request's `response_format`, `tools`
and `tool_choice` make of its generation (`OutputPlan`), and the text-to-tool-call streams that
turn the generated text into tool-call chunks (`with_tool_calls`). Engine-free: each engine
applies the plan's `Guidance` its own way (ORT GenAI's `GeneratorParams.set_guidance`, vLLM's
structured outputs with its guidance backend; both are llguidance inside).

Guidance kinds: "json_schema" for response_format json_schema / json_object and for a forced
tool call (its arguments under the function's parameter schema), "regex" for response_format
regex, "lark_grammar" for forced calls in a model's tagged format. JSON is generated without
free whitespace, spaced as Python's `json.dumps` spaces it (`", "`, `": "`; llguidance's
`x-guidance` options, unless the caller's schema sets x-guidance itself): a small model otherwise
fills the allowed whitespace with newlines until max_tokens.

Tool calls:
- tool_choice a named function, or "required" with one tool: the whole answer is that function's
  arguments, generated under its parameter schema (`arguments_schema`: the declared parameters
  only, unless the schema says `additionalProperties`); streamed as call 0 (id, name, then argument
  pieces), finish_reason "tool_calls". When the model's chat template writes tool calls as
  `<tool_call>{"name": ..., "arguments": ...}` (the built-in model's), the prompt is extended with
  that opening up to the arguments (`prefill`), so the model writes them where it learnt to.
- "required" with several tools: the answer is `{"name": <one of them>, "arguments": {...}}`
  under a schema `anyOf` over the tools' calls; the name is read once the generation reaches the
  arguments, which then stream as above.
- "auto" (or tool_choice unset with tools): the chat template renders the tools; the model writes
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` when it calls one (the format the
  built-in tiny-llama was trained on). The text is scanned as it streams; text that may be the
  start of a tag is held back until it is known not to be one; each complete call whose name is
  one of the request's tools and whose JSON parses becomes a tool call (anything else stays text).
- "none": the tools are not shown to the model and nothing is parsed.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from atomr.core.errors import InvalidRequestError
from atomr.core.messages import Tool, ToolCallDelta
from atomr.core.types import Chunk, InferenceRequest

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"
# A chat template holding this writes tool calls in the format AutoStream reads (`prefill` uses it).
TAGGED_CALL = '<tool_call>{"name": "'
CALL_END = "}" + TOOL_CLOSE  # closes the {"name": ..., "arguments": ...} object and the tag
JSON_SPACING = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


@dataclass(frozen=True, slots=True)
class Guidance:
    """What `GeneratorParams.set_guidance` takes, and the request field it comes from."""

    kind: str  # "json_schema" | "regex" | "lark_grammar"
    data: str
    field: str


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """How a request's output is constrained and read.

    tools_mode: "none" (plain text), "arguments" (the text is `function`'s arguments), "call" (the
    text is {"name", "arguments"}), "auto" (tool calls in <tool_call> tags within the text).
    template_tools: the tools the chat template renders.
    """

    guidance: Guidance | None = None
    tools_mode: str = "none"
    function: str | None = None
    template_tools: tuple[Tool, ...] = ()
    prefill: str = ""  # text appended to the prompt, as if the model had written it
    suffix: str = ""  # text that ends a forced call's generation and is not part of its arguments


PLAIN = OutputPlan()


def compact_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` with llguidance told to write JSON without free whitespace (unless it says otherwise)."""
    out = dict(schema)
    out.setdefault("x-guidance", dict(JSON_SPACING))
    return out


def _schema_guidance(schema: Mapping[str, Any], field: str) -> Guidance:
    try:
        data = json.dumps(compact_schema(schema))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"the JSON schema cannot be serialised: {exc}", field=field) from None
    return Guidance("json_schema", data, field)


def _format_guidance(request: InferenceRequest) -> Guidance | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return _schema_guidance({"type": "object"}, "response_format")
    if fmt.type == "json_schema":
        if not isinstance(fmt.schema, Mapping):
            raise InvalidRequestError("response_format json_schema needs a schema", field="response_format.json_schema")
        return _schema_guidance(fmt.schema, "response_format.json_schema")
    if fmt.type == "regex":
        if not fmt.pattern:
            raise InvalidRequestError("response_format regex needs a pattern", field="response_format.pattern")
        return Guidance("regex", fmt.pattern, "response_format.pattern")
    raise InvalidRequestError(f"unknown response_format type {fmt.type!r}", field="response_format.type")


def arguments_schema(tool: Tool) -> dict[str, Any]:
    """The schema a forced call's arguments are generated under: the tool's, with only its declared
    parameters unless it says `additionalProperties` itself (models write a function's parameters;
    a small one held to a schema that allows any key writes keys until max_tokens)."""
    schema = dict(tool.schema)
    if isinstance(schema.get("properties"), Mapping) and "additionalProperties" not in schema:
        schema["additionalProperties"] = False
    return schema


def _call_schema(tool: Tool) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": arguments_schema(tool)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def _lark_json(schema: Mapping[str, Any]) -> str:
    try:
        return "%json " + json.dumps(compact_schema(schema))
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"a tool's parameter schema cannot be serialised: {exc}", field="tools") from None


def _forced(tool: Tool, tools: tuple[Tool, ...], tagged_calls: bool) -> OutputPlan:
    if not tagged_calls:
        return OutputPlan(_schema_guidance(arguments_schema(tool), "tools"), "arguments", tool.name, tools)
    # The model writes the arguments after the opening it learnt, and closes the call as it learnt
    # to (its tokens may join the arguments' last brace and the closing tag): a grammar that ends
    # in the closing, which the tool stream then drops.
    grammar = f"%llguidance {{}}\nstart: args {json.dumps(CALL_END)}\nargs: {_lark_json(arguments_schema(tool))}\n"
    prefill = TAGGED_CALL + tool.name + '", "arguments": '
    return OutputPlan(Guidance("lark_grammar", grammar, "tools"), "arguments", tool.name, tools, prefill, CALL_END)


def _any_call(tools: tuple[Tool, ...], tagged_calls: bool) -> OutputPlan:
    if not tagged_calls:
        schema = {"anyOf": [_call_schema(t) for t in tools]}
        return OutputPlan(_schema_guidance(schema, "tools"), "call", None, tools, suffix="}")
    # Prefilled up to the name: the grammar picks a name, then that tool's arguments and the closing.
    rules = [f"start: {' | '.join(f'call_{i}' for i in range(len(tools)))}"]
    for i, tool in enumerate(tools):
        opening = json.dumps(tool.name + '", "arguments": ')
        rules += [
            f"call_{i}: {opening} args_{i} {json.dumps(CALL_END)}",
            f"args_{i}: {_lark_json(arguments_schema(tool))}",
        ]
    grammar = "%llguidance {}\n" + "\n".join(rules) + "\n"
    return OutputPlan(Guidance("lark_grammar", grammar, "tools"), "call", None, tools, TAGGED_CALL, CALL_END)


def output_plan(request: InferenceRequest, tagged_calls: bool = False) -> OutputPlan:
    """The plan for `request`; InvalidRequestError (naming the field) for what cannot be honoured.

    tagged_calls: the model's chat template writes tool calls as `TAGGED_CALL`... (then a forced
    call is prefilled with that opening)."""
    tools = request.tools
    choice = request.tool_choice
    mode = choice.mode if choice is not None else ("auto" if tools else "none")
    if mode in ("required", "function") and not tools:
        raise InvalidRequestError(f"tool_choice {mode!r} needs tools", field="tool_choice")
    if mode == "function":
        by_name = {t.name: t for t in tools}
        tool = by_name.get(choice.name or "") if choice is not None else None
        if tool is None:
            name = choice.name if choice is not None else None
            raise InvalidRequestError(f"tool_choice names {name!r}, which is not among the tools", field="tool_choice")
        return _forced(tool, tools, tagged_calls)
    if mode == "required":
        if len(tools) == 1:
            return _forced(tools[0], tools, tagged_calls)
        return _any_call(tools, tagged_calls)
    guidance = _format_guidance(request)
    if mode == "auto" and tools:
        # With guidance the answer must match the format, which leaves no room for a tool call.
        return OutputPlan(guidance, "none" if guidance is not None else "auto", None, tools)
    return OutputPlan(guidance)


# -- text -> tool calls ------------------------------------------------------------------------


def call_id(request: InferenceRequest, k: int) -> str:
    return f"call_{request.request_id[:12]}_{k}"


def whole_call(request: InferenceRequest, k: int, name: str, arguments: str) -> tuple[ToolCallDelta, ...]:
    """A call read in one piece, as OpenAI streams it: id and name first, then the arguments."""
    head = ToolCallDelta(k, call_id(request, k), name, "")
    return (head, ToolCallDelta(k, arguments=arguments)) if arguments else (head,)


class ToolStream:
    """Reads generated text (after stop sequences) and splits it into text and tool-call deltas."""

    calls = 0  # tool calls started

    def feed(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        raise NotImplementedError

    def finish(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """What is still held back, at the end of the generation."""
        raise NotImplementedError


class ArgumentsStream(ToolStream):
    """All text is the arguments of one call of a known function, then `suffix` (which the
    grammar adds to close the call as the model learnt to; held back and dropped)."""

    def __init__(self, request: InferenceRequest, name: str, suffix: str = "") -> None:
        self._header = ToolCallDelta(0, call_id(request, 0), name, "")
        self._suffix = suffix
        self._held = ""

    def _start(self) -> tuple[ToolCallDelta, ...]:
        if self.calls:
            return ()
        self.calls = 1
        return (self._header,)

    def feed(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        head = self._start()
        buf = self._held + text
        cut = max(0, len(buf) - len(self._suffix))
        piece, self._held = buf[:cut], buf[cut:]
        return "", (*head, ToolCallDelta(0, arguments=piece)) if piece else head

    def finish(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        head = self._start()
        held, self._held = self._held, ""
        if self._suffix and held.endswith(self._suffix):
            held = held[: -len(self._suffix)]
        return "", (*head, ToolCallDelta(0, arguments=held)) if held else head


_CALL_PREFIX = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"arguments"\s*:\s*(?=\S)')


class CallStream(ToolStream):
    """The text is one `{"name": ..., "arguments": {...}}` object (tool_choice required, several
    tools), its first characters `start` already in the prompt, then `suffix` (the object's
    closing brace, and the closing tag where the grammar adds it). The arguments stream once the
    name is known; what may be the suffix is held back, and dropped at the end."""

    def __init__(self, request: InferenceRequest, start: str = "", suffix: str = "}") -> None:
        self._request = request
        self._buf = start
        self._start = len(start)
        self._suffix = suffix
        self._in_args = False

    def feed(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        self._buf += text
        head: tuple[ToolCallDelta, ...] = ()
        if not self._in_args:
            match = _CALL_PREFIX.match(self._buf)
            if match is None:
                return "", ()
            self._in_args = True
            self.calls = 1
            head = (ToolCallDelta(0, call_id(self._request, 0), json.loads(f'"{match.group(1)}"'), ""),)
            self._buf = self._buf[match.end() :]
        cut = max(0, len(self._buf) - len(self._suffix))
        piece, self._buf = self._buf[:cut], self._buf[cut:]
        return "", (*head, ToolCallDelta(0, arguments=piece)) if piece else head

    def finish(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        buf, self._buf = self._buf, ""
        if self._in_args:
            tail = buf.rstrip()
            if tail.endswith(self._suffix):
                tail = tail[: -len(self._suffix)]
            return "", (ToolCallDelta(0, arguments=tail),) if tail else ()
        return buf[self._start :], ()  # cut short before the arguments: what the model wrote


class AutoStream(ToolStream):
    """Text with tool calls in <tool_call>{"name": ..., "arguments": {...}}</tool_call> tags. With
    `parallel_tool_calls: false` only the first call is one: a later tag stays text, as written."""

    def __init__(self, request: InferenceRequest) -> None:
        self._request = request
        self._limit = 1 if request.parallel_tool_calls is False else None
        self._names = frozenset(t.name for t in request.tools)
        self._held = ""  # text that may begin a tag
        self._call: str | None = None  # inside a tag: its text so far

    def _parse(self, body: str) -> tuple[ToolCallDelta, ...] | None:
        if self._limit is not None and self.calls >= self._limit:
            return None
        try:
            obj = json.loads(body)
        except ValueError:
            return None
        if not isinstance(obj, dict) or obj.get("name") not in self._names:
            return None
        args = obj.get("arguments", {})
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        k = self.calls
        self.calls += 1
        return whole_call(self._request, k, str(obj["name"]), json.dumps(args, ensure_ascii=False))

    def feed(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        out: list[str] = []
        deltas: list[ToolCallDelta] = []
        buf = self._held + text
        self._held = ""
        while buf:
            if self._call is not None:
                joined = self._call + buf
                end = joined.find(TOOL_CLOSE)
                if end < 0:
                    self._call = joined
                    break
                body = joined[:end]
                self._call = None
                buf = joined[end + len(TOOL_CLOSE) :]
                call = self._parse(body)
                if call is None:
                    out.append(TOOL_OPEN + body + TOOL_CLOSE)
                else:
                    deltas += call
                continue
            start = buf.find(TOOL_OPEN)
            if start >= 0:
                out.append(buf[:start])
                self._call = ""
                buf = buf[start + len(TOOL_OPEN) :]
                continue
            keep = _partial_suffix(buf, TOOL_OPEN)
            out.append(buf[: len(buf) - keep])
            self._held = buf[len(buf) - keep :]
            break
        return "".join(out), tuple(deltas)

    def finish(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        held, self._held = self._held, ""
        if self._call is None:
            return held, ()
        body, self._call = self._call, None
        call = self._parse(body.strip())  # EOS before the closing tag: a complete call still counts
        return ("", call) if call is not None else (TOOL_OPEN + body + held, ())


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper start of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def tool_stream(request: InferenceRequest, plan: OutputPlan) -> ToolStream | None:
    if plan.tools_mode == "arguments":
        return ArgumentsStream(request, plan.function or "", plan.suffix)
    if plan.tools_mode == "call":
        start = plan.prefill[len(TOOL_OPEN) :] if plan.prefill.startswith(TOOL_OPEN) else plan.prefill
        return CallStream(request, start, plan.suffix or "}")
    if plan.tools_mode == "auto":
        return AutoStream(request)
    return None


async def with_tool_calls(chunks: AsyncIterator[Chunk], tools: ToolStream | None) -> AsyncGenerator[Chunk, None]:
    """`chunks` (an engine's text chunks, stop sequences already applied) with their text read by
    `tools`: text that is a tool call becomes tool-call deltas, and an answer that made a call and
    ended on its own finishes with "tool_calls". Token counts and logprobs stay with their chunks."""
    try:
        async for chunk in chunks:
            if tools is None:
                yield chunk
                continue
            text, calls = tools.feed(chunk.text)
            if chunk.finish_reason is not None:
                rest, more = tools.finish()
                text, calls = text + rest, calls + more
                reason = "tool_calls" if tools.calls and chunk.finish_reason == "stop" else chunk.finish_reason
                yield dataclasses.replace(chunk, text=text, tool_calls=calls, finish_reason=reason)
            elif text or calls or chunk.token_count:
                yield dataclasses.replace(chunk, text=text, tool_calls=calls)
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
