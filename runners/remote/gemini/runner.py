"""Gemini runner: the Gemini API (Google AI) through the official `google-genai` SDK, async.

Model references are "gemini/<name>" or "google/<name>". Every request is one
`client.aio.models.generate_content_stream` call (`POST /{version}/models/<name>:
streamGenerateContent?alt=sse`; a caller waiting for the whole answer gets the same chunks,
gathered by atomr). The request is written by `messages.py` (see there for the whole mapping):
system messages -> `system_instruction`, user -> "user" (text, images as inline data), assistant
-> "model" (text, `function_call` parts with their thought signatures), tool messages ->
`function_response` parts; a completion request (`prompt`) is one user content. The
`GenerateContentConfig` carries only what the caller set (max_output_tokens, temperature, top_p,
top_k, stop_sequences, seed, candidate_count, penalties, logprobs, JSON output, thinking, tools,
tool_config).

Honoured (`capabilities.features`): tools, tool_choice (ANY, and `allowed_function_names` for a
named function), json_object (`response_mime_type` application/json), json_schema (and
`response_json_schema`), images (data URLs), n (`candidate_count`: each candidate is a choice),
presence/frequency penalties, top_logprobs (`logprobs` = N: each token's top candidates), top_k,
seed, reasoning_effort (a thinking level with the thoughts returned; "none" a thinking budget of
0). Refused with `invalid_request` naming the field, before any call
(`atomr.core.runner.check_supported`): parallel_tool_calls (no such switch), logit_bias, user and
metadata (no such fields), response_format regex, fields atomr does not model (passthrough);
while writing the request: image links (`messages[i].content[j]`: the API reads only files
uploaded to Google), tool arguments that are not a JSON object, a tool result whose
`tool_call_id` names no earlier call.

Stream -> chunks: for every candidate (its `index` is the chunk's), the text parts of one streamed
response are one `Chunk`, thought parts its `reasoning`, and each `function_call` part one whole
tool call (`ToolCallDelta(k, id, name, json.dumps(args))`; id: Gemini's when it gives one, else
`call_<24 hex>`; the part's thought signature is kept to be sent back with the call). token_count
is 1, or with logprobs the number of chosen tokens that response reports. With logprobs, each
response's candidate carries `logprobs_result` for the tokens of that response:
`chosen_candidates` become the chunk's `TokenLogprob`s, in order, each with its step's
`top_candidates` when the caller asked for top_logprobs; each choice's last chunk then has an
empty tuple. Without logprobs the chunks' logprobs are None. Each choice ends with an empty chunk
carrying its finish_reason, the last of them `Usage(prompt_token_count, candidates_token_count +
thoughts_token_count, cached=cached_content_token_count, reasoning=thoughts_token_count)` from the
last `usage_metadata` seen. A stream that ends without a finishReason (connection dropped) is an
`unavailable` error, never a silent short answer. A prompt blocked by
`prompt_feedback.block_reason` ends with finish_reason "content_filter".

Embeddings (`embed`): all inputs of a request in ONE `client.aio.models.embed_content` call (the
Gemini API's `POST /{version}/models/<name>:batchEmbedContents`, one request per input, each
input its own `Content` so that no two are merged into one vector), behind the same retries,
breaker and deadline as generation (`stream` answers an embedding request with its one chunk).
`dimensions` is sent as `output_dimensionality` (capability "dimensions"); Gemini cuts its
vectors without scaling them back to unit length, so atomr does (`atomr.core.vectors.shorten`),
as OpenAI's `dimensions` gives them. Usage: `usage_metadata.prompt_token_count` when the API
gives it, else 0. `user` has no counterpart and is refused by field.

Finish reasons: STOP -> "stop" ("tool_calls" when the candidate called functions), MAX_TOKENS ->
"length", SAFETY / RECITATION / BLOCKLIST / PROHIBITED_CONTENT / SPII / IMAGE_* / MODEL_ARMOR ->
"content_filter", anything else -> "stop".

Errors: `google.genai.errors.APIError` (`.code`, `.status`, `.message`) -> `error_for_status`
with the key redacted; Google answers a bad key with 400 INVALID_ARGUMENT "API key not valid"
(reason API_KEY_INVALID), mapped here to `auth`; "input token count ... exceeds the maximum number
of tokens" is `context_length`; the retry delay comes from a `retry-after` header or the body's
`google.rpc.RetryInfo.retryDelay`. An error sent inside the stream (`data: {"error": ...}`) raises
the same `APIError`. Unparseable bodies -> unavailable ("malformed response"); httpx2 timeouts ->
timeout, other transport failures -> unavailable.

SDK notes (google-genai 3.x): without `HttpOptions.retry_options` the SDK makes one attempt but
retries an aiohttp connection error once by itself after 1-10 s; `retry_options=
HttpRetryOptions(attempts=1)` turns every SDK retry off (atomr retries). With aiohttp installed
the SDK uses it for async calls, and its `HttpOptions.timeout` then bounds the whole stream; this
runner hands the SDK its own `httpx2.AsyncClient` instead, so the timeout is per phase (connect,
read between chunks) as with the other providers; that client belongs to the event loop that
calls the runner (one loop from `load` to `unload`, as the runner host runs it). Automatic
function calling and automatic continuation (which re-sends a stream cut before any content) are
off. The SDK's default API version is "v1" (env GOOGLE_GENAI_API_VERSION changes it);
`engine.api_version` pins one.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.errors import error_for_status, parse_retry_after, redact
from atomr.runners.remote.gemini.messages import GENERATED_ID, CallMemory, config_of, contents_of

from atomr.core.errors import (
    AuthError,
    ContextLengthError,
    InferenceError,
    InferenceTimeoutError,
    InternalError,
    InvalidRequestError,
    UnavailableError,
)
from atomr.core.messages import ToolCallDelta
from atomr.core.runner import RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, TokenLogprob, Usage
from atomr.core.vectors import pack_vector, shorten

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment


def _import_sdk() -> tuple[Any, Any, Any]:
    try:
        from google import genai
        from google.genai import errors, types
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InternalError(f"the gemini runtime needs google-genai (pip install google-genai): {exc}") from None
    return genai, types, errors


FILTER_REASONS = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
        "MODEL_ARMOR",
    }
)
LENGTH_REASONS = frozenset({"MAX_TOKENS"})

_CONTEXT = re.compile(r"input token count.*exceeds the maximum|exceeds the maximum number of tokens", re.I | re.S)
_BAD_KEY = re.compile(r"API key not valid|API_KEY_INVALID", re.I)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def finish_reason_of(reason: Any) -> str:
    """atomr's finish_reason for a Gemini FinishReason (enum or string)."""
    name = str(getattr(reason, "value", reason) or "STOP").upper()
    if name in LENGTH_REASONS:
        return "length"
    if name in FILTER_REASONS:
        return "content_filter"
    return "stop"


