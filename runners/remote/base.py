"""What every remote-API runner shares: options, API key lookup, retries and the circuit breaker.

A provider module subclasses `RemoteRunner` and writes three things: `make_client` (its official
SDK's async client, with the SDK's own retries off: atomr retries), `stream` (one provider call
turned into chunks) and `map_error` (its SDK's exceptions to `error_for_status`). Calls answered in
one piece (embeddings, token counts) go through `once`, under the same policy as `generate`. Everything else
(deadline, retry policy, breaker, key handling) lives here and in `resilience.py`. A provider
whose API gives token logprobs says so in its `capabilities` (the default here says none); a
request asking for logprobs from one that does not is refused before generation
(`atomr.core.runner.check_supported`).

Engine options (`engine:` in the deployment YAML):
  api_base        provider URL (any OpenAI-compatible server for `openai`)
  api_key_env     environment variable holding the key (default: the provider's usual one)
  api_key_file    file holding the key (read at load; wins over api_key_env)
  timeout_s       per-call HTTP timeout (the request's deadline still bounds everything)
  forward_headers request headers passed on to the provider as the caller sent them
  retry           {max_attempts, backoff_initial_s, backoff_max_s, jitter_s}
  circuit         {failure_threshold, cooldown_s, half_open_probes}
"""

from __future__ import annotations

import abc
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

from atomr.runners.remote.options import RemoteOptions
from atomr.runners.remote.resilience import CircuitBreaker, RetryPolicy, resilient_stream
from atomr.runners.spec import parse_engine_options

from atomr.core.deployment import Deployment
from atomr.core.errors import AuthError, InferenceError
from atomr.core.runner import ModelRunner, RunnerCapabilities
from atomr.core.types import Chunk, InferenceRequest


class RemoteRunner(ModelRunner):
    provider: ClassVar[str] = ""
    default_key_env: ClassVar[str] = ""
    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities(
        streaming=True, logprobs=False, batching=True, chat=True, completion=True, needs_gpu=False
    )

    def __init__(self, deployment: Deployment) -> None:
        super().__init__(deployment)
        self.options: dict[str, Any] = dict(deployment.engine)
        prefix, sep, rest = deployment.model.partition("/")
        self.model_name = rest if sep and prefix in (self.provider, "google") else deployment.model
        common = parse_engine_options(deployment.runtime, deployment.engine, RemoteOptions)
        self.api_base: str | None = common.api_base
        self.timeout_s = common.timeout_s
        self.forward_headers = frozenset(h.lower() for h in common.forward_headers)
        self.retry = RetryPolicy.from_options(self.options)
        self.breaker = CircuitBreaker.from_options(self.options)
        self.api_key: str | None = None
        self.client: Any = None

    def read_api_key(self) -> str | None:
        """The key from `api_key_file`, else `api_key_env`, else the provider's usual variable."""
        path = self.options.get("api_key_file")
        if path:
            try:
                return Path(path).expanduser().read_text().strip()
            except OSError as exc:
                raise AuthError(
                    f"cannot read the API key file named in api_key_file: {exc.strerror}", field="engine.api_key_file"
                ) from None
        env = self.options.get("api_key_env") or self.default_key_env
        return os.environ.get(env) if env else None

    def forwarded(self, request: InferenceRequest) -> dict[str, str] | None:
        """The caller's request headers this deployment passes on (`engine.forward_headers`)."""
        if not self.forward_headers or not request.headers:
            return None
        return {k: v for k, v in request.headers.items() if k.lower() in self.forward_headers} or None

    async def load(self) -> None:
        self.api_key = self.read_api_key()
        self.client = self.make_client()

    def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        return resilient_stream(
            lambda: self.stream(request),
            policy=self.retry,
            breaker=self.breaker,
            deadline=request.deadline,
            map_error=self.map_error,
        )

    async def once(self, request: InferenceRequest, call: Callable[[], Awaitable[Chunk]]) -> Chunk:
        """The one chunk of a provider call that answers in one piece (embeddings, a token count),
        with the same deadline, retries, circuit breaker and error mapping as `generate`."""

        async def single() -> AsyncIterator[Chunk]:
            yield await call()

        answers = resilient_stream(
            single, policy=self.retry, breaker=self.breaker, deadline=request.deadline, map_error=self.map_error
        )
        try:
            return await anext(answers)
        finally:
            await answers.aclose()  # type: ignore[attr-defined]

    async def unload(self) -> None:
        close = getattr(self.client, "close", None) or getattr(self.client, "aclose", None)
        if close is not None:
            result = close()
            if hasattr(result, "__await__"):
                await result

    def status(self) -> dict[str, Any]:
        return {"circuit": self.breaker.snapshot()}

    @abc.abstractmethod
    def make_client(self) -> Any:
        """The provider SDK's async client (SDK retries off)."""

    @abc.abstractmethod
    def stream(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        """One provider call as chunks; the last carries finish_reason and usage."""

    @abc.abstractmethod
    def map_error(self, exc: BaseException) -> InferenceError:
        """The SDK's exception as an InferenceError (use `errors.error_for_status`)."""
