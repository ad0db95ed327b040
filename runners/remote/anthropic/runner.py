"""Anthropic runner: the Messages API through the official `anthropic` SDK (`AsyncAnthropic`).

Every request is one streamed `messages.create(..., stream=True)` call (a caller waiting for the
whole answer gets the same chunks, gathered by atomr: a dropped stream is seen as such, closing
it ends the generation, and the SDK wants long answers streamed). The request is written by
`messages.request_kwargs` (see `messages.py` for the whole mapping): system messages -> `system`,
text and image parts -> blocks, assistant tool calls -> `tool_use` blocks, tool messages ->
`tool_result` blocks in one user turn, tools / tool_choice / parallel_tool_calls, json_schema ->
`output_config.format`, reasoning_effort -> `output_config.effort`, user -> `metadata.user_id`,
`max_tokens` always (required by the API), stop -> `stop_sequences`, and temperature, top_p and
top_k only when the caller set them.

Honoured (`capabilities.features`): tools, tool_choice (required / a named function),
parallel_tool_calls, json_schema, images, top_k, reasoning_effort, user. Refused with
`invalid_request` naming the field, before any call (`atomr.core.runner.check_supported`):
logprobs and top_logprobs (the API has none), seed, n > 1, presence/frequency penalties,
logit_bias (the API has no such parameters), response_format json_object (the API's structured
output needs a schema) and regex, `metadata` (the API's metadata holds a user id only: send
`user`), and fields atomr does not model (passthrough), including content parts other than text
and images.

Stream events -> chunks: `message_start` gives the input tokens (plus cache writes and reads);
a `text` block's `text_delta`s are text chunks; a `tool_use` block is one tool call (OpenAI's
streaming shape: `content_block_start` gives `ToolCallDelta(k, id, name)`, each
`input_json_delta` a piece of its arguments; an input given whole in the start block is sent as
its JSON text); `thinking_delta`s are `reasoning` (thinking blocks and their signatures are kept,
by the first tool call's id, to be sent back before those calls in the next turn:
`messages.ThinkingCache`); `message_delta` gives `stop_reason` and the output tokens;
`message_stop` ends the stream with an empty chunk carrying finish_reason and
`Usage(input + cache writes + cache reads, output, cached=cache reads, reasoning=thinking
tokens when the API reports them)`. Pings add nothing. A stream that ends before `message_stop`
(connection dropped) is an `unavailable` error, never a silent short answer.

Finish reasons: end_turn / stop_sequence / pause_turn -> "stop", tool_use -> "tool_calls",
max_tokens / model_context_window_exceeded -> "length", refusal -> "content_filter".

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

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.remote.anthropic.messages import ThinkingCache, dumps_input, request_kwargs
from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.errors import error_for_status, parse_retry_after, redact

from atomr.core.errors import (
    AuthError,
    InferenceError,
    InferenceTimeoutError,
    InternalError,
    UnavailableError,
)
from atomr.core.messages import ToolCallDelta
from atomr.core.runner import RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Usage

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment


def _import_sdk() -> Any:
    try:
        import anthropic
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InternalError(f"the anthropic runtime needs the anthropic SDK (pip install anthropic): {exc}") from None
    return anthropic


FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
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


FEATURES = frozenset(
    {
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "json_schema",
        "images",
        "top_k",
        "reasoning_effort",
        "user",
        "messages_passthrough",
    }
)


class _Reader:
    """The chunks of one streamed Message, event by event (content blocks by their index)."""

    def __init__(self) -> None:
        self.input_tokens = self.output_tokens = self.cached_tokens = self.thinking_tokens = 0
        self.stop_reason: str | None = None
        self.calls: dict[int, int] = {}  # content block index -> tool call index
        self.first_call_id: str | None = None
        self.thinking_blocks: list[dict[str, Any]] = []  # to send back before this answer's calls
        self._thinking: dict[int, dict[str, Any]] = {}

    def event(self, ev: Any) -> Chunk | None:
        kind = getattr(ev, "type", None)
        if kind == "content_block_delta":
            return self._delta(ev.index, ev.delta)
        if kind == "content_block_start":
            return self._start(ev.index, ev.content_block)
        if kind == "content_block_stop":
            block = self._thinking.pop(ev.index, None)
            if block is not None:
                self.thinking_blocks.append(block)
        elif kind == "message_start":
            self._usage(ev.message.usage)
            self.output_tokens = ev.message.usage.output_tokens or 0
        elif kind == "message_delta":
            self.stop_reason = ev.delta.stop_reason or self.stop_reason
            self._usage(ev.usage)
            if ev.usage.output_tokens is not None:
                self.output_tokens = ev.usage.output_tokens
        return None

    def _start(self, index: int, block: Any) -> Chunk | None:
        kind = getattr(block, "type", None)
        if kind == "text":
            return Chunk(block.text, 1) if getattr(block, "text", "") else None
        if kind == "tool_use":
            k = self.calls[index] = len(self.calls)
            if k == 0:
                self.first_call_id = block.id
            whole = getattr(block, "input", None)
            args = dumps_input(whole) if whole else ""  # streamed input starts as {}
            return Chunk("", 1, tool_calls=(ToolCallDelta(k, block.id, block.name, args),))
        if kind == "thinking":
            self._thinking[index] = {"type": "thinking", "thinking": block.thinking or "", "signature": ""}
            if block.signature:
                self._thinking[index]["signature"] = block.signature
            return Chunk("", 1, reasoning=block.thinking) if block.thinking else None
        if kind == "redacted_thinking":
            self._thinking[index] = {"type": "redacted_thinking", "data": block.data}
        return None

    def _delta(self, index: int, delta: Any) -> Chunk | None:
        kind = getattr(delta, "type", None)
        if kind == "text_delta":
            return Chunk(delta.text, 1) if delta.text else None
        if kind == "input_json_delta":
            k = self.calls.get(index)
            if k is None or not delta.partial_json:
                return None
            return Chunk("", 1, tool_calls=(ToolCallDelta(k, arguments=delta.partial_json),))
        if kind == "thinking_delta":
            block = self._thinking.get(index)
            if block is not None:
                block["thinking"] += delta.thinking
            return Chunk("", 1, reasoning=delta.thinking) if delta.thinking else None
        if kind == "signature_delta":
            block = self._thinking.get(index)
            if block is not None:
                block["signature"] += delta.signature
        return None

    def _usage(self, usage: Any) -> None:
        """All input tokens (plain, cache writes and cache reads), cache reads and thinking tokens."""
        plain = getattr(usage, "input_tokens", None)
        if isinstance(plain, int):
            writes = getattr(usage, "cache_creation_input_tokens", None)
            reads = getattr(usage, "cache_read_input_tokens", None)
            self.input_tokens = plain + (writes if isinstance(writes, int) else 0)
            self.input_tokens += reads if isinstance(reads, int) else 0
            self.cached_tokens = reads if isinstance(reads, int) else 0
        details = getattr(usage, "output_tokens_details", None)
        thinking = getattr(details, "thinking_tokens", None)
        if isinstance(thinking, int):
            self.thinking_tokens = thinking

    def usage(self) -> Usage:
        return Usage(self.input_tokens, self.output_tokens, self.cached_tokens, self.thinking_tokens)


class AnthropicRunner(RemoteRunner):
    provider: ClassVar[str] = "anthropic"
    default_key_env: ClassVar[str] = "ANTHROPIC_API_KEY"
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True,
        logprobs=False,
        batching=True,
        chat=True,
        completion=True,
        needs_gpu=False,
        count_tokens=True,
        features=FEATURES,
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self.thinking = ThinkingCache()

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
        """The keyword arguments of `messages.create` for `request` (without `stream`): a Messages
        body as it came (only the model changed), else written from the typed request."""
        if _relayed(request):
            assert request.wire is not None
            sent = {k: v for k, v in request.wire.items() if k not in ("model", "stream")}
            # the SDK types the arguments it knows; the rest go as they are, through extra_body
            required: dict[str, Any] = {k: sent.pop(k) for k in ("messages", "max_tokens") if k in sent}
            body: dict[str, Any] = {"model": self.model_name, **required, "extra_body": sent}
        else:
            body = request_kwargs(request, self.model_name, self.thinking)
        headers = self.forwarded(request)
        if headers:
            body["extra_headers"] = headers
        return body

    async def count_tokens(self, request: InferenceRequest) -> int:
        body = self.request_body(request)
        body.pop("max_tokens", None)
        extra = body.get("extra_body")
        if isinstance(extra, dict):  # what count_tokens does not take
            for name in ("temperature", "top_p", "top_k", "stop_sequences", "metadata", "max_tokens"):
                extra.pop(name, None)

        async def call() -> Chunk:
            counted = await self.client.messages.count_tokens(**body)
            return Chunk("", 0, finish_reason="stop", usage=Usage(prompt_tokens=int(counted.input_tokens)))

        chunk = await self.once(request, call)
        return chunk.usage.prompt_tokens if chunk.usage is not None else 0

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        body = self.request_body(request)
        relay = _relayed(request)
        events = await self.client.messages.create(stream=True, **body)
        reader = _Reader()
        started = False
        last: tuple[dict[str, Any], ...] = ()
        try:
            async for ev in events:
                started = True
                raw = (ev.to_dict(mode="json"),) if relay else ()
                if getattr(ev, "type", None) == "message_stop":
                    last = raw
                    break
                chunk = reader.event(ev)
                if chunk is not None or raw:
                    yield dataclasses.replace(chunk or Chunk("", 0), wire_events=raw)
            else:
                if not started:
                    ctype = events.response.headers.get("content-type", "none")
                    raise UnavailableError(
                        f"anthropic returned a malformed response: no stream events (content-type {ctype})",
                        details={"malformed": True},
                    )
                if reader.stop_reason is None:
                    raise UnavailableError("anthropic: the stream ended before message_stop (connection dropped)")
        finally:
            await events.close()
        if reader.first_call_id is not None:
            self.thinking.put(reader.first_call_id, reader.thinking_blocks)
        finish = FINISH_REASONS.get(reader.stop_reason or "end_turn", "stop")
        yield Chunk("", 0, finish_reason=finish, usage=reader.usage(), wire_events=last)

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


def _relayed(request: InferenceRequest) -> bool:
    """Whether `request` came in Anthropic's own wire: then its body is forwarded as it came and
    the API's events go back with the chunks, for the caller to get them as they were."""
    return request.wire is not None and request.wire_api == "anthropic"


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
