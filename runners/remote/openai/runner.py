"""OpenAI, and any server speaking its API (vLLM, llama.cpp, a proxy).

The wire is spoken by one of two transports (`transport.py`, `engine.transport`): ``lean`` (the
default: one pooled aiohttp session, SSE parsed there; about 0.5 ms less added latency per call
than the SDK on this machine) or ``sdk`` (the official `AsyncOpenAI` client's generic `post`, the reference:
the same runner contract suite passes on both). One per replica, `base_url` from
`engine.api_base`, no retries of its own (atomr retries, see `resilience.py`). Chat requests go to
`/chat/completions`, prompt requests to the legacy `/completions`. Streaming requests stream from
the provider too, with `stream_options={"include_usage": True}`, so the last chunk carries the
provider's own usage; requests whose caller waits for the whole answer get it as one JSON body
(cheaper on both sides).

Embeddings (`embed`): all inputs of a request in ONE `POST /embeddings` call, behind the same
retries, breaker and deadline as generation (`stream` answers an embedding request with its one
chunk), with `encoding_format: "base64"` on the wire: the provider sends each vector as base64 of
float32 little-endian, which is exactly how atomr carries vectors, so no number is parsed here (a
compatible server that answers floats anyway is read too). `dimensions` and `user` are passed on;
usage is the provider's `prompt_tokens`.

Faithful pass-through (`atomr.runners.remote.openai_format`): the body is forwarded as the
caller sent it (tools, response_format, n, penalties, reasoning_effort, fields atomr does not
model...); a parameter the caller did not set is not sent, so the provider's default applies.
`engine.max_tokens_param: max_completion_tokens` renames `max_tokens` (OpenAI's reasoning models
require it); `engine.forward_headers` lists request headers passed on as the caller sent them.
Answers: every choice, tool calls, reasoning text, refusals, logprobs and usage details come back
as chunks. Without a usage chunk (a compatible server that ignores `stream_options`) usage falls
back to the number of deltas and 0 prompt tokens.

Errors (`map_error`): an HTTP status goes through `error_for_status` with the provider's own
message (`error.message` of the body; `code: context_length_exceeded` and content-filter codes
are honoured even when the message's words are not), retry-after from `retry-after-ms` or
`retry-after` (seconds or an HTTP date); a connection failure is `unavailable`, the SDK's timeout
`timeout`. A malformed answer - a body that is not JSON where JSON was due, an SSE event whose
data is not JSON, a stream that ends before any finish_reason (the connection dropped or the
server sent garbage) - is `unavailable`: it is the provider's (or a proxy's) fault, not the
caller's, a retry may well succeed (atomr retries only until the first chunk reached the
caller, so text is never repeated), and it counts against the circuit breaker. The API key is
removed from every message.

Engine options, besides those of `RemoteRunner`:
  max_tokens_param  "max_tokens" (default) or "max_completion_tokens"
  organization, project  sent as OpenAI's organization / project headers
  transport         "lean" (default) or "sdk"
  max_connections   open connections to the server at most (lean; default 1000)
  max_response_bytes  what one answer may take, a whole body or a stream's events added up
                    (lean; default 32 MiB): past it the answer is not read further (malformed)
  http_client       with the sdk transport: "aiohttp" (default, the SDK's aiohttp client) or "httpx"
Without any key, a deployment with `api_base` sends the placeholder key "EMPTY" (what
OpenAI-compatible servers without auth expect); one without `api_base` fails to load (`auth`).
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar

import openai
from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.errors import error_for_status, parse_retry_after, redact
from atomr.runners.remote.openai.transport import LeanTransport, SdkTransport, StatusError, StreamError, decode
from atomr.runners.remote.openai_format import AnswerReader, malformed, request_body

from atomr.core.errors import (
    AuthError,
    ConfigError,
    ContentFilteredError,
    ContextLengthError,
    InferenceError,
    InferenceTimeoutError,
    InternalError,
    UnavailableError,
)
from atomr.core.runner import OPENAI_WIRE, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Usage
from atomr.core.vectors import pack_vector

CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length"})
FILTER_CODES = frozenset({"content_filter", "content_policy_violation"})
NO_KEY_PLACEHOLDER = "EMPTY"
OPENAI_BASE = "https://api.openai.com/v1"
DEFAULT_MAX_RESPONSE_BYTES = 32 << 20  # engine.max_response_bytes


def retry_after_from(headers: Mapping[str, str] | None) -> float | None:
    """Seconds to wait from `retry-after-ms`, else `retry-after` (seconds or an HTTP date)."""
    if not headers:
        return None
    ms = parse_retry_after(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = headers.get("retry-after")
    seconds = parse_retry_after(raw)
    if seconds is not None or not raw:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def status_message(exc: openai.APIError | StatusError | StreamError) -> tuple[str, str | None]:
    """The provider's own error message and code from an SDK error (its body is the `error` object)."""
    body = exc.body
    message = exc.message
    code = exc.code
    if isinstance(body, Mapping):
        nested = body.get("error")
        inner: Mapping[str, Any] = nested if isinstance(nested, Mapping) else body
        text = inner.get("message")
        if isinstance(text, str) and text:
            message = text
        if inner.get("code") is not None:
            code = str(inner.get("code"))
    elif isinstance(body, str) and body.strip():
        message = f"{message}: {body.strip()[:300]}"
    return message, code


