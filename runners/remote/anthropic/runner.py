"""Anthropic runner: the Messages API through the official `anthropic` SDK (`AsyncAnthropic`).

Every request is one streamed `messages.create(..., stream=True)` call. atomr messages with role
"system" are joined (blank line between) into the API's own `system` field; the others become
user/assistant messages of one text block each; a completion request (`prompt`) is sent as one
user message. `max_tokens` is required by the API and always sent (`params.max_tokens`);
`stop` goes as `stop_sequences`. The SDK 2.x no longer types the sampling fields, so
`temperature` (always: atomr's 0 means greedy, the API's default is 1), `top_p` (when < 1) and
`top_k` (when > 0) travel in `extra_body`. The API has no seed (ignored) and no logprobs: the
runner's capabilities say so (`logprobs=False`), and a request asking for them is refused with
`invalid_request` (field "logprobs") before any call, by the check every runner shares
(`atomr.core.runner.check_supported`, run by `atomr.serving.session.run_session`).

Stream events -> chunks: `message_start` gives the input tokens (plus cache reads/writes),
each `content_block_delta` of type `text_delta` is one `Chunk` (token_count 1), `message_delta`
gives `stop_reason` and the cumulative output tokens, `message_stop` ends the stream with an
empty chunk carrying finish_reason and `Usage`. Pings and non-text blocks (thinking, tool use)
add no text. A stream that ends before `message_stop` (connection dropped) is an `unavailable`
error, never a silent short answer.

Finish reasons: end_turn / stop_sequence / tool_use / pause_turn -> "stop", max_tokens /
model_context_window_exceeded -> "length", refusal -> "content_filter".

Errors: `APIStatusError` -> `error_for_status` with the HTTP status, the body's error type and
message, `retry-after-ms` / `retry-after` and the key redacted (529 -> overloaded). An `error`
event mid-stream arrives from the SDK as an `APIStatusError` whose HTTP status is 200: its error
type gives the status (overloaded_error -> 529, rate_limit_error -> 429, api_error -> 500, ...).
Timeouts -> timeout, connection failures and dropped streams -> unavailable, a body that is not
the API's JSON -> unavailable ("malformed response").

SDK notes (anthropic 2.x): `max_retries=0` turns the SDK's own retries off (atomr retries);
`timeout` is httpx2's per-phase timeout; the SDK sends the key as `Authorization: Bearer`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.errors import error_for_status, parse_retry_after, redact

from atomr.core.errors import (
    AuthError,
    InferenceError,
    InferenceTimeoutError,
    InternalError,
    InvalidRequestError,
    UnavailableError,
)
from atomr.core.types import Chunk, InferenceRequest, Usage


def _import_sdk() -> Any:
    try:
        import anthropic
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InternalError(f"the anthropic runtime needs the anthropic SDK (pip install anthropic): {exc}") from None
    return anthropic


FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}

# `error.type` of an error body -> the HTTP status the API uses for it (for `error` events
# sent mid-stream, which arrive with the stream's HTTP 200).
ERROR_TYPE_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


class AnthropicRunner(RemoteRunner):
    provider: ClassVar[str] = "anthropic"
    default_key_env: ClassVar[str] = "ANTHROPIC_API_KEY"

    def make_client(self) -> Any:
        if not self.api_key:
            env = self.options.get("api_key_env") or self.default_key_env
            raise AuthError(
                f"no Anthropic API key: set {env} or name a key file in engine.api_key_file",
                field="engine.api_key_env",
            )
        anthropic = _import_sdk()
        return anthropic.AsyncAnthropic(
            api_key=self.api_key,
            base_url=self.api_base,
            max_retries=0,  # atomr retries (runners/remote/resilience.py)
            timeout=self.timeout_s,
        )

    def request_body(self, request: InferenceRequest) -> dict[str, Any]:
        """The keyword arguments of `messages.create` for `request` (without `stream`)."""
        p = request.params
        system: list[str] = []
        messages: list[dict[str, Any]] = []
        if request.messages is not None:
            for m in request.messages:
                if m.role == "system":
                    system.append(m.content)
                else:
                    messages.append({"role": m.role, "content": [{"type": "text", "text": m.content}]})
        else:
            messages.append({"role": "user", "content": [{"type": "text", "text": request.prompt or ""}]})
        if not messages:
            raise InvalidRequestError("anthropic needs at least one user or assistant message", field="messages")
        body: dict[str, Any] = {"model": self.model_name, "max_tokens": p.max_tokens, "messages": messages}
        if system:
            body["system"] = "\n\n".join(system)
        if p.stop:
            body["stop_sequences"] = list(p.stop)
        extra: dict[str, Any] = {"temperature": p.temperature}
        if p.top_p < 1.0:
            extra["top_p"] = p.top_p
        if p.top_k > 0:
            extra["top_k"] = p.top_k
        body["extra_body"] = extra
        return body

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        body = self.request_body(request)
        events = await self.client.messages.create(stream=True, **body)
        input_tokens = output_tokens = 0
        stop_reason: str | None = None
        started = False
        try:
            async for ev in events:
                kind = getattr(ev, "type", None)
                started = True
                if kind == "content_block_delta":
                    delta = ev.delta
                    if getattr(delta, "type", None) == "text_delta" and delta.text:
                        yield Chunk(delta.text, 1)
                elif kind == "content_block_start":
                    block = ev.content_block
                    if getattr(block, "type", None) == "text" and getattr(block, "text", ""):
                        yield Chunk(block.text, 1)
                elif kind == "message_start":
                    input_tokens = _input_tokens(ev.message.usage, input_tokens)
                    output_tokens = ev.message.usage.output_tokens or 0
                elif kind == "message_delta":
                    stop_reason = ev.delta.stop_reason or stop_reason
                    input_tokens = _input_tokens(ev.usage, input_tokens)
                    output_tokens = ev.usage.output_tokens if ev.usage.output_tokens is not None else output_tokens
                elif kind == "message_stop":
                    break
            else:
                if not started:
                    ctype = events.response.headers.get("content-type", "none")
                    raise UnavailableError(
                        f"anthropic returned a malformed response: no stream events (content-type {ctype})",
                        details={"malformed": True},
                    )
                if stop_reason is None:
                    raise UnavailableError("anthropic: the stream ended before message_stop (connection dropped)")
        finally:
            await events.close()
        finish = FINISH_REASONS.get(stop_reason or "end_turn", "stop")
        yield Chunk("", 0, finish_reason=finish, usage=Usage(input_tokens, output_tokens))

    def map_error(self, exc: BaseException) -> InferenceError:
        anthropic = _import_sdk()
        secrets = [self.api_key]
        if isinstance(exc, anthropic.APIStatusError):
            kind, message = _error_fields(exc)
            status = exc.status_code
            if status < 400:  # an `error` event inside a 200 stream
                status = ERROR_TYPE_STATUS.get(kind or "", 500)
            headers = exc.response.headers
            retry_after = _retry_after(headers.get("retry-after-ms"), headers.get("retry-after"))
            text = f"{kind}: {message}" if kind else message
            return error_for_status(status, text, provider="anthropic", retry_after=retry_after, secrets=secrets)
        if isinstance(exc, anthropic.APITimeoutError):
            return InferenceTimeoutError("anthropic: the request timed out")
        if isinstance(exc, anthropic.APIConnectionError):
            cause = exc.__cause__ or exc
            return error_for_status(None, f"{type(cause).__name__}: {cause}", provider="anthropic", secrets=secrets)
        if isinstance(exc, anthropic.APIResponseValidationError | json.JSONDecodeError | UnicodeDecodeError):
            return UnavailableError(
                f"anthropic returned a malformed response: {redact(str(exc), secrets)[:300]}",
                details={"malformed": True},
            )
        transport = _transport_error(exc)
        if transport == "timeout":
            return InferenceTimeoutError("anthropic: the stream timed out")
        if transport == "transport":
            return UnavailableError(f"anthropic: the connection failed mid-stream: {redact(str(exc), secrets)[:300]}")
        return InternalError(f"anthropic: {type(exc).__name__}: {redact(str(exc), secrets)[:300]}")


def _input_tokens(usage: Any, current: int) -> int:
    """All input tokens of a usage object (plain, cache writes and cache reads); `current` if absent."""
    parts = [
        getattr(usage, name, None)
        for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    if parts[0] is None:
        return current
    return sum(p for p in parts if isinstance(p, int))


def _error_fields(exc: Any) -> tuple[str | None, str]:
    """(error.type, error.message) of an SDK status error, from its parsed body."""
    body = getattr(exc, "body", None)
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        kind = error.get("type") if isinstance(error.get("type"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        return kind, message or (kind or "no message")
    if isinstance(body, str) and body:
        return None, body[:300]
    return None, f"HTTP {getattr(exc, 'status_code', '?')}"


def _retry_after(ms: str | None, seconds: str | None) -> float | None:
    value = parse_retry_after(ms)
    if value is not None:
        return value / 1000.0
    return parse_retry_after(seconds)


def _transport_error(exc: BaseException) -> str | None:
    """'timeout' or 'transport' for an httpx / httpx2 error raised while reading a stream, else None."""
    for cls in type(exc).__mro__:
        if not cls.__module__.split(".")[0].startswith("httpx"):
            continue
        if cls.__name__ == "TimeoutException":
            return "timeout"
        if cls.__name__ in ("TransportError", "HTTPError", "StreamError"):
            return "transport"
    return None
