"""The OpenAI chat/completions format, both ways, for every runtime that speaks it (`openai`,
`litellm`): a request as the body to send, and answers (a JSON body, or the events of a stream)
as atomr chunks.

Requests: a request that came over HTTP carries its body as sent (`InferenceRequest.wire`), which
is forwarded as it came; one made in Python (`Client`) is written from its typed fields, only
those the caller set, plus its `extra` fields. Either way atomr changes only what it must: the
model name (the provider's), ``stream`` and ``stream_options.include_usage`` (usage is how atomr
counts tokens), and ``logprobs`` when a cascade tier needs them for its confidence.

Answers: every choice (``n``), text, tool calls (streamed by index, as OpenAI sends them),
reasoning text (``reasoning_content`` or ``reasoning``, the names compatible servers use), refusals,
logprobs with their top alternatives, and usage with its details. Each choice's finish chunk is
held until the stream ends, so the last chunk carries the usage. Finish reasons map to atomr's
set (``function_call`` and ``tool_calls`` are "tool_calls"; unknown values, e.g. "eos" from a
compatible server, are "stop").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

from atomr.core.errors import UnavailableError
from atomr.core.messages import ToolCallDelta
from atomr.core.types import Chunk, InferenceRequest, TokenLogprob, Usage

FINISH_REASONS: dict[str, str] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


def finish_reason(raw: object) -> str:
    return FINISH_REASONS.get(str(raw or "stop"), "stop")


def malformed(provider: str, what: str) -> UnavailableError:
    return UnavailableError(f"{provider}: malformed answer from the provider: {what}", details={"malformed": True})


# ---- requests ----


def typed_body(request: InferenceRequest, max_tokens_param: str = "max_tokens") -> dict[str, Any]:
    """The OpenAI body of a request made in Python: only what the caller set, then its extras."""
    p = request.params
    body: dict[str, Any] = {}
    if request.messages is not None:
        body["messages"] = [m.to_openai() for m in request.messages]
    else:
        body["prompt"] = request.prompt or ""
    optional: dict[str, Any] = {
        max_tokens_param if request.is_chat else "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,
        "seed": p.seed,
        "stop": list(p.stop) or None,
        "n": p.n if p.n != 1 else None,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "logit_bias": dict(p.logit_bias) if p.logit_bias else None,
        "user": request.user,
    }
    if request.is_chat:
        optional.update(
            logprobs=True if p.logprobs else None,
            top_logprobs=p.top_logprobs,
            tools=[t.to_openai() for t in request.tools] or None,
            tool_choice=request.tool_choice.to_openai() if request.tool_choice else None,
            parallel_tool_calls=request.parallel_tool_calls,
            response_format=request.response_format.to_openai() if request.response_format else None,
            reasoning_effort=request.reasoning_effort,
            metadata=dict(request.metadata) if request.metadata else None,
        )
    elif p.logprobs:
        optional["logprobs"] = p.top_logprobs or 1
    body.update((k, v) for k, v in optional.items() if v is not None)
    body.update(request.extra or {})
    return body


def request_body(request: InferenceRequest, model: str, max_tokens_param: str = "max_tokens") -> dict[str, Any]:
    """The body to send for `request` to `model`: its wire body as sent, or its typed fields."""
    if request.wire is not None and request.wire_api == "openai":
        body = dict(request.wire)
        if request.is_chat and max_tokens_param != "max_tokens" and "max_tokens" in body:
            body[max_tokens_param] = body.pop("max_tokens")  # the deployment says its models want the other name
    else:
        body = typed_body(request, max_tokens_param)
    body["model"] = model
    if request.stream:
        options = body.get("stream_options")
        body["stream"] = True
        body["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    else:
        body.pop("stream", None)
        body.pop("stream_options", None)
    if request.params.logprobs and not body.get("logprobs"):
        body["logprobs"] = True if request.is_chat else 1  # a cascade tier judging its confidence
    return body


# ---- answers ----


def usage_of(raw: object) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    prompt_details = raw.get("prompt_tokens_details")
    completion_details = raw.get("completion_tokens_details")
    return Usage(
        int(raw.get("prompt_tokens") or 0),
        int(raw.get("completion_tokens") or 0),
        int(prompt_details.get("cached_tokens") or 0) if isinstance(prompt_details, Mapping) else 0,
        int(completion_details.get("reasoning_tokens") or 0) if isinstance(completion_details, Mapping) else 0,
    )


def logprob_values(raw: Any, chat: bool) -> tuple[TokenLogprob, ...]:
    """TokenLogprobs (with their top alternatives) from a chat `content` list or completion arrays."""
    if not isinstance(raw, Mapping):
        return ()
    if chat:
        return tuple(
            TokenLogprob(
                str(e.get("token", "")),
                float(e["logprob"]),
                tuple(
                    TokenLogprob(str(t.get("token", "")), float(t["logprob"]))
                    for t in e.get("top_logprobs") or ()
                    if isinstance(t, Mapping) and isinstance(t.get("logprob"), int | float)
                ),
            )
            for e in raw.get("content") or []
            if isinstance(e, Mapping) and isinstance(e.get("logprob"), int | float)
        )
    tokens, values = raw.get("tokens") or [], raw.get("token_logprobs") or []
    tops = raw.get("top_logprobs") or [None] * len(tokens)
    return tuple(
        TokenLogprob(
            str(t),
            float(v),
            tuple(TokenLogprob(str(k), float(x)) for k, x in top.items()) if isinstance(top, Mapping) else (),
        )
        for t, v, top in zip(tokens, values, tops, strict=False)
        if v is not None
    )


def _tool_deltas(raw: object) -> tuple[ToolCallDelta, ...]:
    out: list[ToolCallDelta] = []
    for i, d in enumerate(raw if isinstance(raw, list) else ()):
        if not isinstance(d, Mapping):
            continue
        raw_fn = d.get("function")
        fn: Mapping[str, Any] = raw_fn if isinstance(raw_fn, Mapping) else {}
        out.append(
            ToolCallDelta(
                int(d.get("index", i)),
                d.get("id") if isinstance(d.get("id"), str) else None,
                fn.get("name") if isinstance(fn.get("name"), str) else None,
                str(fn.get("arguments") or ""),
            )
        )
    return tuple(out)


def _reasoning(part: Mapping[str, Any]) -> str:
    return str(part.get("reasoning_content") or part.get("reasoning") or "")


class AnswerReader:
    """Turns one OpenAI answer (the events of a stream, or a whole JSON body) into chunks."""

    def __init__(self, provider: str, chat: bool, want_logprobs: bool) -> None:
        self.provider = provider
        self.chat = chat
        self.want_logprobs = want_logprobs
        self.usage: Usage | None = None
        self._finishes: dict[int, str] = {}
        self.pieces = 0  # deltas that brought something

    def event(self, event: object) -> Iterator[Chunk]:
        """Chunks of one stream event (a decoded SSE ``data`` object)."""
        if not isinstance(event, Mapping):
            raise malformed(self.provider, "an SSE event that is not a JSON object")
        self.usage = usage_of(event.get("usage")) or self.usage
        for choice in event.get("choices") or ():
            if not isinstance(choice, Mapping):
                continue
            index = int(choice.get("index") or 0)
            part = choice.get("delta") if self.chat else choice
            yield from self._piece(index, part if isinstance(part, Mapping) else {}, choice)
            if choice.get("finish_reason"):
                self._finishes[index] = finish_reason(choice["finish_reason"])

    def end(self) -> Iterator[Chunk]:
        """Each choice's finish chunk, the last with the usage; raises if no choice finished."""
        if not self._finishes:
            raise malformed(self.provider, "the stream ended before a finish_reason (connection dropped)")
        usage = self.usage or Usage(0, self.pieces)
        last = max(self._finishes)
        for index in sorted(self._finishes):
            lps = () if self.want_logprobs else None
            yield Chunk("", 0, lps, self._finishes[index], usage if index == last else None, index=index)

    def whole(self, data: object) -> Iterator[Chunk]:
        """Chunks of a whole JSON answer."""
        if not isinstance(data, Mapping) or not isinstance(data.get("choices"), list) or not data["choices"]:
            raise malformed(self.provider, "a JSON answer without choices")
        self.usage = usage_of(data.get("usage"))
        for choice in data["choices"]:
            if not isinstance(choice, Mapping):
                raise malformed(self.provider, "a choice that is not an object")
            index = int(choice.get("index") or 0)
            part = choice.get("message") if self.chat else choice
            message = dict(part) if isinstance(part, Mapping) else {}
            calls = message.get("tool_calls")
            if isinstance(calls, list):  # whole calls: their position is their index
                message["tool_calls"] = [{**c, "index": i} for i, c in enumerate(calls) if isinstance(c, Mapping)]
            pieces = list(self._piece(index, message, choice))
            if pieces and len(data["choices"]) == 1 and self.usage is not None and self.usage.completion_tokens:
                # one choice: its tokens are the answer's (a whole answer has no per-token count)
                pieces[0] = dataclasses.replace(pieces[0], token_count=self.usage.completion_tokens)
            yield from pieces
            self._finishes[index] = finish_reason(choice.get("finish_reason"))
        yield from self.end()

    def _piece(self, index: int, part: Mapping[str, Any], choice: Mapping[str, Any]) -> Iterator[Chunk]:
        text = part.get("content") if self.chat else part.get("text")
        text = text if isinstance(text, str) else ""
        reasoning = _reasoning(part)
        refusal = str(part.get("refusal") or "")
        calls = _tool_deltas(part.get("tool_calls")) if self.chat else ()
        if not (text or reasoning or refusal or calls):
            return
        lps = logprob_values(choice.get("logprobs"), self.chat) if self.want_logprobs else None
        self.pieces += 1
        yield Chunk(
            text, len(lps) if lps else 1, lps, index=index, tool_calls=calls, reasoning=reasoning, refusal=refusal
        )
