"""A fake Anthropic Messages API on 127.0.0.1 speaking the real wire format, for the `anthropic` runner.

Route: `POST /v1/messages`. Without `"stream": true` the answer is one `message` object; with it,
SSE events as the API sends them (`event: <type>\\ndata: <json>\\n\\n`): `message_start` (with
`usage.input_tokens`), `content_block_start`, a `ping`, one `content_block_delta` (`text_delta`)
per token, `content_block_stop`, `message_delta` (`stop_reason`, `stop_sequence`,
`usage.output_tokens`) and `message_stop`.

The "model" answers `reply_text` whatever it is asked. Tokens are words with their leading
whitespace ("Hello", " from", " the", ...); input tokens are the words of the system prompt and of
every message. `max_tokens` cuts the answer after that many tokens (stop_reason "max_tokens");
`stop_sequences` cut it before the first one found (stop_reason "stop_sequence", `stop_sequence`
set); otherwise stop_reason is "end_turn".

Checks made like the real API: the key (when `api_key` is set: `x-api-key`, or a bearer token as
this SDK sends it; the 401 message echoes the key received, which lets tests check that atomr
never repeats it), `model`, `max_tokens` >= 1, `messages` non-empty with roles user/assistant
only (a "system" role is a 400: the system prompt has its own field), at most 8 stop sequences,
the prompt within `context_window` tokens (400 "prompt is too long"). Error bodies are
`{"type": "error", "error": {"type", "message"}}`; status 529 is `overloaded_error`.

Extra knobs besides `FakeProvider`'s: `stop_reason_override` (e.g. "refusal"),
`error_event_next(type, message, after)` (the next stream sends an `error` event after `after`
text deltas, as the API does when it overloads mid-stream), `bad_event_next()` (the next stream
carries an event whose data is not JSON), `echo_key` (default error bodies name the key received).
`served` lists what every successful call answered (text, stop_reason, usage). `reset()` forgets
calls, faults and knobs, so one fake (one server thread) can serve a whole test module.
"""

from __future__ import annotations

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
        if route != "/v1/messages":
            return Reply(404, error_json("not_found_error", f"Not found: {route}"))
        if not isinstance(body, dict):
            return Reply(400, error_json("invalid_request_error", "The request body is not valid JSON."))
        problem = self._check(body)
        if problem is not None:
            return problem
        text, stop_reason, stop_sequence = self._answer(body)
        input_tokens = _input_tokens(body)
        output_tokens = len(tokenize(text))
        stream = bool(body.get("stream"))
        with self.lock:
            self.served.append(Served(text, stop_reason, stop_sequence, input_tokens, output_tokens, stream))
        if not stream:
            message = _message(body["model"], input_tokens)
            message.update(
                content=[{"type": "text", "text": text}] if text else [],
                stop_reason=stop_reason,
                stop_sequence=stop_sequence,
                usage={"input_tokens": input_tokens, "output_tokens": output_tokens},
            )
            return Reply(200, message)
        return Reply(events=self._events(body["model"], text, stop_reason, stop_sequence, input_tokens))

    def _check(self, body: dict[str, Any]) -> Reply | None:
        def bad(message: str) -> Reply:
            return Reply(400, error_json("invalid_request_error", message))

        model = body.get("model")
        if not isinstance(model, str) or not model:
            return bad("model: Field required")
        if model not in self.models:
            return Reply(404, error_json("not_found_error", f"model: {model}"))
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return bad("max_tokens: Field required" if max_tokens is None else "max_tokens: must be >= 1")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return bad("messages: at least one message is required")
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, dict) else None
            if role not in ("user", "assistant"):
                return bad(
                    f"messages.{i}.role: Input should be 'user' or 'assistant'"
                    + ("; use the top-level `system` parameter for a system prompt" if role == "system" else "")
                )
            if not isinstance(m.get("content"), str | list):
                return bad(f"messages.{i}.content: Field required")
        stops = body.get("stop_sequences") or []
        if not isinstance(stops, list) or len(stops) > 8 or not all(isinstance(s, str) and s for s in stops):
            return bad("stop_sequences: at most 8 non-empty strings")
        n = _input_tokens(body)
        if n > self.context_window:
            return bad(f"prompt is too long: {n} tokens > {self.context_window} maximum")
        return None

    def _answer(self, body: dict[str, Any]) -> tuple[str, str, str | None]:
        full = self.reply_text
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
        self, model: str, text: str, stop_reason: str, stop_sequence: str | None, input_tokens: int
    ) -> list[str]:
        with self.lock:
            error = self._error_events.pop(0) if self._error_events else None
            bad = self._bad_events > 0
            self._bad_events -= int(bad)
        events = [
            _sse("message_start", {"type": "message_start", "message": _message(model, input_tokens)}),
            _sse(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            ),
            _sse("ping", {"type": "ping"}),
        ]
        for i, token in enumerate(tokenize(text)):
            if error is not None and i == error.after:
                break
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}}
            events.append(_sse("content_block_delta", delta))
            if bad and i == 0:
                events.append('event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0,\n\n')
        if error is not None:
            events.append(_sse("error", error_json(error.kind, error.message)))
            return events
        events += [
            _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
            _sse(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": {"output_tokens": len(tokenize(text))},
                },
            ),
            _sse("message_stop", {"type": "message_stop"}),
        ]
        return events


def _key_of(headers: dict[str, str]) -> str:
    if headers.get("x-api-key"):
        return headers["x-api-key"]
    auth = headers.get("authorization", "")
    return auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b.get("text", "") for b in content if isinstance(b, dict))
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
