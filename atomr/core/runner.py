"""The ModelRunner interface every backend implements.

Runners know nothing of actors: a runner host calls `load`, then `generate` for many requests at
once on one asyncio loop, then `unload`. Which runtimes exist and which class runs each is the
runtime catalog's business (`atomr.runners.catalog`), so that core names no engine.

Besides generating, a runner may embed texts (`embed`, for an embedding model or an embeddings
API) and count a prompt's tokens (`count_tokens`, where it has the tokenizer or its provider
counts); it says so in `capabilities.embeddings` / `.count_tokens`. An embedding model that does
not generate text sets `capabilities.generate` false.

A runner declares what it offers in `capabilities`; `check_supported` refuses, before any
generation, a request that asks for what its runner lacks (logprobs from a runtime that has none,
chat from a completion-only one, ...). It is called in one place for every runner, local or
remote: `atomr.serving.session.run_session`, which both runner hosts and the HTTP front's inline
runners go through.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from atomr.core.errors import ContextLengthError, InvalidRequestError

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment
    from atomr.core.types import Chunk, InferenceRequest


# The optional features a request may ask for; a runner lists those it honours in
# `RunnerCapabilities.features`. Temperature, top_p, max_tokens and stop every runtime honours.
FEATURES: dict[str, str] = {
    "tools": "function tools, tool_choice none/auto, tool calls and tool results in messages",
    "tool_choice": "tool_choice required or a named function",
    "parallel_tool_calls": "parallel_tool_calls",
    "json_object": "response_format json_object",
    "json_schema": "response_format json_schema",
    "regex": "response_format regex",
    "images": "image_url content parts",
    "n": "n > 1 choices",
    "penalties": "presence_penalty, frequency_penalty",
    "logit_bias": "logit_bias",
    "top_logprobs": "top_logprobs",
    "top_k": "top_k",
    "seed": "seed",
    "reasoning_effort": "reasoning_effort",
    "user": "user",
    "metadata": "metadata",
    "passthrough": "fields atomr does not model, forwarded as sent (OpenAI-wire runtimes)",
    "messages_passthrough": "fields of Anthropic's Messages wire atomr does not model (thinking...), forwarded as sent",
    "dimensions": "dimensions (shorter embedding vectors)",
}


# What a runtime speaking the OpenAI wire takes: every field of that wire, forwarded as sent (the
# provider judges it); not the fields of other wires.
OPENAI_WIRE = frozenset(FEATURES) - {"messages_passthrough"}

_TASK_WORDS = {
    "generate": "generate text: it is an embedding model",
    "embed": "make embeddings",
    "count_tokens": "count tokens",
}

# What local engines honour through a grammar and the chat template (`atomr.runners.common.structured`).
GUIDED = frozenset({"json_object", "json_schema", "regex", "tools", "tool_choice", "parallel_tool_calls"})


@dataclass(frozen=True, slots=True)
class RunnerCapabilities:
    streaming: bool = True
    logprobs: bool = False
    batching: bool = False  # the engine batches concurrent requests by itself
    chat: bool = True
    completion: bool = True
    needs_gpu: bool = False
    generate: bool = True  # it generates text (false for an embedding model)
    embeddings: bool = False  # it implements `ModelRunner.embed`
    count_tokens: bool = False  # it implements `ModelRunner.count_tokens`
    features: frozenset[str] = frozenset({"seed", "top_k"})  # of FEATURES


@dataclass(frozen=True, slots=True)
class PromptLimit:
    """What a gateway needs to refuse an overlong prompt before it crosses any process."""

    context_tokens: int
    max_token_chars: int  # no token of the vocabulary stands for more characters than this

    def too_long(self, request: InferenceRequest) -> ContextLengthError | None:
        """The refusal the runner would make, when even the fewest tokens the prompt can take (its
        characters / `max_token_chars`) exceed the context; else None. (A prompt that fits but
        leaves too little room for its max_tokens is the runner's to refuse, where it is counted.)"""
        if request.task != "generate" or self.max_token_chars < 1:
            return None
        at_least = -(-request.prompt_chars // self.max_token_chars)
        if at_least <= self.context_tokens:
            return None
        return ContextLengthError(
            f"the prompt has at least {at_least} tokens: more than the model's context length of {self.context_tokens}",
            field="messages" if request.messages is not None else "prompt",
            details={"prompt_tokens_at_least": at_least, "context_length": self.context_tokens},
        )


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

    async def embed(self, request: InferenceRequest) -> Chunk:
        """The embeddings of `request.inputs`, all in one engine (or provider) call where it can:
        one chunk whose `embeddings` hold a vector per input, in order (`atomr.core.vectors`),
        and whose usage counts the input tokens. Only runners with `capabilities.embeddings`."""
        raise NotImplementedError

    async def count_tokens(self, request: InferenceRequest) -> int:
        """How many input tokens the prompt of `request` (messages, tools...) takes on this model.
        Only runners with `capabilities.count_tokens`."""
        raise NotImplementedError

    def prompt_limit(self) -> PromptLimit | None:
        """The model's context length and the most characters one token of its vocabulary covers,
        once loaded: with them a gateway refuses, without a tokenizer, a prompt that cannot fit
        (`PromptLimit.too_long`). None: not known (no check before the runner's own)."""
        return None

    async def health(self) -> bool:
        return True

    async def unload(self) -> None:  # noqa: B027 - optional hook, nothing to free by default
        """Free the engine. Called once; the process may exit right after."""


def requested_features(request: InferenceRequest) -> Iterator[tuple[str, str]]:
    """(feature, the field that asks for it) for every optional feature `request` uses."""
    p = request.params
    # what atomr does not model can only go to a runtime that speaks the wire it came in
    passthrough = "messages_passthrough" if request.wire_api == "anthropic" else "passthrough"
    has_tool_messages = any(m.tool_calls or m.tool_call_id is not None for m in request.messages or ())
    if request.tools or has_tool_messages:
        yield "tools", "tools" if request.tools else "messages"
    choice = request.tool_choice
    if choice is not None:
        yield ("tool_choice" if choice.mode in ("required", "function") else "tools"), "tool_choice"
    if request.parallel_tool_calls is not None:
        yield "parallel_tool_calls", "parallel_tool_calls"
    fmt = request.response_format
    if fmt is not None and fmt.type != "text":
        yield fmt.type, "response_format.type"
    for i, m in enumerate(request.messages or ()):
        if isinstance(m.content, tuple):
            for j, part in enumerate(m.content):
                if part.type == "image_url":
                    yield "images", f"messages[{i}].content[{j}]"
                elif part.type != "text":
                    yield passthrough, f"messages[{i}].content[{j}].type"
        for key in m.extra or ():
            yield passthrough, f"messages[{i}].{key}"
    if p.n != 1:
        yield "n", "n"
    if p.presence_penalty is not None:
        yield "penalties", "presence_penalty"
    if p.frequency_penalty is not None:
        yield "penalties", "frequency_penalty"
    if p.logit_bias:
        yield "logit_bias", "logit_bias"
    if p.top_logprobs:
        yield "top_logprobs", "top_logprobs"
    if p.top_k is not None:
        yield "top_k", "top_k"
    if p.seed is not None:
        yield "seed", "seed"
    if request.reasoning_effort is not None:
        yield "reasoning_effort", "reasoning_effort"
    if request.user is not None:
        yield "user", "user"
    if request.metadata:
        yield "metadata", "metadata"
    for key in request.extra or ():
        yield passthrough, key


def check_supported(runner: ModelRunner, request: InferenceRequest) -> None:
    """Raise InvalidRequestError (naming the field and the runtime) when `request` asks `runner`
    for something its capabilities say it does not offer; never answer without it silently."""
    caps = runner.capabilities
    runtime = runner.deployment.runtime
    where = f"deployment {runner.deployment.name!r}"
    offered = {"generate": caps.generate, "embed": caps.embeddings, "count_tokens": caps.count_tokens}
    if not offered[request.task]:
        raise InvalidRequestError(
            f"{where} ({runtime} runtime, model {runner.deployment.model!r}) does not {_TASK_WORDS[request.task]}",
            field="model",
            details={"runtime": runtime, "task": request.task},
        )
    if request.task == "embed":
        asked = {"dimensions": request.dimensions, "user": request.user}
        for feature in (name for name, value in asked.items() if value is not None):
            if feature not in caps.features:
                raise InvalidRequestError(
                    f"the {runtime} runtime does not offer {FEATURES[feature]} for embeddings ({where}): "
                    f"remove {feature}",
                    field=feature,
                    details={"runtime": runtime, "feature": feature},
                )
        return
    for feature, field_name in requested_features(request):
        if feature not in caps.features:
            raise InvalidRequestError(
                f"the {runtime} runtime does not offer {FEATURES[feature]} ({where}): remove {field_name}",
                field=field_name,
                details={"runtime": runtime, "feature": feature},
            )
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
