"""Any provider LiteLLM knows, through `litellm.acompletion` / `litellm.atext_completion`.

The deployment's model is `litellm/<litellm model>`, e.g. `litellm/openai/gpt-4o-mini`,
`litellm/anthropic/claude-3-5-haiku-latest` or `litellm/openai/<name>` with `api_base` pointing
at any OpenAI-compatible server. Chat requests call `acompletion`, prompt requests
`atext_completion`; both stream with `stream_options={"include_usage": True}` and LiteLLM's own
retries off (`num_retries=0`, and `max_retries=0` for the SDK underneath): atomr retries.

Embeddings (`embed`): all inputs of a request in ONE `litellm.aembedding` call (model as above,
e.g. `litellm/openai/text-embedding-3-small`), behind the same retries, breaker and deadline as
generation (`stream` answers an embedding request with its one chunk); `dimensions` and `user` are
passed on, the provider (through LiteLLM) judges them; the answer is read as the `openai` runner
reads OpenAI's (`embeddings_chunk`: vectors in input order, usage's `prompt_tokens`). No
`encoding_format` is sent: LiteLLM hands back numbers whatever its provider's wire.

Requests and answers are in the OpenAI format, read and written as in the `openai` runner
(`atomr.runners.remote.openai_format`): the caller's fields are passed as they came (tools,
response_format, n... which LiteLLM translates for its provider), nothing the caller did not set
is added, and every choice, tool call, reasoning text and usage detail comes back as chunks.

LiteLLM quirks handled here:
- Importing litellm fetches a model cost map from the network unless told not to: this module
  sets `LITELLM_LOCAL_MODEL_COST_MAP=True` (and `LITELLM_OFFLINE_MODE=true` unless set) before the
  import. Its loggers ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy") log every request at INFO
  and have their own stream handler: they are set to WARNING (or to `LITELLM_LOG` when set), and
  `suppress_debug_info` stops the "Give Feedback / Get Help" banner printed with every error.
- LiteLLM ends an empty or unparseable stream (a 200 whose body is not SSE) with a made-up
  finish_reason "stop" and no usage. Since usage is always asked for, a stream that brought
  neither text nor usage is reported as a malformed answer (`unavailable`, as in the `openai`
  runner: a provider or proxy fault, retried, counted by the breaker). A stream cut after text
  raises LiteLLM's `MidStreamFallbackError`, also `unavailable`.
- LiteLLM silently keeps only the first 4 stop strings for OpenAI-style providers: with more,
  all of them are also matched here on the streamed text (`atomr.runners.common.stops`); a match ends
  the stream with finish_reason "stop" and, the provider's usage chunk not being waited for,
  usage counts the deltas received (prompt tokens 0).
- LiteLLM's text-completion stream drops the provider's logprobs: a prompt request asking for
  logprobs is refused (`invalid_request`); chat requests get them (`logprobs=True`).
- LiteLLM's exceptions subclass the `openai` SDK's and carry `status_code`; they go through
  `error_for_status` with LiteLLM's "litellm.XError: XError: OpenAIException - " prefixes
  removed. `ContextWindowExceededError` is always `context_length`,
  `ContentPolicyViolationError` `content_filtered`, `Timeout` `timeout`, `APIConnectionError`
  (which LiteLLM labels 500) `unavailable`, a `MidStreamFallbackError` wrapping a JSON decoding
  error a malformed answer. Retry-after comes from the error's headers.
- LiteLLM's OpenAI embedding handler turns `max_retries=0` into its default of 2 retries (it
  tests `max_retries or DEFAULT_MAX_RETRIES`): `litellm.DEFAULT_MAX_RETRIES` is set to 0 here.
- A compatible server that ignores `stream: true` and answers one JSON object looks, through
  LiteLLM, like an empty stream: it is reported as malformed (the `openai` runner reads it).

Engine options, besides those of `RemoteRunner`:
  drop_params    let LiteLLM drop parameters the provider does not take (default false: the
                 provider's refusal is reported as `invalid_request`)
  litellm_args   more keyword arguments for LiteLLM (api_version, custom_llm_provider,
                 aws_region_name, extra_headers, ...); strings under names that sound secret
                 (key, secret, token, password, auth, credential), nested ones too, are redacted
                 from errors like the API key.
No key is looked up by default (`default_key_env` is empty): LiteLLM reads each provider's usual
variable itself; `api_key_env` / `api_key_file` pass one explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from typing import Any, ClassVar

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
os.environ.setdefault("LITELLM_OFFLINE_MODE", "true")

import litellm  # after the environment above: litellm reads it at import
from atomr.runners.common.stops import StopMatcher
from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.errors import error_for_status, redact
from atomr.runners.remote.openai.runner import embeddings_chunk, retry_after_from
from atomr.runners.remote.openai_format import AnswerReader, malformed, request_body
from litellm.exceptions import (
    APIConnectionError,
    ContentPolicyViolationError,
    ContextWindowExceededError,
    MidStreamFallbackError,
    Timeout,
)

from atomr.core.errors import (
    ContentFilteredError,
    ContextLengthError,
    InferenceError,
    InferenceTimeoutError,
    InternalError,
    InvalidRequestError,
    UnavailableError,
)
from atomr.core.runner import OPENAI_WIRE, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, Usage

litellm.suppress_debug_info = True
# LiteLLM's OpenAI embedding handler reads `max_retries=0` as unset (`max_retries or
# DEFAULT_MAX_RETRIES`) and retried a 429 twice inside one call: atomr retries, so its default is 0.
litellm.DEFAULT_MAX_RETRIES = 0  # type: ignore[misc]
for _name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy"):
    try:
        logging.getLogger(_name).setLevel(os.environ.get("LITELLM_LOG", "WARNING").upper())
    except ValueError:
        logging.getLogger(_name).setLevel(logging.WARNING)

_PREFIX = re.compile(r"^\s*(?:litellm\.\w+|\w*(?:Error|Exception)|Timeout(?: Error)?)\s*(?::|\s-)\s+")
_SECRET_NAMES = re.compile(r"key|secret|token|password|auth|credential", re.I)
MAX_PROVIDER_STOPS = 4


def clean_message(text: str) -> str:
    """LiteLLM's message without its "litellm.XError: XError: OpenAIException - " prefixes."""
    text = str(text)
    for _ in range(6):
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return text.strip()


