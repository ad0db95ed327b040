"""A fake Anthropic Messages API on 127.0.0.1 speaking the real wire format, for the `anthropic` runner.

Routes: `POST /v1/messages/count_tokens` (`{"input_tokens": N}`, N counted as below, for a prompt
checked as a message's is) and `POST /v1/messages`. Without `"stream": true` the answer is one
`message` object; with it,
SSE events as the API sends them (`event: <type>\\ndata: <json>\\n\\n`): `message_start` (with
`usage.input_tokens`), `content_block_start`, a `ping`, one `content_block_delta` (`text_delta`)
per token, `content_block_stop`, `message_delta` (`stop_reason`, `stop_sequence`,
`usage.output_tokens`) and `message_stop`.

The "model" answers `reply_text` whatever it is asked, with three exceptions. Tools: when the
request has `tools`, its last turn is the user's (not tool results) and `tool_choice` is `any` /
`tool`, or `auto` (or absent) with the user's text mentioning "weather" (`TOOL_WORD`), it calls a
tool instead: the named one, else the first, with arguments valid for its `input_schema`
(`example_value`: required properties, strings "Paris", numbers 1...), `parallel_calls` times
(once with `disable_parallel_tool_use`), after a text block `tool_preamble`; stop_reason
"tool_use". Streamed, a call is `content_block_start` (tool_use, `input: {}`), `input_json_delta`s
(an empty one, then its JSON in 3 or more pieces) and `content_block_stop`. When the last user turn
holds `tool_result` blocks, the answer quotes them: "The tool said: <result>; <result>".
Structured output (`output_config.format` json_schema): the answer is a JSON value of the schema.
Tokens are words with their leading whitespace ("Hello", " from", " the", ...); input tokens are
the words of the system prompt and of every message. `max_tokens` cuts a text answer after that
many tokens (stop_reason "max_tokens"); `stop_sequences` cut it before the first one found
(stop_reason "stop_sequence", `stop_sequence` set); otherwise stop_reason is "end_turn".
`thinking_text` starts every answer with a thinking block (`thinking_delta`s, then a
`signature_delta`); `cache_read_tokens` is reported as `usage.cache_read_input_tokens`.

Checks made like the real API: the key (when `api_key` is set: `x-api-key`, or a bearer token as
this SDK sends it; the 401 message echoes the key received, which lets tests check that atomr
never repeats it), `model`, no top-level field the API does not know ("seed: Extra inputs are not
permitted"), `max_tokens` >= 1, `messages` non-empty with roles user/assistant only (a "system"
role is a 400: the system prompt has its own field), non-empty text blocks, image blocks (base64
of jpeg/png/gif/webp, or a url), `tool_use` ids and dict inputs, every `tool_use` answered by a
`tool_result` in the next (user) message and no `tool_result` without its `tool_use`, tools
(`input_schema` of type object, unique names), tool_choice (only with tools, a named tool must
exist), `output_config`, `metadata` (user_id only), at most 8 stop sequences, the prompt within
`context_window` tokens (400 "prompt is too long"). Error bodies are
`{"type": "error", "error": {"type", "message"}}`; status 529 is `overloaded_error`.

Extra knobs besides `FakeProvider`'s: `stop_reason_override` (e.g. "refusal"),
`error_event_next(type, message, after)` (the next stream sends an `error` event after `after`
text deltas, as the API does when it overloads mid-stream), `bad_event_next()` (the next stream
carries an event whose data is not JSON), `echo_key` (default error bodies name the key received).
`served` lists what every successful call answered (text, stop_reason, usage, tool calls); the
bodies received are in `calls` (`FakeProvider`). `reset()` forgets
calls, faults and knobs, so one fake (one server thread) can serve a whole test module.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from tests.fakes.server import FakeProvider, Reply

_TOKEN = re.compile(r"\s*\S+|\s+$")
DEFAULT_REPLY = "Hello from the fake Claude, one word at a time, as a real stream would."

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def tokenize(text: str) -> list[str]:
    """The fake's tokens: words with their leading whitespace."""
    return _TOKEN.findall(text)


def error_json(kind: str, message: str) -> dict[str, Any]:
    """An Anthropic error body."""
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_fake"}


@dataclass
class Served:
    text: str
    stop_reason: str
    stop_sequence: str | None
    input_tokens: int
    output_tokens: int
    stream: bool
    tool_calls: tuple[tuple[str, str, Any], ...] = ()  # (id, name, input) of each tool_use block
    cache_read_tokens: int = 0


