"""The ModelRunner interface every backend implements, and the table of known runtimes.

Runners know nothing of actors: a runner host calls `load`, then `generate` for many requests at
once on one asyncio loop, then `unload`. Runner classes are named by dotted path so that a
remote-only install never imports an engine it does not have.

A runner declares what it offers in `capabilities`; `check_supported` refuses, before any
generation, a request that asks for what its runner lacks (logprobs from a runtime that has none,
chat from a completion-only one, ...). It is called in one place for every runner, local or
remote: `atomr.actors.session.run_session`, which both runner hosts and the HTTP front's inline
runners go through.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from atomr.core.errors import ConfigError, InvalidRequestError

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


# runtime name -> "module:Class". Local runtimes need their engine's extra installed.
RUNTIMES: dict[str, str] = {
    "ort": "runners.local.ort:OrtRunner",
    "vllm": "runners.local.vllm:VllmRunner",
    "mistralrs": "runners.local.mistralrs:MistralRsRunner",
    "tensorrt": "runners.local.tensorrt:TensorRTRunner",
    "openai": "runners.remote.openai:OpenAIRunner",
    "anthropic": "runners.remote.anthropic:AnthropicRunner",
    "gemini": "runners.remote.gemini:GeminiRunner",
    "litellm": "runners.remote.litellm:LiteLLMRunner",
}
# runtime -> (the package its runner needs, the atomr extra that installs it)
RUNTIME_PACKAGES: dict[str, tuple[str, str]] = {
    "ort": ("onnxruntime_genai", "ort"),
    "vllm": ("vllm", "vllm"),
    "mistralrs": ("mistralrs", "mistralrs"),
    "tensorrt": ("tensorrt_llm", "tensorrt"),
    "openai": ("openai", "remote"),
    "anthropic": ("anthropic", "remote"),
    "gemini": ("google.genai", "remote"),
    "litellm": ("litellm", "remote"),
}
LOCAL_RUNTIMES = frozenset({"ort", "vllm", "mistralrs", "tensorrt"})
REMOTE_RUNTIMES = frozenset({"openai", "anthropic", "gemini", "litellm"})
KNOWN_RUNTIMES = LOCAL_RUNTIMES | REMOTE_RUNTIMES


def runner_class(runtime: str) -> type[ModelRunner]:
    """Import and return the runner class for `runtime` (imports its engine)."""
    target = RUNTIMES.get(runtime)
    if target is None:
        raise ConfigError(
            f"runtime {runtime!r} has no runner in this version; available: {', '.join(sorted(RUNTIMES))}",
            field="runtime",
        )
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    assert isinstance(cls, type) and issubclass(cls, ModelRunner)
    return cls


def installed_runtimes() -> list[str]:
    """Runtimes whose package is installed in this Python, found without importing any engine."""
    found = []
    for runtime, (package, _) in sorted(RUNTIME_PACKAGES.items()):
        try:
            if importlib.util.find_spec(package) is not None:
                found.append(runtime)
        except (ImportError, ValueError):  # a parent package missing (google.genai without google)
            continue
    return found


def install_hint(runtime: str) -> str:
    """How to install what `runtime` needs, for error messages."""
    package, extra = RUNTIME_PACKAGES.get(runtime, (runtime, runtime))
    return f"the {runtime} runtime needs the {package} package: pip install 'atomr[{extra}]'"