def chosen_logprobs(result: Any) -> tuple[TokenLogprob, ...]:
    """The chosen tokens' logprobs from a candidate's `LogprobsResult` (empty when it has none)."""
    chosen = getattr(result, "chosen_candidates", None) or ()
    return tuple(TokenLogprob(c.token or "", float(c.log_probability)) for c in chosen if c.log_probability is not None)


def token_logprobs(result: Any) -> tuple[TokenLogprob, ...]:
    """The chosen tokens' logprobs, each with its step's top candidates when the result has them."""
    chosen = chosen_logprobs(result)
    steps = getattr(result, "top_candidates", None) or ()
    if not steps or len(steps) != len(chosen):
        return chosen
    return tuple(
        TokenLogprob(
            lp.token,
            lp.logprob,
            tuple(
                TokenLogprob(c.token or "", float(c.log_probability))
                for c in step.candidates or ()
                if c.log_probability is not None
            ),
        )
        for lp, step in zip(chosen, steps, strict=True)
    )


async def in_own_task(items: AsyncIterator[Any]) -> AsyncGenerator[Any, None]:
    """`items`, read by a task of its own, so that closing this iterator cancels the read in flight.

    google-genai's stream is a chain of async generators whose innermost owns the HTTP response;
    closing the outermost (what leaving an `async for` early and `aclose` do) leaves the response
    open and the provider generating to the end, while a cancelled read closes it. One item is read
    ahead at most.
    """
    queue: asyncio.Queue[tuple[bool, Any]] = asyncio.Queue(maxsize=1)

    async def pump() -> None:
        try:
            async for item in items:
                await queue.put((True, item))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, who raises it
            await queue.put((False, exc))
            return
        await queue.put((False, None))

    task = asyncio.ensure_future(pump())
    try:
        while True:
            ok, value = await queue.get()
            if ok:
                yield value
            elif value is None:
                return
            else:
                raise value
    finally:
        task.cancel()
        await asyncio.wait([task])


FEATURES = frozenset(
    {
        "tools",
        "tool_choice",
        "json_object",
        "json_schema",
        "images",
        "n",
        "penalties",
        "top_logprobs",
        "top_k",
        "seed",
        "reasoning_effort",
        "dimensions",
    }
)