@dataclass
class _ErrorEvent:
    kind: str
    message: str
    after: int


class FakeAnthropic(FakeProvider):
    def __init__(self, api_key: str | None = None, models: tuple[str, ...] = ("claude-fake",)) -> None:
        super().__init__()
        self.api_key = api_key
        self.models = models
        self.reply_text = DEFAULT_REPLY
        self.context_window = 4096
        self.stop_reason_override: str | None = None
        self.echo_key = True
        self.served: list[Served] = []
        self._error_events: list[_ErrorEvent] = []
        self._bad_events = 0
        self._defaults()

    def _defaults(self) -> None:
        self.tool_preamble = TOOL_PREAMBLE  # text before a tool call ("" for none)
        self.parallel_calls = 1  # tool calls per answer, unless disable_parallel_tool_use
        self.thinking_text = ""  # when set, every answer starts with this thinking block
        self.cache_read_tokens = 0  # reported as usage.cache_read_input_tokens

    def reset(self) -> None:
        """Forget calls, pending faults and knobs: one fake can serve many tests."""
        self.forget_calls()
        with self.lock:
            self.served.clear()
            self._error_events.clear()
            self._bad_events = 0
        self.reply_text = DEFAULT_REPLY
        self.stop_reason_override = None
        self.echo_key = True
        self._defaults()

    # knobs
    def error_event_next(self, kind: str = "overloaded_error", message: str = "Overloaded", after: int = 0) -> None:
        with self.lock:
            self._error_events.append(_ErrorEvent(kind, message, after))

    def bad_event_next(self) -> None:
        with self.lock:
            self._bad_events += 1

    def error_body(self, status: int) -> Any:
        kind = ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        message = f"fake {kind} ({status})"
        if self.echo_key:
            with self.lock:
                last = self.calls[-1].headers if self.calls else {}
            message += f" for key {_key_of(last) or '<none>'}"
        return error_json(kind, message)

    # the API
    def handle(self, path: str, headers: dict[str, str], body: Any) -> Reply:
        route = urlsplit(path).path.rstrip("/")
        if self.api_key is not None:
            got = _key_of(headers)
            if got != self.api_key:
                return Reply(401, error_json("authentication_error", f"invalid x-api-key: {got}"))
        if route not in ("/v1/messages", "/v1/messages/count_tokens"):
            return Reply(404, error_json("not_found_error", f"Not found: {route}"))
        if not isinstance(body, dict):
            return Reply(400, error_json("invalid_request_error", "The request body is not valid JSON."))
        if route.endswith("/count_tokens"):
            return self._count(body)
        problem = self._check(body)
        if problem is not None:
            return Reply(400, error_json("invalid_request_error", problem)) if isinstance(problem, str) else problem
        blocks, stop_reason, stop_sequence = self._answer(body)
        input_tokens = _input_tokens(body)
        output_tokens = sum(_block_tokens(b) for b in blocks)
        stream = bool(body.get("stream"))
        text = "".join(b["text"] for b in blocks if b["type"] == "text")
        calls = tuple((b["id"], b["name"], b["input"]) for b in blocks if b["type"] == "tool_use")
        with self.lock:
            self.served.append(
                Served(
                    text, stop_reason, stop_sequence, input_tokens, output_tokens, stream, calls, self.cache_read_tokens
                )
            )
        usage = self._usage(input_tokens, output_tokens)
        if not stream:
            message = _message(body["model"], input_tokens)
            message.update(content=blocks, stop_reason=stop_reason, stop_sequence=stop_sequence, usage=usage)
            return Reply(200, message)
        return Reply(events=self._events(body["model"], blocks, stop_reason, stop_sequence, usage))

    def _count(self, body: dict[str, Any]) -> Reply:
        """``count_tokens``: the prompt checked as for a message (without max_tokens), counted."""
        extra = sorted(set(body) - COUNT_FIELDS)
        if extra:
            return Reply(400, error_json("invalid_request_error", f"{extra[0]}: Extra inputs are not permitted"))
        problem = self._check({**body, "max_tokens": 1})
        if problem is not None:
            return Reply(400, error_json("invalid_request_error", problem)) if isinstance(problem, str) else problem
        return Reply(200, {"input_tokens": _input_tokens(body)})

    def _usage(self, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        usage: dict[str, Any] = {"input_tokens": input_tokens, "output_tokens": output_tokens}
        if self.cache_read_tokens:
            usage.update(cache_read_input_tokens=self.cache_read_tokens, cache_creation_input_tokens=0)
        return usage

    def _check(self, body: dict[str, Any]) -> Reply | str | None:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return "model: Field required"
        if model not in self.models:
            return Reply(404, error_json("not_found_error", f"model: {model}"))
        extra = sorted(set(body) - REQUEST_FIELDS)
        if extra:
            return f"{extra[0]}: Extra inputs are not permitted"
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return "max_tokens: Field required" if max_tokens is None else "max_tokens: must be >= 1"
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return "messages: at least one message is required"
        tools = body.get("tools")
        problem = _check_tools(tools, body.get("tool_choice"))
        if problem is None:
            problem = _check_messages(messages)
        if problem is None:
            problem = _check_output_config(body.get("output_config"))
        if problem is not None:
            return problem
        metadata = body.get("metadata")
        if metadata is not None and (not isinstance(metadata, dict) or set(metadata) - {"user_id"}):
            return "metadata: only user_id is permitted"
        stops = body.get("stop_sequences") or []
        if not isinstance(stops, list) or len(stops) > 8 or not all(isinstance(s, str) and s for s in stops):
            return "stop_sequences: at most 8 non-empty strings"
        n = _input_tokens(body)
        if n > self.context_window:
            return f"prompt is too long: {n} tokens > {self.context_window} maximum"
        return None

    def _answer(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str | None]:
        """The content blocks of the answer, its stop_reason and stop_sequence."""
        blocks: list[dict[str, Any]] = []
        if self.thinking_text:
            blocks.append({"type": "thinking", "thinking": self.thinking_text, "signature": THINKING_SIGNATURE})
        calls = _wanted_calls(body, self.parallel_calls)
        if calls:
            if self.tool_preamble:
                blocks.append({"type": "text", "text": self.tool_preamble})
            blocks += calls
            return blocks, self.stop_reason_override or "tool_use", None
        text, stop_reason, stop_sequence = self._text(body, _reply_for(body, self.reply_text))
        if text or not blocks:
            blocks.append({"type": "text", "text": text})
        return blocks, stop_reason, stop_sequence

    def _text(self, body: dict[str, Any], full: str) -> tuple[str, str, str | None]:
        tokens = tokenize(full)
        limit = body["max_tokens"]
        limit_at = len("".join(tokens[:limit]))
        found = [(full.find(s), s) for s in body.get("stop_sequences") or [] if s in full]
        if found:
            at, seq = min(found)
            if at < limit_at or len(tokens) <= limit:
                return full[:at], self.stop_reason_override or "stop_sequence", seq
        if len(tokens) > limit:
            return "".join(tokens[:limit]), self.stop_reason_override or "max_tokens", None
        return full, self.stop_reason_override or "end_turn", None

    def _events(
        self,
        model: str,
        blocks: list[dict[str, Any]],
        stop_reason: str,
        stop_sequence: str | None,
        usage: dict[str, Any],
    ) -> list[str]:
        with self.lock:
            error = self._error_events.pop(0) if self._error_events else None
            bad = self._bad_events > 0
            self._bad_events -= int(bad)
        start = _message(model, usage["input_tokens"])
        start["usage"] = {**usage, "output_tokens": 1}
        events = [_sse("message_start", {"type": "message_start", "message": start})]
        sent_text = 0
        for index, block in enumerate(blocks):
            kind = block["type"]
            empty = {"text": {"type": "text", "text": ""}, "thinking": {**block, "thinking": "", "signature": ""}}
            opening = empty.get(kind, {**block, "input": {}})
            events.append(
                _sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})
            )
            if index == 0:
                events.append(_sse("ping", {"type": "ping"}))
            for delta in _deltas(block):
                if kind == "text":
                    if error is not None and sent_text == error.after:
                        events.append(_sse("error", error_json(error.kind, error.message)))
                        return events
                    sent_text += 1
                events.append(
                    _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
                )
                if bad and kind == "text" and sent_text == 1:
                    events.append('event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,\n\n')
            events.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
        if error is not None:
            events.append(_sse("error", error_json(error.kind, error.message)))
            return events
        events += [
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]
        return events


