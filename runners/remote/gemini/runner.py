"""Gemini runner: the Gemini API (Google AI) through the official `google-genai` SDK, async.

Model references are "gemini/<name>" or "google/<name>". Every request is one
`client.aio.models.generate_content_stream` call (`POST /{version}/models/<name>:
streamGenerateContent?alt=sse`). atomr messages with role "system" are joined (blank line
between) into `system_instruction`; user messages keep the role "user", assistant messages take
"model"; a completion request (`prompt`) is one user content. `GenerateContentConfig` carries
max_output_tokens (`params.max_tokens`), temperature (always: atomr's 0 means greedy), top_p (when
< 1), top_k (when > 0), stop_sequences and seed. A request asking for logprobs sets
`response_logprobs=True` and `logprobs=1` (wire: `generationConfig.responseLogprobs`, `logprobs`,
the number of top candidates per step).

Stream -> chunks: the text parts of the first candidate in one streamed response are one `Chunk`
(thought parts are skipped); token_count is 1, or with logprobs the number of chosen tokens that
response reports. With logprobs, each response's candidate carries `logprobs_result`
(`logprobsResult`) for the tokens of that response: `chosen_candidates[i]` (`chosenCandidates`:
`token`, `log_probability` / `logProbability`) become the chunk's `TokenLogprob`s, in order
(`top_candidates` are not used: atomr keeps the chosen token's logprob only); the last chunk's
logprobs are then an empty tuple. Without logprobs the chunks' logprobs are None. The last chunk
is empty and carries finish_reason and `Usage(prompt_token_count, candidates_token_count +
thoughts_token_count)` from the last `usage_metadata` seen. A stream that ends without a
finishReason (connection dropped) is an `unavailable` error, never a silent short answer. A
prompt blocked by `prompt_feedback.block_reason` ends with finish_reason "content_filter".

Finish reasons: STOP -> "stop", MAX_TOKENS -> "length", SAFETY / RECITATION / BLOCKLIST /
PROHIBITED_CONTENT / SPII / IMAGE_* / MODEL_ARMOR -> "content_filter", anything else -> "stop".

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
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.errors import error_for_status, parse_retry_after, redact

from atomr.core.errors import (
    AuthError,
    ContextLengthError,
    InferenceError,
    InferenceTimeoutError,
    InternalError,
    InvalidRequestError,
    UnavailableError,
)
from atomr.core.runner import RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, TokenLogprob, Usage

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


class GeminiRunner(RemoteRunner):
    provider: ClassVar[str] = "gemini"
    default_key_env: ClassVar[str] = "GEMINI_API_KEY"
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True, logprobs=True, batching=True, chat=True, completion=True, needs_gpu=False
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self._http: Any = None  # the httpx2.AsyncClient handed to the SDK

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
        """(contents, system instruction, GenerateContentConfig) for `request`."""
        _, types, _ = _import_sdk()
        system: list[str] = []
        contents: list[Any] = []
        if request.messages is not None:
            for m in request.messages:
                if m.role == "system":
                    system.append(m.content)
                else:
                    role = "model" if m.role == "assistant" else "user"
                    contents.append(types.Content(role=role, parts=[types.Part(text=m.content)]))
        else:
            contents.append(types.Content(role="user", parts=[types.Part(text=request.prompt or "")]))
        if not contents:
            raise InvalidRequestError("gemini needs at least one user or assistant message", field="messages")
        p = request.params
        instruction = "\n\n".join(system) if system else None
        config = types.GenerateContentConfig(
            system_instruction=instruction,
            max_output_tokens=p.max_tokens,
            temperature=p.temperature,
            top_p=p.top_p if p.top_p < 1.0 else None,
            top_k=p.top_k if p.top_k > 0 else None,
            stop_sequences=list(p.stop) or None,
            seed=p.seed,
            response_logprobs=True if p.logprobs else None,
            logprobs=1 if p.logprobs else None,  # top candidates per step; atomr keeps the chosen one
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
            automatic_continuation=False,
        )
        return contents, instruction, config

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        contents, _, config = self.request_parts(request)
        responses = await self.client.aio.models.generate_content_stream(
            model=self.model_name, contents=contents, config=config
        )
        want_lp = request.params.logprobs
        usage: Any = None
        finish: str | None = None
        pumped = in_own_task(responses)
        try:
            async for response in pumped:
                usage = response.usage_metadata or usage
                feedback = response.prompt_feedback
                if feedback is not None and feedback.block_reason:
                    finish = "content_filter"
                for candidate in (response.candidates or [])[:1]:
                    parts = candidate.content.parts if candidate.content is not None else None
                    text = "".join(part.text for part in parts or () if part.text and not part.thought)
                    if text:
                        if want_lp:
                            lps = chosen_logprobs(candidate.logprobs_result)
                            yield Chunk(text, max(1, len(lps)), lps)
                        else:
                            yield Chunk(text, 1)
                    if candidate.finish_reason:
                        finish = finish_reason_of(candidate.finish_reason)
        finally:
            await pumped.aclose()  # cancels a read in flight: that closes the HTTP response
            await responses.aclose()
        if finish is None:
            raise UnavailableError("gemini: the stream ended without a finishReason (connection dropped)")
        prompt = (usage.prompt_token_count or 0) if usage is not None else 0
        completion = ((usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)) if usage else 0
        yield Chunk("", 0, () if want_lp else None, finish_reason=finish, usage=Usage(prompt, completion))

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