class _Reader:
    """Chunks of the streamed responses of one call: every candidate (choice), text, thoughts as
    reasoning, function calls as whole tool calls, logprobs; then each choice's finish."""

    def __init__(self, want_logprobs: bool, memory: CallMemory, top: bool = False) -> None:
        self.want_logprobs = want_logprobs
        self.top = top  # with each token, its step's top candidates (top_logprobs)
        self.memory = memory
        self.usage: Any = None
        self.blocked = False
        self.finishes: dict[int, str] = {}
        self.calls: dict[int, int] = {}  # candidate -> tool calls so far

    def response(self, response: Any) -> Iterator[Chunk]:
        self.usage = response.usage_metadata or self.usage
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason:
            self.blocked = True
        for position, candidate in enumerate(response.candidates or ()):
            index = candidate.index if isinstance(candidate.index, int) else position
            chunk = self._candidate(index, candidate)
            if chunk is not None:
                yield chunk
            if candidate.finish_reason:
                self.finishes[index] = finish_reason_of(candidate.finish_reason)

    def _candidate(self, index: int, candidate: Any) -> Chunk | None:
        parts = (candidate.content.parts if candidate.content is not None else None) or ()
        text = "".join(part.text for part in parts if part.text and not part.thought)
        reasoning = "".join(part.text for part in parts if part.text and part.thought)
        deltas: list[ToolCallDelta] = []
        for part in parts:
            fn = part.function_call
            if fn is None:
                continue
            k = self.calls.get(index, 0)
            self.calls[index] = k + 1
            call_id = fn.id or f"{GENERATED_ID}{uuid.uuid4().hex[:24]}"
            self.memory.put(call_id, part.thought_signature, own_id=bool(fn.id))
            args = json.dumps(fn.args or {}, ensure_ascii=False, separators=(",", ":"))
            deltas.append(ToolCallDelta(k, call_id, fn.name or "", args))
        if not (text or reasoning or deltas):
            return None
        if self.want_logprobs:
            result = candidate.logprobs_result
            lps = token_logprobs(result) if self.top else chosen_logprobs(result)
            return Chunk(text, max(1, len(lps)), lps, index=index, tool_calls=tuple(deltas), reasoning=reasoning)
        return Chunk(text, 1, index=index, tool_calls=tuple(deltas), reasoning=reasoning)

    def end(self) -> Iterator[Chunk]:
        if self.blocked and not self.finishes:
            self.finishes[0] = "content_filter"
        if not self.finishes:
            raise UnavailableError("gemini: the stream ended without a finishReason (connection dropped)")
        u = self.usage
        thoughts = (u.thoughts_token_count or 0) if u is not None else 0
        usage = Usage(
            (u.prompt_token_count or 0) if u is not None else 0,
            ((u.candidates_token_count or 0) + thoughts) if u is not None else 0,
            (u.cached_content_token_count or 0) if u is not None else 0,
            thoughts,
        )
        last = max(self.finishes)
        for index in sorted(self.finishes):
            finish = self.finishes[index]
            if finish == "stop" and self.calls.get(index):
                finish = "tool_calls"
            if self.blocked:
                finish = "content_filter"
            lps = () if self.want_logprobs else None
            yield Chunk("", 0, lps, finish_reason=finish, usage=usage if index == last else None, index=index)