# ---- tools, as the API checks and answers them ----

TOOL_PREAMBLE = "Let me check."
THINKING_SIGNATURE = "c2lnbmF0dXJlLW9mLXRoZS1mYWtl"
TOOL_WORD = "weather"  # a user turn that mentions it makes the model call a tool (tool_choice auto)
FILL_WORD = "Paris"  # what a tool call puts in every required string argument
REQUEST_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "metadata",
        "output_config",
        "thinking",
        "service_tier",
        "container",
        "cache_control",
        "inference_geo",
    }
)
COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "output_config", "cache_control"}
)
_TOOL_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def example_value(schema: Any) -> Any:
    """A value valid for a JSON schema: required (else all) properties of objects filled, strings
    with `FILL_WORD`, numbers with 1, booleans true, arrays with one item, enums their first."""
    if not isinstance(schema, dict):
        return FILL_WORD
    if schema.get("enum"):
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        names = schema.get("required", list(props))
        return {name: example_value(props.get(name)) for name in names}
    if kind == "array":
        return [example_value(schema["items"])] if isinstance(schema.get("items"), dict) else []
    return {"integer": 1, "number": 1, "boolean": True, "null": None}.get(str(kind), FILL_WORD)


def _check_tools(tools: Any, choice: Any) -> str | None:
    names: list[str] = []
    if tools is not None:
        if not isinstance(tools, list):
            return "tools: Input should be a valid list"
        for i, tool in enumerate(tools):
            if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                return f"tools.{i}.name: Field required"
            schema = tool.get("input_schema")
            if not isinstance(schema, dict) or schema.get("type") != "object":
                return f"tools.{i}.custom.input_schema: Input should be a JSON schema of type 'object'"
            extra = set(tool) - {"name", "description", "input_schema", "cache_control", "type", "strict"}
            if extra:
                return f"tools.{i}.custom.{sorted(extra)[0]}: Extra inputs are not permitted"
            names.append(tool["name"])
        if len(set(names)) != len(names):
            return "tools: Tool names must be unique."
    if choice is None:
        return None
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        return "tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'"
    if not names and choice["type"] != "none":
        return "tool_choice may only be specified while providing tools."
    if choice["type"] == "tool" and choice.get("name") not in names:
        return f"tool_choice.tool.name: Tool '{choice.get('name')}' not found in provided tools"
    return None