class LiteLLMRunner(RemoteRunner):
    provider: ClassVar[str] = "litellm"
    default_key_env: ClassVar[str] = ""
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
        """LiteLLM has no client object: calls are module functions (it caches clients itself)."""
        return None

    @property
    def extra_args(self) -> dict[str, Any]:
        return dict(self.options.get("litellm_args") or {})

    @property
    def secrets(self) -> list[str | None]:
        """The API key and every string in `litellm_args` (nested mappings too) under a secret-sounding name."""
        found: list[str | None] = [self.api_key]
        todo: list[Any] = [self.extra_args]
        while todo:
            for k, v in todo.pop().items():
                if isinstance(v, dict):
                    todo.append(v)
                elif isinstance(v, str) and _SECRET_NAMES.search(str(k)):
                    found.append(v)
        return found

    def call_args(self, request: InferenceRequest) -> dict[str, Any]:
        """LiteLLM's keyword arguments: the request's OpenAI body (always streamed), then atomr's own."""
        args: dict[str, Any] = dict(self.extra_args)
        args.update(request_body(dataclasses.replace(request, stream=True), self.model_name))
        return self.with_own_args(args, request)

    def embedding_args(self, request: InferenceRequest) -> dict[str, Any]:
        """`litellm.aembedding`'s keyword arguments: every input, dimensions and user when set."""
        args: dict[str, Any] = dict(self.extra_args)
        args.update(model=self.model_name, input=list(request.inputs or ()))
        if request.dimensions is not None:
            args["dimensions"] = request.dimensions
        if request.user is not None:
            args["user"] = request.user
        return self.with_own_args(args, request)

    def with_own_args(self, args: dict[str, Any], request: InferenceRequest) -> dict[str, Any]:
        """`args` with atomr's own: no LiteLLM retries, the timeout, the provider, key and headers."""
        args.update(num_retries=0, max_retries=0, timeout=self.timeout_s)
        if self.api_base:
            args["api_base"] = self.api_base
        if self.api_key:
            args["api_key"] = self.api_key
        if self.options.get("drop_params"):
            args["drop_params"] = True
        passed = self.forwarded(request)
        if passed:
            args["extra_headers"] = {**(args.get("extra_headers") or {}), **passed}
        return args

    async def embed(self, request: InferenceRequest) -> Chunk:
        """All inputs in one provider call, behind `generate`'s retries, breaker and deadline."""
        (chunk,) = [c async for c in self.generate(request)]
        return chunk

    async def embeddings(self, request: InferenceRequest) -> Chunk:
        """One `litellm.aembedding` call for every input of `request`."""
        response = await litellm.aembedding(**self.embedding_args(request))
        return embeddings_chunk(self.provider, _as_dict(response), len(request.inputs or ()))

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        if request.task == "embed":
            yield await self.embeddings(request)
            return
        chat = request.is_chat
        want_lp = request.params.logprobs
        if not chat and want_lp:
            raise InvalidRequestError(
                "litellm: logprobs are available for chat requests only (LiteLLM's text-completion stream drops them)",
                field="logprobs",
            )
        args = self.call_args(request)
        response = await (litellm.acompletion(**args) if chat else litellm.atext_completion(**args))
        reader = AnswerReader(self.provider, chat, want_lp)
        # LiteLLM sends OpenAI-style providers at most 4 stop strings: the others are matched here
        stops = StopMatcher(request.params.stop) if len(request.params.stop) > MAX_PROVIDER_STOPS else None
        held: list[Chunk] = []
        try:
            async for event in response:
                for chunk in reader.event(_as_dict(event)):
                    if stops is None or not chunk.text:
                        yield chunk
                        continue
                    held.append(chunk)
                    out, stopped = stops.feed(chunk.text)
                    if out:
                        yield _joined(held, out, want_lp)
                        held = []
                    if stopped:
                        # the rest is not wanted; usage: what reached us (the prompt's is unknown)
                        yield Chunk("", 0, () if want_lp else None, "stop", Usage(0, reader.pieces))
                        return
        finally:
            # the text-completion wrapper has no aclose: close the chat stream it wraps
            inner = getattr(response, "completion_stream", None)
            close = getattr(response, "aclose", None) or getattr(inner, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # noqa: BLE001 - closing a broken stream may fail again; nothing to add
                    pass
        if reader.pieces == 0 and reader.usage is None:
            raise malformed(self.provider, "an empty stream: no text and no usage (the body was not an SSE stream?)")
        if stops is not None and (stops.held or held):
            yield _joined(held, stops.flush(), want_lp)
        for chunk in reader.end():
            yield chunk

    def map_error(self, exc: BaseException) -> InferenceError:
        secrets = self.secrets
        raw = getattr(exc, "message", None) or str(exc)
        message = clean_message(redact(str(raw), secrets))
        if isinstance(exc, ContextWindowExceededError):
            return ContextLengthError(f"litellm returned 400: {message}", details={"status": 400})
        if isinstance(exc, ContentPolicyViolationError):
            return ContentFilteredError(f"litellm returned 400: {message}", details={"status": 400})
        if isinstance(exc, MidStreamFallbackError):
            if _caused_by(exc, json.JSONDecodeError):
                return malformed(self.provider, f"an event that is not JSON: {message}")
            return UnavailableError(f"litellm: the stream broke off: {message}", details={"status": None})
        if isinstance(exc, Timeout):
            status = getattr(exc, "status_code", None)
            if status in (408, 504) and "timed out" not in message.lower():
                return error_for_status(status, message, provider=self.provider, secrets=secrets)
            return InferenceTimeoutError(
                f"litellm: no answer within {self.timeout_s:g} s (engine.timeout_s): {message}",
                details={"status": None},
            )
        if isinstance(exc, APIConnectionError):
            return error_for_status(None, message, provider=self.provider, secrets=secrets)
        status = getattr(exc, "status_code", None)
        if isinstance(status, int) and 400 <= status <= 599:
            if status == 500 and "connection error" in message.lower():
                return error_for_status(None, message, provider=self.provider, secrets=secrets)
            headers = getattr(exc, "headers", None) or getattr(getattr(exc, "response", None), "headers", None)
            return error_for_status(
                status, message, provider=self.provider, retry_after=retry_after_from(headers), secrets=secrets
            )
        if isinstance(exc, ValueError):
            return malformed(self.provider, f"{type(exc).__name__}: {message}")
        return InternalError(f"litellm: {type(exc).__name__}: {message}")


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `kind` is in the chain of LiteLLM's wrapped exceptions (original_exception, cause, context)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        if isinstance(e, kind):
            return True
        seen.add(id(e))
        todo += [getattr(e, "original_exception", None), e.__cause__, e.__context__]
    return False


def _as_dict(event: Any) -> Any:
    """A LiteLLM stream event (a pydantic model) as the OpenAI JSON it stands for."""
    dump = getattr(event, "model_dump", None)
    return dump() if dump is not None else event


def _joined(held: list[Chunk], text: str, want_lp: bool) -> Chunk:
    """The text the stop matcher let through, with the tokens and logprobs of the chunks it held."""
    lps = tuple(lp for c in held for lp in (c.logprobs or ())) if want_lp else None
    return Chunk(text, sum(c.token_count for c in held) or 1, lps)