class GeminiRunner(RemoteRunner):
    provider: ClassVar[str] = "gemini"
    default_key_env: ClassVar[str] = "GEMINI_API_KEY"
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True,
        logprobs=True,
        batching=True,
        chat=True,
        completion=True,
        needs_gpu=False,
        embeddings=True,
        features=FEATURES,
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self._http: Any = None  # the httpx2.AsyncClient handed to the SDK
        self.calls = CallMemory()  # thought signatures and Gemini's call ids, to send back

    def make_client(self) -> Any:
        if not self.api_key:
            env = self.options.get("api_key_env") or self.default_key_env
            raise AuthError(
                f"no Gemini API key: set {env} or name a key file in engine.api_key_file",
                field="engine.api_key_env",
            )
        genai, types, _ = _import_sdk()
        import httpx2

        self._http = httpx2.AsyncClient(timeout=self.timeout_s)
        options: dict[str, Any] = {
            "timeout": max(1, int(self.timeout_s * 1000)),  # milliseconds
            "retry_options": types.HttpRetryOptions(attempts=1),  # atomr retries
            "httpx_async_client": self._http,
        }
        if self.api_base:
            options["base_url"] = self.api_base
        if self.options.get("api_version"):
            options["api_version"] = str(self.options["api_version"])
        return genai.Client(api_key=self.api_key, vertexai=False, http_options=types.HttpOptions(**options))

    async def unload(self) -> None:
        if self.client is not None:
            await self.client.aio.aclose()
            self.client.close()
        if self._http is not None:
            await self._http.aclose()

    def request_parts(self, request: InferenceRequest) -> tuple[list[Any], str | None, Any]:
        """(contents, system instruction, GenerateContentConfig) for `request` (see `messages.py`)."""
        _, types, _ = _import_sdk()
        contents, instruction = contents_of(types, request, self.calls)
        if not contents:
            raise InvalidRequestError("gemini needs at least one user or assistant message", field="messages")
        return contents, instruction, config_of(types, request, instruction)

    async def embed(self, request: InferenceRequest) -> Chunk:
        """All inputs in one provider call, behind `generate`'s retries, breaker and deadline."""
        (chunk,) = [c async for c in self.generate(request)]
        return chunk

    async def embeddings(self, request: InferenceRequest) -> Chunk:
        """One `embed_content` call (`:batchEmbedContents`) for every input of `request`."""
        _, types, _ = _import_sdk()
        inputs = request.inputs or ()
        contents = [types.Content(parts=[types.Part(text=text)]) for text in inputs]
        wanted = request.dimensions
        config = types.EmbedContentConfig(output_dimensionality=wanted) if wanted is not None else None
        answer = await self.client.aio.models.embed_content(model=self.model_name, contents=contents, config=config)
        found = [e.values for e in answer.embeddings or () if e.values]
        if len(found) != len(inputs):
            raise UnavailableError(
                f"gemini returned a malformed response: {len(found)} embeddings for {len(inputs)} inputs",
                details={"malformed": True},
            )
        usage = answer.usage_metadata
        return Chunk(
            "",
            token_count=0,
            finish_reason="stop",
            usage=Usage(prompt_tokens=(usage.prompt_token_count or 0) if usage is not None else 0),
            embeddings=tuple(pack_vector(shorten(v, wanted) if wanted is not None else v) for v in found),
        )

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        if request.task == "embed":
            yield await self.embeddings(request)
            return
        contents, _, config = self.request_parts(request)
        responses = await self.client.aio.models.generate_content_stream(
            model=self.model_name, contents=contents, config=config
        )
        reader = _Reader(request.params.logprobs, self.calls, top=bool(request.params.top_logprobs))
        pumped = in_own_task(responses)
        try:
            async for response in pumped:
                for chunk in reader.response(response):
                    yield chunk
        finally:
            await pumped.aclose()  # cancels a read in flight: that closes the HTTP response
            await responses.aclose()
        for chunk in reader.end():
            yield chunk

    def map_error(self, exc: BaseException) -> InferenceError:
        _, _, errors = _import_sdk()
        secrets = [self.api_key]
        if isinstance(exc, errors.UnknownApiResponseError | json.JSONDecodeError | UnicodeDecodeError):
            return UnavailableError(
                f"gemini returned a malformed response: {redact(str(exc), secrets)[:300]}",
                details={"malformed": True},
            )
        if isinstance(exc, errors.APIError):
            status = exc.code if isinstance(exc.code, int) else 500
            message = exc.message if isinstance(exc.message, str) else ""
            text = f"{exc.status}: {message}" if exc.status else message
            if status == 400 and (_BAD_KEY.search(text) or _BAD_KEY.search(json.dumps(exc.details, default=str))):
                status = 401
            err = error_for_status(status, text, provider="gemini", retry_after=_retry_after(exc), secrets=secrets)
            if err.kind == "invalid_request" and _CONTEXT.search(text):
                return ContextLengthError(err.message, retry_after=err.retry_after, details=err.details)
            return err
        transport = _transport_error(exc)
        if transport == "timeout":
            return InferenceTimeoutError("gemini: the request timed out")
        if transport == "connect":
            return error_for_status(None, f"{type(exc).__name__}: {exc}", provider="gemini", secrets=secrets)
        if transport == "transport":
            return UnavailableError(f"gemini: the connection failed mid-stream: {redact(str(exc), secrets)[:300]}")
        return InternalError(f"gemini: {type(exc).__name__}: {redact(str(exc), secrets)[:300]}")


def _retry_after(exc: Any) -> float | None:
    """Seconds to wait from a `retry-after` header, else the body's RetryInfo `retryDelay` ("1.5s")."""
    headers = getattr(getattr(exc, "response", None), "headers", None)
    if headers is not None:
        lowered = {str(k).lower(): v for k, v in dict(headers).items()}
        value = parse_retry_after(lowered.get("retry-after"))
        if value is not None:
            return value
    details = exc.details if isinstance(exc.details, dict) else {}
    error = details.get("error", details)
    for item in (error.get("details") if isinstance(error, dict) else None) or ():
        if isinstance(item, dict) and isinstance(item.get("retryDelay"), str):
            match = _DURATION.match(item["retryDelay"])
            if match:
                return float(match.group(1))
    return None


def _transport_error(exc: BaseException) -> str | None:
    """'timeout', 'connect' or 'transport' for an httpx / httpx2 error, else None."""
    names = [cls.__name__ for cls in type(exc).__mro__ if cls.__module__.split(".")[0].startswith("httpx")]
    if "TimeoutException" in names:
        return "timeout"
    if "ConnectError" in names:
        return "connect"
    if any(n in names for n in ("TransportError", "HTTPError", "StreamError")):
        return "transport"
    return None
