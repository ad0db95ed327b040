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

ROLES = ("system", "user", "assistant")
FINISH_REASONS = ("stop", "length", "content_filter", "error", "cancelled")


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How to generate. temperature 0 means greedy."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        _check(
            isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool),
            "max_tokens",
            "must be an integer",
        )
        _check(self.max_tokens >= 1, "max_tokens", f"must be >= 1, got {self.max_tokens}")
        _check(_is_number(self.temperature), "temperature", "must be a number")
        _check(
            0.0 <= self.temperature <= 2.0,
            "temperature",
            f"must be between 0 and 2, got {self.temperature}",
        )
        _check(_is_number(self.top_p), "top_p", "must be a number")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(
            _is_int(self.top_k) and self.top_k >= 0,
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


@dataclass(frozen=True, slots=True)
class InferenceRequest:
    """One generation request. Exactly one of `messages` (chat) or `prompt` (completion)."""

    model: str
    messages: tuple[Message, ...] | None = None
    prompt: str | None = None
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    tenant: str = "default"
    priority: int = 0
    deadline: float | None = None  # absolute time.time() after which the caller gives up
    stream: bool = False
    wait_for_rate_limit: bool = False  # wait (until the deadline) instead of failing rate_limited

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def validate(self) -> None:
        _check(isinstance(self.model, str) and self.model != "", "model", "must be a model name")
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
                _check(isinstance(m.content, str), f"messages[{i}].content", "must be a string")
        if self.prompt is not None:
            _check(isinstance(self.prompt, str), "prompt", "must be a string")
        _check(isinstance(self.params, SamplingParams), "params", "must be SamplingParams")
        self.params.validate()

    def with_id(self, request_id: str) -> InferenceRequest:
        return replace(self, request_id=request_id)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    logprob: float


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of generated text. The last chunk of a stream carries finish_reason and usage."""

    text: str
    token_count: int = 1
    logprobs: tuple[TokenLogprob, ...] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None

    @staticmethod
    def merge(chunks: Sequence[Chunk]) -> Chunk:
        """One chunk holding the text, tokens and logprobs of several, in order."""
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
            finish_reason=last.finish_reason,
            usage=last.usage,
        )


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """The whole answer to a request, as `Client.generate` returns it."""

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
    out: list[Message] = []
    for i, m in enumerate(raw):
        if isinstance(m, Message):
            out.append(m)
            continue
        if not isinstance(m, Mapping):
            raise InvalidRequestError("must be an object with role and content", field=f"messages[{i}]")
        role, content = m.get("role"), m.get("content")
        _check(isinstance(role, str), f"messages[{i}].role", "is required and must be a string")
        _check(isinstance(content, str), f"messages[{i}].content", "is required and must be a string")
        out.append(Message(str(role), str(content)))
    return tuple(out)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _check(ok: bool, field_name: str, what: str) -> None:
    if not ok:
        raise InvalidRequestError(f"{field_name} {what}", field=field_name)
