"""The ModelRunner interface every backend implements.

Runners know nothing of actors: a runner host calls `load`, then `generate` for many requests at
once on one asyncio loop, then `unload`. Which runtimes exist and which class runs each is the
runtime catalog's business (`atomr.runners.catalog`), so that core names no engine.

A runner declares what it offers in `capabilities`; `check_supported` refuses, before any
generation, a request that asks for what its runner lacks (logprobs from a runtime that has none,
chat from a completion-only one, ...). It is called in one place for every runner, local or
remote: `atomr.serving.session.run_session`, which both runner hosts and the HTTP front's inline
runners go through.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from atomr.core.errors import InvalidRequestError

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment
    from atomr.core.types import Chunk, InferenceRequest


@dataclass(frozen=True, slots=True)
class RunnerCapabilities:
    streaming: bool = True
    logprobs: bool = False
    batching: bool = False  # the engine batches concurrent requests by itself
    chat: bool = True
    completion: bool = True
    needs_gpu: bool = False


class ModelRunner(abc.ABC):
    """One loaded model (one replica). `generate` may be called concurrently."""

    capabilities: ClassVar[RunnerCapabilities] = RunnerCapabilities()

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment

    @abc.abstractmethod
    async def load(self) -> None:
        """Load the model; raise an InferenceError with the engine's reason on failure."""

    @abc.abstractmethod
    def generate(self, request: InferenceRequest) -> AsyncIterator[Chunk]:
        """Yield chunks; the last one carries finish_reason and usage."""

    async def health(self) -> bool:
        return True

    async def unload(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Free the engine. Called once; the process may exit right after."""


def check_supported(runner: ModelRunner, request: InferenceRequest) -> None:
    """Raise InvalidRequestError (naming the field and the runtime) when `request` asks `runner`
    for something its capabilities say it does not offer; never answer without it silently."""
    caps = runner.capabilities
    runtime = runner.deployment.runtime
    where = f"deployment {runner.deployment.name!r}"
    if request.params.logprobs and not caps.logprobs:
        raise InvalidRequestError(
            f"the {runtime} runtime gives no token logprobs ({where}); ask without logprobs",
            field="logprobs",
            details={"runtime": runtime},
        )
    if request.is_chat and not caps.chat:
        raise InvalidRequestError(
            f"the {runtime} runtime serves completions only ({where}); send a prompt",
            field="messages",
            details={"runtime": runtime},
        )
    if not request.is_chat and not caps.completion:
        raise InvalidRequestError(
            f"the {runtime} runtime serves chat only ({where}); send messages",
            field="prompt",
            details={"runtime": runtime},
        )