def refine(err: InferenceError, code: str | None) -> InferenceError:
    """A 400-class error whose provider code says context length or content filter, as that kind."""
    if err.kind not in ("invalid_request", "context_length", "content_filtered") or code is None:
        return err
    cls: type[InferenceError] | None = None
    if code in CONTEXT_CODES:
        cls = ContextLengthError
    elif code in FILTER_CODES:
        cls = ContentFilteredError
    if cls is None or err.kind == cls.kind:
        return err
    return cls(err.message, retry_after=err.retry_after, details=err.details)


def embeddings_chunk(provider: str, answer: object, count: int) -> Chunk:
    """The one chunk of an OpenAI-format embeddings answer (``{"data": [{"index", "embedding"}],
    "usage"}``): a vector per input, in input order; an embedding is base64 of float32 (as asked)
    or a list of numbers (a server that ignores ``encoding_format``)."""
    data = answer.get("data") if isinstance(answer, Mapping) else None
    if not isinstance(data, list) or len(data) != count:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise malformed(provider, f"expected {count} embeddings in data, got {got}")
    vectors: list[bytes | None] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, Mapping) else None
        if not isinstance(index, int) or not 0 <= index < count or vectors[index] is not None:
            raise malformed(provider, f"an embedding with a bad or repeated index: {index!r}")
        vectors[index] = _vector_bytes(provider, item.get("embedding"))
    usage = answer.get("usage") if isinstance(answer, Mapping) else None
    prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, Mapping) else None
    return Chunk(
        "",
        token_count=0,
        finish_reason="stop",
        usage=Usage(prompt_tokens=prompt_tokens if isinstance(prompt_tokens, int) else 0),
        embeddings=tuple(v for v in vectors if v is not None),
    )


def _vector_bytes(provider: str, embedding: object) -> bytes:
    if isinstance(embedding, str):
        try:
            raw = base64.b64decode(embedding, validate=True)
        except binascii.Error:
            raw = b"?"  # refused below
        if raw and len(raw) % 4 == 0:
            return raw
    elif isinstance(embedding, list) and embedding and all(isinstance(x, int | float) for x in embedding):
        return pack_vector(embedding)
    raise malformed(provider, "an embedding that is neither base64 of float32 nor a list of numbers")


