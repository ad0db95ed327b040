"""Any provider LiteLLM knows, through `litellm.acompletion` / `litellm.atext_completion`.

The deployment's model is `litellm/<litellm model>`, e.g. `litellm/openai/gpt-4o-mini`,
`litellm/anthropic/claude-3-5-haiku-latest` or `litellm/openai/<name>` with `api_base` pointing
at any OpenAI-compatible server. Chat requests call `acompletion`, prompt requests
`atext_completion`; both stream with `stream_options={"include_usage": True}` and LiteLLM's own
retries off (`num_retries=0`, and `max_retries=0` for the SDK underneath): atomr retries.

Chunks are built as in the `openai` runner: one per delta with text, then a last one without
text carrying the finish_reason (LiteLLM already maps providers' reasons to OpenAI's, mapped to
atomr's set here) and the usage.

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
from atomr.runners.remote.openai.runner import finish_reason, malformed, retry_after_from
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
from atomr.core.runner import RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest, TokenLogprob, Usage

litellm.suppress_debug_info = True
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
        streaming=True, logprobs=True, batching=True, chat=True, completion=True, needs_gpu=False
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
        p = request.params
        args: dict[str, Any] = dict(self.extra_args)
        args.update(
            model=self.model_name,
            stream=True,
            stream_options={"include_usage": True},
            num_retries=0,
            max_retries=0,
            timeout=self.timeout_s,
            max_tokens=p.max_tokens,
            temperature=p.temperature,
        )
        if self.api_base:
            args["api_base"] = self.api_base
        if self.api_key:
            args["api_key"] = self.api_key
        if self.options.get("drop_params"):
            args["drop_params"] = True
        if p.top_p < 1.0:
            args["top_p"] = p.top_p
        if p.seed is not None:
            args["seed"] = p.seed
        if p.stop:
            args["stop"] = list(p.stop)
        return args

    async def stream(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        chat = request.is_chat
        want_lp = request.params.logprobs
        args = self.call_args(request)
        if chat:
            args["messages"] = [{"role": m.role, "content": m.content} for m in request.messages or ()]
            if want_lp:
                args["logprobs"] = True
            response = await litellm.acompletion(**args)
        else:
            if want_lp:
                raise InvalidRequestError(
                    "litellm: logprobs are available for chat requests only (LiteLLM's text-completion stream "
                    "drops them)",
                    field="logprobs",
                )
            args["prompt"] = request.prompt or ""
            response = await litellm.atext_completion(**args)
        # LiteLLM sends OpenAI-style providers at most 4 stop strings: the others are matched here
        stops = StopMatcher(request.params.stop) if len(request.params.stop) > MAX_PROVIDER_STOPS else None
        held_lps: list[TokenLogprob] = []
        held_tokens = 0
        finish: str | None = None
        usage: Usage | None = None
        deltas = 0
        try:
            async for event in response:
                raw_usage = getattr(event, "usage", None)
                if raw_usage is not None and getattr(raw_usage, "completion_tokens", None) is not None:
                    usage = Usage(raw_usage.prompt_tokens or 0, raw_usage.completion_tokens or 0)
                for choice in getattr(event, "choices", None) or ():
                    if (getattr(choice, "index", 0) or 0) != 0:
                        continue
                    if chat:
                        text = getattr(getattr(choice, "delta", None), "content", None) or ""
                    else:
                        text = getattr(choice, "text", None) or ""
                    if text:
                        lps = _logprobs(choice) if want_lp else None
                        deltas += 1
                        if stops is None:
                            yield Chunk(text, len(lps) if lps else 1, lps)
                        else:
                            held_lps.extend(lps or ())
                            held_tokens += 1
                            out, stopped = stops.feed(text)
                            if out:
                                yield Chunk(out, held_tokens, tuple(held_lps) if want_lp else None)
                                held_lps, held_tokens = [], 0
                            if stopped:
                                # the rest is not wanted; usage: what reached us (the prompt's is unknown)
                                finish, usage = "stop", Usage(0, deltas)
                                break
                    if getattr(choice, "finish_reason", None):
                        finish = finish_reason(choice.finish_reason)
                if stops is not None and stops.stopped:
                    break
        finally:
            # the text-completion wrapper has no aclose: close the chat stream it wraps
            inner = getattr(response, "completion_stream", None)
            close = getattr(response, "aclose", None) or getattr(inner, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:  # noqa: BLE001 - closing a broken stream may fail again; nothing to add
                    pass
        if deltas == 0 and usage is None:
            raise malformed(self.provider, "an empty stream: no text and no usage (the body was not an SSE stream?)")
        if finish is None:
            raise malformed(self.provider, "the stream ended before a finish_reason")
        if stops is not None and not stops.stopped and (stops.held or held_lps):
            yield Chunk(stops.flush(), held_tokens, tuple(held_lps) if want_lp else None)
        yield Chunk("", 0, () if want_lp else None, finish, usage or Usage(0, deltas))

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


def _logprobs(choice: Any) -> tuple[TokenLogprob, ...]:
    raw = getattr(choice, "logprobs", None)
    entries = getattr(raw, "content", None) if raw is not None else None
    if entries is None and isinstance(raw, dict):
        entries = raw.get("content")
    out = []
    for e in entries or ():
        token = e.get("token") if isinstance(e, dict) else getattr(e, "token", None)
        value = e.get("logprob") if isinstance(e, dict) else getattr(e, "logprob", None)
        if token is not None and value is not None:
            out.append(TokenLogprob(str(token), float(value)))
    return tuple(out)
