"""The OpenAI wire format out: response bodies, stream chunks and errors.

Request bodies are read by `atomr.http.openai_requests`. Responses are built as plain dicts and
serialized with `json.dumps`: no model object per chunk (that is where other proxies spend their
time). Every choice of an `n` > 1 request, tool calls (whole, or streamed as deltas by index
exactly as OpenAI streams them), reasoning text (as ``reasoning_content``, the field
OpenAI-compatible servers use), refusals, top logprobs and usage details (cached and reasoning
tokens) are rendered when the answer has them.
"""

from __future__ import annotations

import json
import time
from typing import Any

from atomr.core.errors import InferenceError
from atomr.core.types import Choice, Chunk, InferenceResult, TokenLogprob, Usage

# ---- responses ------------------------------------------------------------------------------


def _usage(u: Usage | None) -> dict[str, Any] | None:
    if u is None:
        return None
    out: dict[str, Any] = {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
    }
    if u.cached_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": u.cached_tokens}
    if u.reasoning_tokens:
        out["completion_tokens_details"] = {"reasoning_tokens": u.reasoning_tokens}
    return out


def _chat_logprobs(lps: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {"content": [_chat_token(t) for t in lps]}


def _chat_token(t: TokenLogprob, top: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode())}
    if top:
        out["top_logprobs"] = [_chat_token(x, top=False) for x in t.top]
    return out


def _completion_logprobs(lps: tuple[TokenLogprob, ...] | None, offset: int = 0) -> dict[str, Any] | None:
    if lps is None:
        return None
    offsets, at = [], offset
    for t in lps:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in lps],
        "token_logprobs": [t.logprob for t in lps],
        "top_logprobs": [{x.token: x.logprob for x in t.top} for t in lps],
        "text_offset": offsets,
    }


def _choices(result: InferenceResult) -> tuple[Choice, ...]:
    if result.choices:
        return result.choices
    return (Choice(0, result.text, result.finish_reason, result.logprobs),)


def _assistant(c: Choice) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": c.text if c.text or not c.tool_calls else None}
    if c.refusal:
        message["refusal"] = c.refusal
    if c.reasoning:
        message["reasoning_content"] = c.reasoning
    if c.tool_calls:
        message["tool_calls"] = [call.to_openai() for call in c.tool_calls]
    return message


def _head(rid: str, model: str, result: InferenceResult, chat: bool) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{rid}" if chat else f"cmpl-{rid}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"atomr:{result.deployment}:{result.version}",
    }


def chat_response(rid: str, model: str, result: InferenceResult) -> dict[str, Any]:
    choices = [
        {
            "index": c.index,
            "message": _assistant(c),
            "logprobs": _chat_logprobs(c.logprobs),
            "finish_reason": c.finish_reason,
        }
        for c in _choices(result)
    ]
    return {**_head(rid, model, result, True), "choices": choices, "usage": _usage(result.usage)}


def completion_response(rid: str, model: str, result: InferenceResult) -> dict[str, Any]:
    choices = [
        {
            "index": c.index,
            "text": c.text,
            "logprobs": _completion_logprobs(c.logprobs),
            "finish_reason": c.finish_reason,
        }
        for c in _choices(result)
    ]
    return {**_head(rid, model, result, False), "choices": choices, "usage": _usage(result.usage)}


class StreamEncoder:
    """Server-sent events of one streaming request, exactly as OpenAI sends them."""

    def __init__(self, rid: str, model: str, chat: bool, include_usage: bool) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self._offsets: dict[int, int] = {}  # completions: each choice's text offset
        self._started: set[int] = set()  # chat: the choices whose role delta went out
        self._head = {
            "id": f"chatcmpl-{rid}" if chat else f"cmpl-{rid}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }

    def _event(self, choices: list[dict[str, Any]], usage: Usage | None = None, last: bool = False) -> bytes:
        body: dict[str, Any] = {**self._head, "choices": choices}
        if self.include_usage:
            body["usage"] = _usage(usage) if last else None
        return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"

    def start(self, index: int = 0) -> bytes:
        """A chat choice's first event (the assistant role), once per choice; nothing for completions."""
        if not self.chat or index in self._started:
            return b""
        self._started.add(index)
        choice = {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
        return self._event([choice])

    def chunk(self, c: Chunk) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {}
            if c.text:
                delta["content"] = c.text
            if c.reasoning:
                delta["reasoning_content"] = c.reasoning
            if c.refusal:
                delta["refusal"] = c.refusal
            if c.tool_calls:
                delta["tool_calls"] = [d.to_openai() for d in c.tool_calls]
            choice = {
                "index": c.index,
                "delta": delta,
                "logprobs": _chat_logprobs(c.logprobs),
                "finish_reason": c.finish_reason,
            }
            return self.start(c.index) + self._event([choice])
        offset = self._offsets.get(c.index, 0)
        choice = {
            "index": c.index,
            "text": c.text,
            "logprobs": _completion_logprobs(c.logprobs, offset),
            "finish_reason": c.finish_reason,
        }
        self._offsets[c.index] = offset + len(c.text)
        return self._event([choice])

    def end(self, usage: Usage | None) -> bytes:
        out = self._event([], usage, last=True) if self.include_usage else b""
        return out + b"data: [DONE]\n\n"

    @staticmethod
    def error(exc: InferenceError) -> bytes:
        return b"data: " + json.dumps(error_body(exc), separators=(",", ":")).encode() + b"\n\n"


# ---- errors -----------------------------------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    504: "timeout_error",
}


# atomr's error kinds whose code OpenAI spells otherwise (clients such as LiteLLM map these codes
# to their own exception classes); the other kinds are their own code.
_OPENAI_CODES = {
    "context_length": "context_length_exceeded",
    "rate_limited": "rate_limit_exceeded",
    "auth": "invalid_api_key",
}


def kind_of_code(code: str) -> str:
    """atomr's error kind for an error `code` this front answers with (the inverse of `error_code`)."""
    if code == "model_not_found":
        return "not_found"
    return next((kind for kind, spelled in _OPENAI_CODES.items() if spelled == code), code)


def error_code(exc: InferenceError) -> str:
    """The error's `code` as OpenAI spells it."""
    if exc.kind == "not_found" and exc.field == "model":
        return "model_not_found"
    return _OPENAI_CODES.get(exc.kind, exc.kind)


def error_body(exc: InferenceError) -> dict[str, Any]:
    status = exc.http_status
    kind = _ERROR_TYPES.get(status, "server_error" if status < 503 else "service_unavailable_error")
    return {"error": {"message": exc.message, "type": kind, "param": exc.field, "code": error_code(exc)}}


def error_headers(exc: InferenceError) -> dict[str, str]:
    if exc.retry_after is not None and exc.retry_after > 0:
        return {"retry-after": str(max(1, round(exc.retry_after + 0.499)))}
    return {}