class OpenAIRunner(RemoteRunner):
    provider: ClassVar[str] = "openai"
    default_key_env: ClassVar[str] = "OPENAI_API_KEY"
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=True,
        chat=True,
        completion=True,
        needs_gpu=False,
        embeddings=True,
        features=OPENAI_WIRE,
    )

    def make_client(self) -> Any:
        key = self.api_key
        if not key:
            if not self.api_base:
                env = self.options.get("api_key_env") or self.default_key_env
                raise AuthError(
                    f"{self.provider}: no API key: set {env} or name a file in engine.api_key_file",
                    field="engine.api_key_env",
                )
            key = NO_KEY_PLACEHOLDER
        param = self.options.get("max_tokens_param", "max_tokens")
        if param not in ("max_tokens", "max_completion_tokens"):
            raise ConfigError(
                f"engine.max_tokens_param must be max_tokens or max_completion_tokens, got {param!r}",
                field="engine.max_tokens_param",
            )
        transport = self.options.get("transport", "lean")
        if transport not in ("lean", "sdk"):
            raise ConfigError(f"engine.transport must be lean or sdk, got {transport!r}", field="engine.transport")
        if transport == "lean":
            return LeanTransport(
                self.api_base or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE,
                self.auth_headers(key),
                self.timeout_s,
                int(self.options.get("max_connections", 1000)),
                self._max_response_bytes(),
            )
        http_client = self.options.get("http_client", "aiohttp")
        if http_client not in ("aiohttp", "httpx"):
            raise ConfigError(
                f"engine.http_client must be aiohttp or httpx, got {http_client!r}", field="engine.http_client"
            )
        sdk = openai.AsyncOpenAI(
            api_key=key,
            base_url=self.api_base,
            organization=self.options.get("organization"),
            project=self.options.get("project"),
            timeout=self.timeout_s,
            max_retries=0,
            # httpx's connection pool checks every pooled connection on each request (a cost that
            # grows with concurrency); the SDK's aiohttp transport does not.
            http_client=openai.DefaultAioHttpClient(timeout=self.timeout_s) if http_client == "aiohttp" else None,
        )
        return SdkTransport(sdk)

    def _max_response_bytes(self) -> int:
        value = self.options.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
            raise ConfigError(
                f"engine.max_response_bytes must be an integer of at least 1024, got {str(value)[:40]!r}",
                field="engine.max_response_bytes",
            )
        return value

    def auth_headers(self, key: str) -> dict[str, str]:
        """The headers the SDK would send for the key, organization and project."""
        headers = {"Authorization": f"Bearer {key}", "User-Agent": "atomr"}
        if self.options.get("organization"):
            headers["OpenAI-Organization"] = str(self.options["organization"])
        if self.options.get("project"):
            headers["OpenAI-Project"] = str(self.options["project"])
        return headers

    # ---- requests ----

    async def embed(self, request: InferenceRequest) -> Chunk:
        """All inputs in one provider call, behind `generate`'s retries, breaker and deadline."""
        (chunk,) = [c async for c in self.generate(request)]
        return chunk

    async def embeddings(self, request: InferenceRequest) -> Chunk:
        """One `POST /embeddings` for every input of `request`."""
        inputs = list(request.inputs or ())
        body: dict[str, Any] = {"model": self.model_name, "input": inputs, "encoding_format": "base64"}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        if request.user is not None:
            body["user"] = request.user
        answer = await self.client.post("/embeddings", body, self.forwarded(request))
        if isinstance(answer, str):
            raise malformed(self.provider, f"expected JSON, got: {redact(answer[:200], [self.api_key])!r}")
        return embeddings_chunk(self.provider, answer, len(inputs))

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        if request.task == "embed":
            yield await self.embeddings(request)
            return
        chat = request.is_chat
        body = request_body(request, self.model_name, self.options.get("max_tokens_param", "max_tokens"))
        path = "/chat/completions" if chat else "/completions"
        reader = AnswerReader(self.provider, chat, request.params.logprobs)
        headers = self.forwarded(request)
        if not request.stream:
            for chunk in self.whole_answer(reader, await self.client.post(path, body, headers)):
                yield chunk
            return
        async with self.client.stream(path, body, headers) as reply:
            if reply.body is not None:  # the server ignored stream=true (or sent something else)
                for chunk in self.whole_answer(reader, decode(reply.body)):
                    yield chunk
                return
            async for event in reply.events:  # an `error` event raises (APIError / StreamError)
                for chunk in reader.event(event):
                    yield chunk
            for chunk in reader.end():
                yield chunk

    def whole_answer(self, reader: AnswerReader, data: object) -> Iterator[Chunk]:
        """Chunks of a JSON answer (decoded by the SDK; a body that was not JSON comes as its text)."""
        if isinstance(data, str):
            shown = redact(data[:200], [self.api_key])
            raise malformed(self.provider, f"expected JSON or an SSE stream, got: {shown!r}")
        if isinstance(data, Mapping) and not data.get("choices") and isinstance(data.get("error"), Mapping):
            said = redact(str(data["error"].get("message") or data["error"]), [self.api_key])
            raise UnavailableError(f"{self.provider}: the provider answered 200 with an error: {said}")
        return reader.whole(data)

    # ---- errors ----

    def map_error(self, exc: BaseException) -> InferenceError:
        secrets = [self.api_key]
        if isinstance(exc, openai.APIStatusError | StatusError):
            message, code = status_message(exc)
            headers = exc.headers if isinstance(exc, StatusError) else exc.response.headers
            err = error_for_status(
                exc.status_code,
                message,
                provider=self.provider,
                retry_after=retry_after_from(headers),
                secrets=secrets,
            )
            return refine(err, code)
        refused = _connection_error_in(exc)
        if isinstance(exc, openai.APITimeoutError | TimeoutError) and refused is None:
            return InferenceTimeoutError(
                f"{self.provider}: no answer within {self.timeout_s:g} s (engine.timeout_s)", details={"status": None}
            )
        if isinstance(exc, openai.APIConnectionError):
            # (the aiohttp transport reports a refused connection as a connect timeout)
            cause = refused or exc.__cause__ or exc.__context__
            reason = f"{exc.message} ({type(cause).__name__}: {cause})" if cause else exc.message
            return error_for_status(None, reason, provider=self.provider, secrets=secrets)
        if _is_client_error(exc):  # aiohttp's: refused, reset, a body cut short
            return error_for_status(None, f"{type(exc).__name__}: {exc}", provider=self.provider, secrets=secrets)
        if isinstance(exc, openai.APIResponseValidationError):
            return malformed(self.provider, redact(exc.message, secrets))
        if isinstance(exc, openai.APIError | StreamError):
            # an `error` event inside a stream that had started with 200
            message, _code = status_message(exc)
            return UnavailableError(
                f"{self.provider}: the provider reported an error mid-stream: {redact(message, secrets)}"
            )
        if isinstance(exc, ValueError):  # pydantic.ValidationError is one too
            # json.JSONDecodeError: an SSE event whose data is not JSON
            return malformed(self.provider, f"{type(exc).__name__}: {redact(str(exc), secrets)}")
        return InternalError(f"{self.provider}: {type(exc).__name__}: {redact(str(exc), secrets)}")


def _connection_error_in(exc: BaseException) -> ConnectionError | None:
    """A refused or reset connection among the causes of `exc`, if any."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ConnectionError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _is_client_error(exc: BaseException) -> bool:
    """An aiohttp client error (aiohttp is imported only where the lean transport is used)."""
    aiohttp = sys.modules.get("aiohttp")
    return aiohttp is not None and isinstance(exc, aiohttp.ClientError)
