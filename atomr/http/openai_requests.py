"""OpenAI request bodies in: ``/v1/chat/completions`` and ``/v1/completions`` as `InferenceRequest`s.

One pass: the body is decoded once, pydantic checks the scalar parameters' types and ranges, and
the structured ones (messages, tools, tool_choice, response_format) are read by the core parsers
(`atomr.core.messages`), so `Client` and HTTP refuse bad input alike, naming the parameter the way
OpenAI does (``messages[1].tool_calls[0].function.name``).

Nothing is rewritten and nothing dropped: a parameter the caller did not send stays unset (the
runtime's or provider's default applies); a field atomr does not model lands in the request's
`extra`, as sent; and the body itself travels as the request's `wire`, which OpenAI-wire runtimes
forward as it came. Whether a runtime can honour each parameter is decided where the request
meets its runner (`atomr.core.runner.check_supported`), which refuses by field what it cannot.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from atomr.core.errors import InvalidRequestError
from atomr.core.messages import response_format_from_openai, tool_choice_from_openai, tools_from_openai
from atomr.core.types import InferenceRequest, SamplingParams, make_messages
from atomr.http.bodies import decode_body


class _StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    user: str | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None


class ChatBody(_Common):
    messages: list[Any] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    metadata: dict[str, str] | None = None


class CompletionBody(_Common):
    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=5)


def _params(body: _Common, max_tokens: int | None, logprobs: bool, top: int | None, default_max: int) -> SamplingParams:
    stop = body.stop
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        seed=body.seed,
        stop=(stop,) if isinstance(stop, str) else tuple(stop or ()),
        logprobs=logprobs,
        top_logprobs=top,
        n=body.n or 1,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias,
        default_max_tokens=default_max,
    )


def parse_chat(raw: bytes, default_max_tokens: int) -> tuple[ChatBody, InferenceRequest]:
    data, body = decode_body(raw, ChatBody)
    messages = make_messages(body.messages)
    tools = tools_from_openai(body.tools)
    if body.top_logprobs and not body.logprobs:
        raise InvalidRequestError("top_logprobs needs logprobs: true", field="top_logprobs")
    params = _params(
        body,
        body.max_completion_tokens or body.max_tokens,
        bool(body.logprobs),
        body.top_logprobs,
        default_max_tokens,
    )
    request = InferenceRequest(
        model=body.model,
        messages=messages,
        params=params,
        stream=body.stream,
        tools=tools,
        tool_choice=tool_choice_from_openai(body.tool_choice, tools),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=response_format_from_openai(body.response_format),
        reasoning_effort=body.reasoning_effort,
        user=body.user,
        metadata=body.metadata,
        extra=body.model_extra or None,
        wire=data,
        wire_api="openai",
    )
    return body, request


def parse_completion(raw: bytes, default_max_tokens: int) -> tuple[CompletionBody, InferenceRequest]:
    data, body = decode_body(raw, CompletionBody)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequestError("exactly one prompt per request is supported", field="prompt")
        prompt = prompt[0]
    top = body.logprobs or None  # completions' logprobs=k: the chosen token and the k likeliest
    params = _params(body, body.max_tokens, body.logprobs is not None, top, default_max_tokens)
    request = InferenceRequest(
        model=body.model,
        prompt=prompt,
        params=params,
        stream=body.stream,
        user=body.user,
        extra=body.model_extra or None,
        wire=data,
        wire_api="openai",
    )
    return body, request
