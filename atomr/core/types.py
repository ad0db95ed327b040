"""Request, chunk and result values: what travels between client, actors and runners.

Plain frozen dataclasses (cheap to pickle across Thespian processes). Validation of caller input
lives here so every entry point (Python client, HTTP front, gateway) rejects bad input the same
way, with an `InvalidRequestError` that names the field.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from atomr.core.errors import ErrorInfo, InvalidRequestError
from atomr.core.messages import (
    ROLES,
    Message,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    assemble_tool_calls,
    merge_tool_deltas,
)
from atomr.core.vectors import unpack_vector

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "error", "cancelled")
# What a request asks of its deployment: text (or tool calls) generated, its inputs embedded, or
# its prompt's tokens counted (answered as the usage's prompt_tokens, with nothing generated).
TASKS = ("generate", "embed", "count_tokens")
MAX_EMBEDDING_INPUTS = 2048
DEFAULT_MAX_TOKENS = 64  # what runtimes that need a limit use when the caller gives none
REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to generate. A parameter left None (or at its neutral value) was not set by the caller:
    remote runtimes then send nothing and the provider's default applies; local engines use
    their own defaults: greedy decoding, `default_max_tokens` new tokens, no top-p/top-k cut."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int | None = None
    n: int = 1
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Mapping[str, float] | None = None
    default_max_tokens: int = DEFAULT_MAX_TOKENS  # the limit where a runtime needs one and none was given

    @property
    def greedy(self) -> bool:
        return not self.temperature

    @property
    def max_new_tokens(self) -> int:
        """The caller's max_tokens, or the default limit for runtimes that need one."""
        return self.max_tokens if self.max_tokens is not None else self.default_max_tokens

    @property
    def sampling(self) -> tuple[float, float, int]:
        """(temperature, top_p, top_k) with local engines' defaults for what was not set."""
        return (float(self.temperature or 0.0), float(self.top_p or 1.0), int(self.top_k or 0))

    def validate(self) -> None:
        for name in ("max_tokens", "default_max_tokens"):
            value = getattr(self, name)
            if value is not None:
                _check(_is_int(value) and value >= 1, name, f"must be an integer >= 1, got {value!r}")
        if self.temperature is not None:
            _check(_is_number(self.temperature), "temperature", "must be a number")
            _check(
                0.0 <= self.temperature <= 2.0,
                "temperature",
                f"must be between 0 and 2, got {self.temperature}",
            )
        if self.top_p is not None:
            _check(_is_number(self.top_p), "top_p", "must be a number")
            _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(
            self.top_k is None or (_is_int(self.top_k) and self.top_k >= 0),
            "top_k",
            f"must be an integer >= 0, got {self.top_k!r}",
        )
        _check(
            self.seed is None or (_is_int(self.seed) and 0 <= self.seed < 2**63),
            "seed",
            f"must be a non-negative 64-bit integer, got {self.seed!r}",
        )
        _check(isinstance(self.stop, tuple | list), "stop", "must be a list of strings")
        _check(len(self.stop) <= 8, "stop", f"at most 8 stop sequences, got {len(self.stop)}")
        for s in self.stop:
            _check(isinstance(s, str) and s != "", "stop", "stop sequences must be non-empty strings")
        _check(isinstance(self.logprobs, bool), "logprobs", "must be true or false")
        _check(
            self.top_logprobs is None or (_is_int(self.top_logprobs) and 0 <= self.top_logprobs <= 20),
            "top_logprobs",
            f"must be an integer from 0 to 20, got {self.top_logprobs!r}",
        )
        _check(_is_int(self.n) and 1 <= self.n <= 128, "n", f"must be an integer from 1 to 128, got {self.n!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if value is not None:
                _check(_is_number(value) and -2.0 <= value <= 2.0, name, f"must be between -2 and 2, got {value!r}")
        if self.logit_bias is not None:
            _check(isinstance(self.logit_bias, Mapping), "logit_bias", "must map token ids to numbers")
            for v in self.logit_bias.values():
                _check(
                    _is_number(v) and -100 <= v <= 100, "logit_bias", "must map token ids to numbers from -100 to 100"
                )


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One request: generation (exactly one of `messages` (chat) or `prompt` (completion)), an
    embedding of `inputs` (`task` "embed", with `dimensions` when the caller wants shorter
    vectors) or a count of the prompt's tokens (`task` "count_tokens").

    `extra`: request fields atomr does not model, as the caller sent them (runtimes that speak the
    wire they came in forward them; every other runtime refuses them by name). `wire`: the body
    exactly as it came over HTTP, in the API named by `wire_api` ("openai" for chat and
    completions, "anthropic" for Messages), which a runtime speaking that API forwards as it is;
    `headers`: the caller's request headers that its deployment passes on (`forward_headers`).
    `endpoint`: where the request came in (an HTTP route, or "client"), for its log line.
    `trace`: the W3C traceparent of the span that handed the request on, when tracing is on
    (`atomr.observability.tracing`): each process's spans of the request continue that trace.
    """

    model: str
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tenant: str = "default"
    key_id: str | None = None  # the runtime key it came with (`atomr.core.keys`), for budgets and spend
    priority: int = 0
    deadline: float | None = None  # absolute time.time() after which the caller gives up
    stream: bool = False
    wait_for_rate_limit: bool = False  # wait (until the deadline) instead of failing rate_limited
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning_effort: str | None = None
    user: str | None = None
    metadata: Mapping[str, str] | None = None
    extra: Mapping[str, Any] | None = None
    wire: Mapping[str, Any] | None = None
    wire_api: str | None = None
    headers: Mapping[str, str] | None = None
    endpoint: str = "client"
    task: str = "generate"
    inputs: tuple[str, ...] | None = None
    dimensions: int | None = None
    trace: str | None = None

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def prompt_chars(self) -> int:
        """The characters of everything the model reads (for token estimates before the call)."""
        chars = len(self.prompt or "") + sum(len(m.text) for m in self.messages or ())
        return chars + sum(len(t) for t in self.inputs or ())

    @property
    def completion_budget(self) -> int:
        """The most tokens this request may generate (none when it generates nothing)."""
        return self.params.max_new_tokens if self.task == "generate" else 0

    def validate(self) -> None:
        _check(isinstance(self.model, str) and self.model != "", "model", "must be a model name")
        _check(self.task in TASKS, "task", f"must be one of {', '.join(TASKS)}")
        if self.task == "embed":
            self._validate_embed()
            return
        if self.messages is None and self.prompt is None:
            raise InvalidRequestError("give either messages (chat) or prompt", field="messages")
        if self.messages is not None and self.prompt is not None:
            raise InvalidRequestError("give messages or prompt, not both", field="prompt")
        if self.messages is not None:
            _check(isinstance(self.messages, tuple | list), "messages", "must be a list of messages")
            _check(len(self.messages) > 0, "messages", "must not be empty")
            for i, m in enumerate(self.messages):
                _check(isinstance(m, Message), f"messages[{i}]", "must be a message")
                _check(m.role in ROLES, f"messages[{i}].role", f"must be one of {', '.join(ROLES)}")
                _check(
                    m.content is None or isinstance(m.content, str | tuple),
                    f"messages[{i}].content",
                    "must be a string or a list of parts",
                )
        if self.prompt is not None:
            _check(isinstance(self.prompt, str), "prompt", "must be a string")
        _check(isinstance(self.params, SamplingParams), "params", "must be SamplingParams")
        self.params.validate()
        if self.tools or self.tool_choice is not None:
            _check(self.is_chat, "tools", "are for chat requests (give messages)")
        if self.response_format is not None:
            _check(isinstance(self.response_format, ResponseFormat), "response_format", "must be a ResponseFormat")
        _check(
            self.reasoning_effort is None or self.reasoning_effort in REASONING_EFFORTS,
            "reasoning_effort",
            f"must be one of {', '.join(REASONING_EFFORTS)}",
        )
        _check(
            self.metadata is None
            or (isinstance(self.metadata, Mapping) and all(isinstance(v, str) for v in self.metadata.values())),
            "metadata",
            "must map keys to strings",
        )

    def _validate_embed(self) -> None:
        _check(self.messages is None and self.prompt is None, "input", "an embedding request takes inputs only")
        inputs = self.inputs
        _check(isinstance(inputs, tuple | list) and len(inputs) > 0, "input", "must be a non-empty list of strings")
        assert inputs is not None
        _check(
            len(inputs) <= MAX_EMBEDDING_INPUTS,
            "input",
            f"at most {MAX_EMBEDDING_INPUTS} inputs in one request, got {len(inputs)}",
        )
        for i, text in enumerate(inputs):
            _check(isinstance(text, str) and text != "", f"input[{i}]", "must be a non-empty string")
        _check(
            self.dimensions is None or (_is_int(self.dimensions) and self.dimensions >= 1),
            "dimensions",
            f"must be an integer >= 1, got {self.dimensions!r}",
        )

    def with_id(self, request_id: str) -> InferenceRequest:
        return replace(self, request_id=request_id)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[TokenLogprob, ...] = ()  # the most likely tokens at this position, when asked for


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # of prompt_tokens, read from a provider's prompt cache
    reasoning_tokens: int = 0  # of completion_tokens, spent on hidden reasoning

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of generated text of choice `index` (0 unless the caller asked for n > 1), with the
    pieces of tool calls, reasoning text or a refusal. The last chunk of each choice carries its
    finish_reason; the last of the stream the usage."""

    text: str
    token_count: int = 1
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    index: int = 0
    tool_calls: tuple[ToolCallDelta, ...] = ()
    reasoning: str = ""
    refusal: str = ""
    embeddings: tuple[bytes, ...] = ()  # an embedding request's vectors (`atomr.core.vectors`)
    # The provider's own stream events this chunk was read from, kept for a caller speaking the
    # provider's wire (a Messages request served by the anthropic runtime gets them as they came).
    wire_events: tuple[Mapping[str, Any], ...] = ()

    @staticmethod
    def merge(chunks: Sequence[Chunk]) -> Chunk:
        """One chunk holding the pieces of several chunks of one choice, in order."""
        if len(chunks) == 1:
            return chunks[0]
        logprobs: tuple[TokenLogprob, ...] | None = None
        if any(c.logprobs is not None for c in chunks):
            logprobs = tuple(lp for c in chunks for lp in (c.logprobs or ()))
        last = chunks[-1]
        return Chunk(
            text="".join(c.text for c in chunks),
            token_count=sum(c.token_count for c in chunks),
            logprobs=logprobs,
            finish_reason=next((c.finish_reason for c in reversed(chunks) if c.finish_reason), None),
            usage=next((c.usage for c in reversed(chunks) if c.usage is not None), None),
            index=last.index,
            tool_calls=merge_tool_deltas([d for c in chunks for d in c.tool_calls]),
            reasoning="".join(c.reasoning for c in chunks),
            refusal="".join(c.refusal for c in chunks),
            embeddings=tuple(v for c in chunks for v in c.embeddings),
            wire_events=tuple(e for c in chunks for e in c.wire_events),
        )


@dataclass(frozen=True, slots=True)
class Choice:
    """One of the answers to a request (there are `n`)."""

    index: int
    text: str
    finish_reason: str
    logprobs: tuple[TokenLogprob, ...] | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    refusal: str = ""


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """The whole answer to a request, as `Client.generate` returns it: the first choice's text,
    tool calls... at the top, and every choice in `choices`."""

    request_id: str
    model: str
    text: str
    finish_reason: str
    usage: Usage
    logprobs: tuple[TokenLogprob, ...] | None = None
    deployment: str = ""
    version: str = ""
    replica: str = ""
    tier: int = 0  # the cascade tier (1-based) whose answer this is; 0 outside cascades
    tool_calls: tuple[ToolCall, ...] = ()
    reasoning: str = ""
    refusal: str = ""
    choices: tuple[Choice, ...] = ()
    embeddings: tuple[bytes, ...] = ()  # an embedding request's vectors, one per input, in order
    wire_events: tuple[Mapping[str, Any], ...] = ()  # the provider's events, for a caller of its wire

    def vectors(self) -> list[list[float]]:
        """The embeddings as lists of floats."""
        return [unpack_vector(v) for v in self.embeddings]

    @property
    def confidence(self) -> dict[str, float] | None:
        """Mean and minimum token logprob, when logprobs were asked for."""
        if not self.logprobs:
            return None
        values = [lp.logprob for lp in self.logprobs]
        return {"mean_logprob": sum(values) / len(values), "min_logprob": min(values)}


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """What a runner host sends a requester: a chunk, or the end (result meta or an error)."""

    request_id: str
    chunk: Chunk | None = None
    error: ErrorInfo | None = None
    final: bool = False
    # chunks: their index in the stream; the final event: how many chunks came before it
    seq: int = 0
    usage: Usage | None = None  # on the final event: what the request consumed
    replica: str = ""
    deployment: str = ""
    version: str = ""
    tier: int = 0  # the cascade tier (1-based) whose answer this is; 0 outside cascades


def make_messages(raw: Iterable[Mapping[str, Any] | Message]) -> tuple[Message, ...]:
    """Messages from OpenAI-style dicts, with errors naming the offending element."""
    return tuple(Message.from_openai(m, f"messages[{i}]") for i, m in enumerate(raw))


def assemble_choices(chunks: Sequence[Chunk]) -> tuple[Choice, ...]:
    """Each choice's whole answer from a request's chunks (of any choices, interleaved)."""
    by_index: dict[int, list[Chunk]] = {}
    for c in chunks:
        by_index.setdefault(c.index, []).append(c)
    out = []
    for index in sorted(by_index):
        pieces = by_index[index]
        logprobs = None
        if any(c.logprobs is not None for c in pieces):
            logprobs = tuple(lp for c in pieces for lp in (c.logprobs or ()))
        calls = assemble_tool_calls([d for c in pieces for d in c.tool_calls])
        finish = next((c.finish_reason for c in reversed(pieces) if c.finish_reason), None)
        out.append(
            Choice(
                index=index,
                text="".join(c.text for c in pieces),
                finish_reason=finish or ("tool_calls" if calls else "stop"),
                logprobs=logprobs,
                tool_calls=calls,
                reasoning="".join(c.reasoning for c in pieces),
                refusal="".join(c.refusal for c in pieces),
            )
        )
    return tuple(out)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check(ok: bool, field_name: str, what: str) -> None:
    if not ok:
        raise InvalidRequestError(f"{field_name} {what}", field=field_name)
