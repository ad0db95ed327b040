"""The OpenAI wire format: request bodies in, response bodies, stream chunks and errors out.

Request bodies are parsed and validated in one pass by pydantic (`model_validate_json`); every
problem becomes an `InvalidRequestError` naming the parameter the way OpenAI does
(``messages[0].content``). Responses are built as plain dicts and serialized with `json.dumps`:
no model object per chunk (that is where other proxies spend their time).

Supported: text chat and completions, ``max_tokens`` / ``max_completion_tokens``, ``temperature``,
``top_p``, ``top_k`` (extension), ``seed``, ``stop``, ``stream`` with
``stream_options.include_usage``, ``logprobs`` (the chosen token's logprob; ``top_logprobs`` come
back empty). Refused with a 400 naming the parameter: ``n`` > 1, tools / functions,
``response_format`` other than text, ``logit_bias``, non-zero penalties, non-text content parts.
"""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atomr.core.errors import InferenceError, InvalidRequestError
from atomr.core.types import InferenceRequest, InferenceResult, Message, SamplingParams, TokenLogprob, Usage

# Parameters that change what the API promises; accepted only at their neutral value.
_NEUTRAL: dict[str, Any] = {
    "n": 1,
    "tools": None,
    "tool_choice": None,
    "functions": None,
    "function_call": None,
    "logit_bias": None,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "echo": False,
    "suffix": None,
    "best_of": 1,
}


class _TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


class _ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_TextPart]


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    user: str | None = None


class ChatBody(_Common):
    messages: list[_ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    response_format: dict[str, Any] | None = None


class CompletionBody(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[_TextPart]", "_TextPart", "function-after[...]") or part.startswith("list["):
            continue  # pydantic's union-branch names, not parameters
        else:
            out += f".{part}" if out else part
    return out


def _invalid(exc: ValidationError) -> InvalidRequestError:
    err = exc.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return InvalidRequestError(f"the body is not valid JSON: {err['msg']}", field="body")
    param = _param(tuple(err["loc"]))
    if err["type"] == "model_type":  # an object was expected: the body itself, or a message, stream_options...
        if not param:
            return InvalidRequestError("the body must be a JSON object", field="body")
        return InvalidRequestError(f"'{param}' must be an object", field=param)
    if err["type"] == "missing":
        return InvalidRequestError(f"'{param}' is required", field=param)
    return InvalidRequestError(f"'{param}': {err['msg']}", field=param or "body")


def _refuse_unsupported(body: BaseModel) -> None:
    extra = body.model_extra or {}
    for name, neutral in _NEUTRAL.items():
        value = extra.get(name, neutral)
        if value is not None and value != neutral and value != [] and value != {}:
            raise InvalidRequestError(f"'{name}' = {value!r} is not supported by this server", field=name)
    fmt = getattr(body, "response_format", None)
    if fmt is not None and fmt.get("type", "text") != "text":
        raise InvalidRequestError("only response_format type 'text' is supported", field="response_format.type")


def _params(body: _Common, max_tokens: int | None, logprobs: bool, default_max_tokens: int) -> SamplingParams:
    stop = body.stop
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    kw: dict[str, Any] = {"max_tokens": max_tokens or default_max_tokens, "stop": stops, "logprobs": logprobs}
    if body.temperature is not None:
        kw["temperature"] = body.temperature
    if body.top_p is not None:
        kw["top_p"] = body.top_p
    if body.top_k is not None:
        kw["top_k"] = body.top_k
    if body.seed is not None:
        kw["seed"] = body.seed
    return SamplingParams(**kw)


def parse_chat(raw: bytes, default_max_tokens: int) -> tuple[ChatBody, InferenceRequest]:
    try:
        body = ChatBody.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None
    _refuse_unsupported(body)
    messages = tuple(
        Message(
            "system" if m.role == "developer" else m.role,
            m.content if isinstance(m.content, str) else "".join(part.text for part in m.content),
        )
        for m in body.messages
    )
    params = _params(body, body.max_completion_tokens or body.max_tokens, body.logprobs, default_max_tokens)
    return body, InferenceRequest(model=body.model, messages=messages, params=params, stream=body.stream)


def parse_completion(raw: bytes, default_max_tokens: int) -> tuple[CompletionBody, InferenceRequest]:
    try:
        body = CompletionBody.model_validate_json(raw)
    except ValidationError as exc:
        raise _invalid(exc) from None
    _refuse_unsupported(body)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequestError("exactly one prompt per request is supported", field="prompt")
        prompt = prompt[0]
    params = _params(body, body.max_tokens, body.logprobs is not None, default_max_tokens)
    return body, InferenceRequest(model=body.model, prompt=prompt, params=params, stream=body.stream)


# ---- responses ------------------------------------------------------------------------------


def _usage(u: Usage | None) -> dict[str, int] | None:
    if u is None:
        return None
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def _chat_logprobs(lps: tuple[TokenLogprob, ...] | None) -> dict[str, Any] | None:
    if lps is None:
        return None
    return {"content": [_chat_token(t) for t in lps]}


def _chat_token(t: TokenLogprob) -> dict[str, Any]:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode()), "top_logprobs": []}


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
        "top_logprobs": [{} for _ in lps],
        "text_offset": offsets,
    }


def chat_response(rid: str, model: str, result: InferenceResult) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"atomr:{result.deployment}:{result.version}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "logprobs": _chat_logprobs(result.logprobs),
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": _usage(result.usage),
    }


def completion_response(rid: str, model: str, result: InferenceResult) -> dict[str, Any]:
    return {
        "id": f"cmpl-{rid}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": f"atomr:{result.deployment}:{result.version}",
        "choices": [
            {
                "index": 0,
                "text": result.text,
                "logprobs": _completion_logprobs(result.logprobs),
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": _usage(result.usage),
    }


class StreamEncoder:
    """Server-sent events of one streaming request, exactly as OpenAI sends them."""

    def __init__(self, rid: str, model: str, chat: bool, include_usage: bool) -> None:
        self.chat = chat
        self.include_usage = include_usage
        self._offset = 0
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

    def start(self) -> bytes:
        """The first event of a chat stream (the assistant role); nothing for completions."""
        if not self.chat:
            return b""
        choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        return self._event([choice])

    def chunk(self, text: str, logprobs: tuple[TokenLogprob, ...] | None, finish_reason: str | None) -> bytes:
        if self.chat:
            delta = {"content": text} if text else {}
            choice = {"index": 0, "delta": delta, "logprobs": _chat_logprobs(logprobs), "finish_reason": finish_reason}
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": _completion_logprobs(logprobs, self._offset),
                "finish_reason": finish_reason,
            }
            self._offset += len(text)
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
}


# atomr's error kinds whose code OpenAI spells otherwise (clients such as LiteLLM map these codes
# to their own exception classes); the other kinds are their own code.
_OPENAI_CODES = {
    "context_length": "context_length_exceeded",
    "rate_limited": "rate_limit_exceeded",
    "auth": "invalid_api_key",
}


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
