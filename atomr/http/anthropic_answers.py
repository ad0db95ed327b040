"""Answers on Anthropic's Messages wire: whole Messages and their stream events, and errors.

Two sources, one shape:
- an answer from any runtime is written from atomr's chunks: a text block per run of text, a
  ``tool_use`` block per tool call (``input_json_delta`` pieces), ``stop_reason`` and usage;
- an answer from the anthropic runtime to a Messages request carries the provider's own events
  (`Chunk.wire_events`): a stream relays them as they came (thinking blocks and signatures,
  citations, server tool results, cache usage: nothing is lost), and a whole answer is those
  events gathered into the Message the API would have returned (`gather`).

Errors are ``{"type": "error", "error": {"type", "message"}}`` with Anthropic's statuses.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import JSONResponse, Response

from atomr.core.errors import InferenceError
from atomr.core.types import Chunk, InferenceRequest, InferenceResult, Usage

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


def _message_id(req: InferenceRequest) -> str:
    return f"msg_{req.request_id}"


def _usage(u: Usage | None) -> dict[str, int]:
    u = u or Usage()
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens}


def render(req: InferenceRequest, body: Any, result: InferenceResult) -> dict[str, Any]:
    """The whole Message of `result`."""
    if result.wire_events:
        return gather(result.wire_events)
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


def render_count(req: InferenceRequest, body: Any, result: InferenceResult) -> dict[str, Any]:
    """A ``count_tokens`` answer."""
    return {"input_tokens": result.usage.prompt_tokens}


def gather(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The Message a stream of the API's events adds up to (what the API answers unstreamed)."""
    message: dict[str, Any] = {}
    content: list[dict[str, Any]] = []
    partial: dict[int, str] = {}  # block index -> the tool input's JSON so far
    for ev in events:
        kind = ev.get("type")
        if kind == "message_start":
            message = copy.deepcopy(dict(ev["message"]))
        elif kind == "content_block_start":
            content.append(copy.deepcopy(dict(ev["content_block"])))
        elif kind == "content_block_delta":
            _add_delta(content[ev["index"]], ev["delta"], partial, ev["index"])
        elif kind == "content_block_stop" and ev["index"] in partial:
            text = partial.pop(ev["index"])
            content[ev["index"]]["input"] = json.loads(text) if text else {}
        elif kind == "message_delta":
            message.update(ev.get("delta") or {})
            message["usage"] = {**(message.get("usage") or {}), **(ev.get("usage") or {})}
    message["content"] = content
    return message


def _add_delta(block: dict[str, Any], delta: Mapping[str, Any], partial: dict[int, str], index: int) -> None:
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + delta["text"]
    elif kind == "input_json_delta":
        partial[index] = partial.get(index, "") + delta["partial_json"]
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + delta["thinking"]
    elif kind == "signature_delta":
        block["signature"] = block.get("signature", "") + delta["signature"]
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta["citation"])


def _event(kind: str, payload: Mapping[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


_PING = _event("ping", {})


def _relay(ev: Mapping[str, Any]) -> bytes:
    """One of the provider's events as it came; a ping after ``message_start``, as the API sends
    one there (the SDK that read the provider's stream keeps no pings)."""
    out = _event(str(ev["type"]), ev)
    return out + _PING if ev["type"] == "message_start" else out


class MessagesStream:
    """Anthropic's stream events for one answer: relayed when the chunks carry the provider's own,
    else written: one content block per run of text and per tool call. ``message_start`` waits
    for the first chunk, which tells which of the two this answer is."""

    def __init__(self, req: InferenceRequest, body: Any) -> None:
        self.req, self.model = req, body.model
        self._started = self._relayed = False
        self._block = -1  # index of the open block
        self._open: str | None = None  # "text", or the tool call index as "call:<k>"
        self._finish = "stop"

    def start(self) -> bytes:
        return b""

    def _message_start(self) -> bytes:
        self._started = True
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
        return _event("message_start", {"message": message}) + _PING

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
        if c.wire_events and not self._started:
            self._started = self._relayed = True
        if self._relayed:
            return b"".join(_relay(ev) for ev in c.wire_events)
        if c.index != 0:
            return b""  # Messages has one choice
        out = b"" if self._started else self._message_start()
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
        if self._relayed:
            return b""  # the provider's message_delta and message_stop were relayed
        out = b"" if self._started else self._message_start()
        delta = {"stop_reason": STOP_REASONS.get(self._finish, "end_turn"), "stop_sequence": None}
        out += self._close()
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
