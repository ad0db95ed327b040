"""Responses API answers out: the Response object and its output items.

A Response (``resp_...``) carries the request's settings back (instructions, tools, tool_choice,
text format, sampling parameters, metadata...) as the OpenAI SDK's types expect them, its
``status`` (``completed``; ``incomplete`` with ``incomplete_details`` when ``max_output_tokens``
or a content filter cut it; ``failed`` with ``error``), ``usage`` with its details, and
``output``: a ``reasoning`` item when the model reasoned aloud, a ``message`` item with
``output_text`` (and ``refusal``) content, and a ``function_call`` item per tool call. Item ids
are made of the request's id and the item's place in the output, so a streamed answer and a
whole one name their items alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from atomr.core.errors import InferenceError
from atomr.core.messages import ToolCall
from atomr.core.types import InferenceResult, Usage
from atomr.http import openai_wire
from atomr.http.responses_api.protocol import ResponsesBody

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
# The codes a failed Response's error may have; every other failure is a server_error.
_FAILURE_CODES = {"rate_limit_exceeded", "server_error"}


def status_of(finish_reason: str) -> tuple[str, dict[str, str] | None]:
    """The Response's status and incomplete_details for the answer's finish reason."""
    reason = _INCOMPLETE.get(finish_reason)
    return ("incomplete", {"reason": reason}) if reason else ("completed", None)


def item_id(prefix: str, rid: str, index: int) -> str:
    return f"{prefix}_{rid}_{index}"


def usage(u: Usage | None) -> dict[str, Any]:
    u = u or Usage()
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.total_tokens,
    }


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": []}


def refusal_part(refusal: str) -> dict[str, Any]:
    return {"type": "refusal", "refusal": refusal}


def message_item(id_: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": id_, "type": "message", "role": "assistant", "status": status, "content": content}


def call_item(id_: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {
        "id": id_,
        "type": "function_call",
        "status": status,
        "call_id": call.id,
        "name": call.name,
        "arguments": call.arguments,
    }


def reasoning_item(id_: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": id_, "type": "reasoning", "summary": [], "content": content}


def failure(exc: InferenceError) -> dict[str, str]:
    """A failed Response's ``error``."""
    code = openai_wire.error_code(exc)
    return {"code": code if code in _FAILURE_CODES else "server_error", "message": exc.message}


@dataclass(frozen=True, slots=True)
class ResponseHead:
    """What every Response of one request shares, whatever its status and output."""

    rid: str
    body: ResponsesBody
    kept: bool  # whether the answer is stored
    created_at: int

    @staticmethod
    def of(rid: str, body: ResponsesBody, kept: bool) -> ResponseHead:
        return ResponseHead(rid, body, kept, int(time.time()))

    @property
    def id(self) -> str:
        return f"resp_{self.rid}"

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        *,
        usage: dict[str, Any] | None = None,
        incomplete: dict[str, str] | None = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body = self.body
        text_format = body.text.format if body.text and body.text.format else {"type": "text"}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": incomplete,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": body.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls is not False,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": body.reasoning.effort if body.reasoning else None, "summary": None},
            "store": self.kept,
            "temperature": body.temperature,
            "text": {"format": text_format},
            "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
            "tools": body.tools or [],
            "top_p": body.top_p,
            "truncation": "disabled",
            "usage": usage,
            "user": body.user,
            "metadata": body.metadata or {},
        }


def whole(head: ResponseHead, result: InferenceResult) -> dict[str, Any]:
    """The Response of a whole answer."""
    status, incomplete = status_of(result.finish_reason)
    output: list[dict[str, Any]] = []
    if result.reasoning:
        content = [{"type": "reasoning_text", "text": result.reasoning}]
        output.append(reasoning_item(item_id("rs", head.rid, len(output)), content))
    calls = result.tool_calls
    if result.text or result.refusal or not calls:
        content = [text_part(result.text)] if result.text or not result.refusal else []
        content += [refusal_part(result.refusal)] if result.refusal else []
        output.append(message_item(item_id("msg", head.rid, len(output)), content, "completed" if calls else status))
    for k, call in enumerate(calls):  # the last item is the one a cut answer leaves incomplete
        output.append(
            call_item(item_id("fc", head.rid, len(output)), call, status if k == len(calls) - 1 else "completed")
        )
    return head.response(status, output, usage=usage(result.usage), incomplete=incomplete)