def _check_output_config(config: Any) -> str | None:
    if config is None:
        return None
    if not isinstance(config, dict) or set(config) - {"format", "effort"}:
        return "output_config: Extra inputs are not permitted"
    fmt = config.get("format")
    if fmt is not None and (
        not isinstance(fmt, dict) or fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict)
    ):
        return "output_config.format: type 'json_schema' with a schema object is required"
    if config.get("effort") not in (None, "low", "medium", "high", "xhigh", "max"):
        return "output_config.effort: Input should be 'low', 'medium', 'high', 'xhigh' or 'max'"
    return None


def _check_messages(messages: list[Any]) -> str | None:
    pending: set[str] = set()  # tool_use ids of the last assistant turn, awaiting their results
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'" + (
                "; use the top-level `system` parameter for a system prompt" if role == "system" else ""
            )
        content = m.get("content")
        if not isinstance(content, str | list):
            return f"messages.{i}.content: Field required"
        blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
        results: set[str] = set()
        for j, block in enumerate(blocks):
            problem = _check_block(block, role, f"messages.{i}.content.{j}")
            if problem is not None:
                return problem
            if block["type"] == "tool_result":
                if block.get("tool_use_id") not in pending:
                    return (
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message."
                    )
                results.add(block["tool_use_id"])
        if pending and (role != "user" or pending - results):
            return (
                f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
                f"{', '.join(sorted(pending - results))}. Each `tool_use` block must have a corresponding "
                "`tool_result` block in the next message."
            )
        pending = {b["id"] for b in blocks if b["type"] == "tool_use"} if role == "assistant" else set()
    if pending:
        return "messages: the last assistant turn has `tool_use` blocks without results"
    return None


def _check_block(block: Any, role: str, at: str) -> str | None:
    kind = block.get("type") if isinstance(block, dict) else None
    allowed = {
        "user": ("text", "image", "tool_result"),
        "assistant": ("text", "tool_use", "thinking", "redacted_thinking"),
    }[role]
    if kind not in allowed:
        return f"{at}.type: a {role} message cannot hold a {kind!r} block"
    if kind == "text" and (not isinstance(block.get("text"), str) or not block["text"]):
        return "messages: text content blocks must be non-empty"
    if kind == "image":
        source = block.get("source") or {}
        if source.get("type") == "base64":
            if source.get("media_type") not in _IMAGE_TYPES:
                return f"{at}.image.source.base64.media_type: Input should be one of {', '.join(_IMAGE_TYPES)}"
            try:
                base64.b64decode(source.get("data") or "", validate=True)
            except ValueError:
                return f"{at}.image.source.base64.data: invalid base64 data"
        elif source.get("type") != "url" or not str(source.get("url", "")).startswith(("https://", "http://")):
            return f"{at}.image.source: a base64 or url source is required"
    if kind == "tool_use":
        if not isinstance(block.get("id"), str) or not _TOOL_ID.match(block["id"]):
            return f"{at}.tool_use.id: String should match pattern '^[a-zA-Z0-9_-]+$'"
        if not isinstance(block.get("input"), dict):
            return f"{at}.tool_use.input: Input should be a valid dictionary"
    if kind == "tool_result":
        content = block.get("content", "")
        if isinstance(content, list):
            for k, inner in enumerate(content):
                if not isinstance(inner, dict) or inner.get("type") not in ("text", "image"):
                    return f"{at}.tool_result.content.{k}: text or image blocks only"
        elif not isinstance(content, str):
            return f"{at}.tool_result.content: Input should be a string or a list of blocks"
    return None


