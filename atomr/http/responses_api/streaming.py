"""The Responses API's stream events for one answer, as server-sent events with ``sequence_number``.

``response.created`` and ``response.in_progress``; then, per output item in the order the answer
makes them, ``response.output_item.added``, its content (``response.content_part.added``,
``response.output_text.delta`` / ``.done``, ``response.refusal.delta`` / ``.done``,
``response.reasoning_text.delta`` / ``.done``, ``response.content_part.done``; or for a tool
call ``response.function_call_arguments.delta`` / ``.done``) and ``response.output_item.done``;
last ``response.completed`` (or ``response.incomplete``) with the whole Response, the one a
request without ``stream`` is answered. A failure after the first event is an ``error`` event
then ``response.failed``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from atomr.core.errors import InferenceError
from atomr.core.messages import ToolCall, ToolCallDelta
from atomr.core.types import Chunk, Usage
from atomr.http import openai_wire
from atomr.http.responses_api import rendering
from atomr.http.responses_api.protocol import in_wire_terms
from atomr.http.responses_api.rendering import ResponseHead

# A content part's type: the events that stream it and the key of its text.
_PARTS = {
    "output_text": ("response.output_text", "text"),
    "refusal": ("response.refusal", "refusal"),
    "reasoning_text": ("response.reasoning_text", "text"),
}


class ResponsesStream:
    """One answer's events. `on_done` gets the final Response (to keep it) before it is sent."""

    def __init__(self, head: ResponseHead, on_done: Callable[[dict[str, Any]], None]) -> None:
        self.head = head
        self._on_done = on_done
        self._seq = 0
        self._output: list[dict[str, Any]] = []  # the items so far, as they are now
        self._open: str | None = None  # the last item while open: "reasoning", "message" or "call:<k>"
        self._finish = "stop"

    def start(self) -> bytes:
        response = self.head.response("in_progress", [])
        return self._event("response.created", {"response": response}) + self._event(
            "response.in_progress", {"response": response}
        )

    def chunk(self, c: Chunk) -> bytes:
        if c.index != 0:
            return b""  # a Response has one answer
        out = b""
        if c.reasoning:
            out += self._content("reasoning", "reasoning_text", c.reasoning)
        if c.text:
            out += self._content("message", "output_text", c.text)
        if c.refusal:
            out += self._content("message", "refusal", c.refusal)
        for d in c.tool_calls:
            out += self._call(d)
        if c.finish_reason:
            self._finish = c.finish_reason
        return out

    def end(self, usage: Usage | None) -> bytes:
        out = b"" if self._output else self._content("message", "output_text", "")
        status, incomplete = rendering.status_of(self._finish)
        out += self._close(status)
        response = self.head.response(status, self._output, usage=rendering.usage(usage), incomplete=incomplete)
        self._on_done(response)
        return out + self._event(f"response.{status}", {"response": response})

    def error(self, exc: InferenceError) -> bytes:
        exc = in_wire_terms(exc)
        code = openai_wire.error_code(exc)
        out = self._event("error", {"code": code, "message": exc.message, "param": exc.field})
        failed = self.head.response("failed", self._output, error=rendering.failure(exc))
        return out + self._event("response.failed", {"response": failed})

    # ---- items and their parts ----

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        data = json.dumps({"type": kind, "sequence_number": self._seq, **payload}, separators=(",", ":"))
        self._seq += 1
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def _where(self) -> dict[str, Any]:
        return {"item_id": self._output[-1]["id"], "output_index": len(self._output) - 1}

    def _add(self, key: str, item: dict[str, Any]) -> bytes:
        """`item` opened as the next output item (the open one closed first)."""
        out = self._close("completed")
        self._output.append(item)
        self._open = key
        return out + self._event("response.output_item.added", {"output_index": len(self._output) - 1, "item": item})

    def _content(self, key: str, part_type: str, delta: str) -> bytes:
        """`delta` of a text part (`part_type`) of a message or reasoning item, opened as needed."""
        out = b""
        if self._open != key:
            at = len(self._output)
            item = (
                rendering.message_item(rendering.item_id("msg", self.head.rid, at), [], "in_progress")
                if key == "message"
                else rendering.reasoning_item(rendering.item_id("rs", self.head.rid, at), [])
            )
            out += self._add(key, item)
        content = self._output[-1]["content"]
        if not content or content[-1]["type"] != part_type:
            out += self._close_part()
            content.append({"type": part_type, _PARTS[part_type][1]: "", **_annotations(part_type)})
            payload = {**self._where(), "content_index": len(content) - 1, "part": content[-1]}
            out += self._event("response.content_part.added", payload)
        if not delta:
            return out
        events, text_key = _PARTS[part_type]
        content[-1][text_key] += delta
        payload = {**self._where(), "content_index": len(content) - 1, "delta": delta, **_logprobs(part_type)}
        return out + self._event(f"{events}.delta", payload)

    def _call(self, d: ToolCallDelta) -> bytes:
        out = b""
        key = f"call:{d.index}"
        if self._open != key:
            item_id = rendering.item_id("fc", self.head.rid, len(self._output))
            out += self._add(key, rendering.call_item(item_id, ToolCall(d.id or "", d.name or "", ""), "in_progress"))
        if d.arguments:
            self._output[-1]["arguments"] += d.arguments
            out += self._event("response.function_call_arguments.delta", {**self._where(), "delta": d.arguments})
        return out

    def _close_part(self) -> bytes:
        content = self._output[-1].get("content") if self._output else None
        if not content:
            return b""
        part = content[-1]
        events, text_key = _PARTS[part["type"]]
        where = {**self._where(), "content_index": len(content) - 1}
        done = {**where, text_key: part[text_key], **_logprobs(part["type"])}
        return self._event(f"{events}.done", done) + self._event("response.content_part.done", {**where, "part": part})

    def _close(self, status: str) -> bytes:
        """The open item done, with `status`."""
        if self._open is None:
            return b""
        item = self._output[-1]
        if item["type"] == "function_call":
            out = self._event(
                "response.function_call_arguments.done", {**self._where(), "arguments": item["arguments"]}
            )
        else:
            out = self._close_part()
        if item["type"] != "reasoning":
            item["status"] = status
        self._open = None
        return out + self._event("response.output_item.done", {"output_index": len(self._output) - 1, "item": item})


def _annotations(part_type: str) -> dict[str, Any]:
    return {"annotations": []} if part_type == "output_text" else {}


def _logprobs(part_type: str) -> dict[str, Any]:
    return {"logprobs": []} if part_type == "output_text" else {}