def _last_user_blocks(body: dict[str, Any]) -> list[dict[str, Any]]:
    last = body["messages"][-1]
    if last.get("role") != "user":
        return []
    content = last["content"]
    return [{"type": "text", "text": content}] if isinstance(content, str) else list(content)


def _wanted_calls(body: dict[str, Any], parallel: int) -> list[dict[str, Any]]:
    """The tool_use blocks the "model" answers with: when the request has tools, its last turn is
    the user's (not tool results) and tool_choice forces a call or the user mentions TOOL_WORD."""
    tools = body.get("tools") or []
    choice = body.get("tool_choice") or {"type": "auto"}
    blocks = _last_user_blocks(body)
    if not tools or choice["type"] == "none" or any(b["type"] == "tool_result" for b in blocks):
        return []
    asked = TOOL_WORD in " ".join(b.get("text", "") for b in blocks if b["type"] == "text").lower()
    if choice["type"] == "auto" and not asked:
        return []
    tool = next((t for t in tools if t["name"] == choice.get("name")), tools[0])
    count = 1 if choice.get("disable_parallel_tool_use") else max(1, parallel)
    return [
        {
            "type": "tool_use",
            "id": f"toolu_{uuid.uuid4().hex[:24]}",
            "name": tool["name"],
            "input": example_value(tool["input_schema"]),
        }
        for _ in range(count)
    ]


def tool_result_text(block: dict[str, Any]) -> str:
    content = block.get("content", "")
    if isinstance(content, str):
        return content
    return " ".join(b.get("text", "") for b in content if b.get("type") == "text")


def _reply_for(body: dict[str, Any], default: str) -> str:
    """Text answers: a JSON value of the schema asked for, the tool results quoted after a tool
    call, else the fake's reply."""
    fmt = (body.get("output_config") or {}).get("format")
    if fmt is not None:
        return json.dumps(example_value(fmt["schema"]))
    results = [tool_result_text(b) for b in _last_user_blocks(body) if b["type"] == "tool_result"]
    if results:
        return "The tool said: " + "; ".join(results)
    return default


def _deltas(block: dict[str, Any]) -> list[dict[str, Any]]:
    """The deltas a block streams as: a token per text/thinking delta, a tool's input JSON in
    pieces (an empty one first, as the API sends)."""
    if block["type"] == "text":
        return [{"type": "text_delta", "text": t} for t in tokenize(block["text"])]
    if block["type"] == "thinking":
        out: list[dict[str, Any]] = [{"type": "thinking_delta", "thinking": t} for t in tokenize(block["thinking"])]
        return [*out, {"type": "signature_delta", "signature": block["signature"]}]
    text = json.dumps(block["input"])
    size = max(1, len(text) // 3)
    pieces = [""] + [text[k : k + size] for k in range(0, len(text), size)]
    return [{"type": "input_json_delta", "partial_json": p} for p in pieces]


def _block_tokens(block: dict[str, Any]) -> int:
    if block["type"] == "text":
        return len(tokenize(block["text"]))
    if block["type"] == "thinking":
        return len(tokenize(block["thinking"]))
    return len(tokenize(json.dumps(block["input"]).replace(",", ", ")))


def _key_of(headers: dict[str, str]) -> str:
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            tool_result_text(b) if b.get("type") == "tool_result" else str(b.get("text", ""))
            for b in content
            if isinstance(b, dict)
        )
    return ""


def _input_tokens(body: dict[str, Any]) -> int:
    parts = [_text_of(body.get("system"))] + [_text_of(m.get("content")) for m in body.get("messages") or []]
    return sum(len(tokenize(p)) for p in parts if p)


def _message(model: str, input_tokens: int) -> dict[str, Any]:
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1},
    }


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
