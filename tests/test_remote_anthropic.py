"""The Anthropic runner: the real `anthropic` SDK against a fake Messages API on 127.0.0.1.

What every remote runner does (answers, streaming, stops, logprobs refused naming the field,
cancellation, errors mapped (Anthropic's own error types in its adapter), its stop reasons, a
missing key, unknown model, unreachable provider, retry-after, 4xx never retried, deadline,
circuit breaker, a stream cut mid-way, malformed bodies, the key kept out of errors and logs) is the
runner contract's (tests/runners/). Here, what is the Anthropic runner's own: the system prompt's
field, content blocks and what else goes on the wire, a chat of system messages only, error events
in a stream; tools (round trips streamed or not, tool_choice and parallel_tool_calls, results of
parallel calls in one user turn, arguments that are not JSON refused by field), images as base64
and url sources, json_schema / user / reasoning_effort, thinking as reasoning (sent back before
the calls), cached tokens, and what the API lacks refused by field. End to end: a real node
serving a deployment that points at the fake answers `Client.generate` and `Client.stream`,
refuses logprobs, and a cascade whose first tier is that deployment passes the refused tier over;
the official openai SDK through the node's HTTP front gets a tool call, the answer to its result,
and the same call streamed.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from atomr.runners.remote.anthropic.runner import AnthropicRunner

from atomr.client import Client
from atomr.core.errors import InvalidRequestError
from atomr.core.messages import response_format_from_openai, tool_choice_from_openai, tools_from_openai
from atomr.core.runner import check_supported
from atomr.core.types import Chunk, InferenceRequest, SamplingParams, Usage, assemble_choices, make_messages
from tests.conftest import Node
from tests.fakes.anthropic_server import THINKING_SIGNATURE, FakeAnthropic, tokenize
from tests.remote_support import (
    FAST_RETRY,
    assert_key_hidden,
    check_served_through_a_client,
    fake_server_fixtures,
    key_file_deployment,
    load,
    mixed_roles_chat,
    node_serving,
    remote_deployment,
    run,
)
from tests.runners.support import chat, outcome, text

KEY = f"sk-ant-test-{uuid.uuid4().hex}"
KEY_ENV = "ATOMR_TEST_ANTHROPIC_KEY"

server, fake, key_env = fake_server_fixtures(FakeAnthropic, KEY_ENV, KEY)


def make_runner(fake: FakeAnthropic, **engine: Any) -> AnthropicRunner:
    return AnthropicRunner(remote_deployment("anthropic/claude-fake", fake.url, KEY_ENV, name="claude", **engine))


# ---- chat, completion, streaming ----


def test_chat_stream_text_usage_finish_and_system_field(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            req = mixed_roles_chat(max_tokens=100, temperature=0.7, top_p=0.9, top_k=40)
            chunks, err = await outcome(runner, req)  # the chunks' shape is the runner contract's
            assert err is None and fake.served[-1].stop_reason == "end_turn" and chunks[-1].finish_reason == "stop"
            assert chunks[-1].usage == Usage(fake.served[-1].input_tokens, fake.served[-1].output_tokens)
            sent = fake.calls[-1].body
            assert sent["system"] == "You are terse.\n\nAnswer in English."
            assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
            assert sent["messages"][0]["content"] == [{"type": "text", "text": "Say hello."}]
            assert sent["model"] == "claude-fake" and sent["max_tokens"] == 100 and sent["stream"] is True
            assert (sent["temperature"], sent["top_p"], sent["top_k"]) == (0.7, 0.9, 40)
            assert "seed" not in sent and "stop_sequences" not in sent
            assert fake.calls[-1].headers.get("authorization") == f"Bearer {KEY}"

    run(body)


def test_completion_is_one_user_message_without_system(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            req = InferenceRequest(model="claude", prompt="Once upon a time", params=SamplingParams(max_tokens=50))
            chunks, err = await outcome(runner, req)
            assert err is None and text(chunks) == fake.reply_text
            sent = fake.calls[-1].body
            assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Once upon a time"}]}]
            assert "system" not in sent and sent["max_tokens"] == 50
            assert "temperature" not in sent and "top_p" not in sent and "top_k" not in sent  # unset: not sent
            assert chunks[-1].usage == Usage(4, len(tokenize(fake.reply_text)))

    run(body)


def test_stop_sequences_and_max_tokens_go_on_the_wire(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=100, stop=(" one", "never")))
            assert err is None and chunks[-1].finish_reason == "stop"
            assert fake.calls[-1].body["stop_sequences"] == [" one", "never"]
            assert fake.served[-1].stop_reason == "stop_sequence" and fake.served[-1].stop_sequence == " one"
            assert chunks[-1].usage == Usage(1, len(tokenize(text(chunks))))

            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=3))
            assert err is None and fake.calls[-1].body["max_tokens"] == 3
            assert fake.served[-1].stop_reason == "max_tokens" and chunks[-1].finish_reason == "length"

    run(body)


def test_only_system_messages_is_an_invalid_request(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            _, err = await outcome(runner, chat(("system", "You are terse.")))
            assert err is not None and err.kind == "invalid_request" and err.field == "messages"
            assert fake.count() == 0

    run(body)


# ---- tools, images, structured output ----

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather in Paris?"}]
PNG = (
    "data:image/png;base64,"
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def tool_request(
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: Any = None,
    stream: bool = True,
    **fields: Any,
) -> InferenceRequest:
    """A chat as the HTTP front reads it: OpenAI-shaped messages, tools and tool_choice."""
    parsed = tools_from_openai([WEATHER, TIME] if tools is None else tools)
    params = SamplingParams(**{k: fields.pop(k) for k in list(fields) if k in SamplingParams.__slots__})
    if "response_format" in fields:
        fields["response_format"] = response_format_from_openai(fields["response_format"])
    return InferenceRequest(
        model="claude",
        messages=make_messages(messages),
        params=params,
        stream=stream,
        tools=parsed,
        tool_choice=tool_choice_from_openai(tool_choice, parsed),
        **fields,
    )


def answered(chunks: list[Chunk], tool_calls: Any) -> dict[str, Any]:
    """The assistant message of an answer, as an OpenAI client sends it back."""
    message: dict[str, Any] = {"role": "assistant", "content": "".join(c.text for c in chunks) or None}
    if tool_calls:
        message["tool_calls"] = [call.to_openai() for call in tool_calls]
    return message


@pytest.mark.parametrize("stream", [True, False])
def test_tool_call_round_trip(fake: FakeAnthropic, stream: bool) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, tool_request(ASK, stream=stream))
            assert err is None, err
            (choice,) = assemble_choices(chunks)
            assert choice.finish_reason == "tool_calls" and chunks[-1].finish_reason == "tool_calls"
            assert choice.text == fake.tool_preamble
            (call,) = choice.tool_calls
            served_id, served_name, served_input = fake.served[-1].tool_calls[0]
            assert (call.id, call.name) == (served_id, "get_weather") == (served_id, served_name)
            assert json.loads(call.arguments) == served_input == {"city": "Paris", "unit": "celsius"}
            # streamed as OpenAI does: id and name first, then the arguments in pieces
            deltas = [d for c in chunks for d in c.tool_calls]
            assert deltas[0].id == call.id and deltas[0].name == "get_weather" and deltas[0].arguments == ""
            assert len(deltas) >= 3 and all(d.id is None and d.name is None and d.arguments for d in deltas[1:])
            assert chunks[-1].usage == Usage(fake.served[-1].input_tokens, fake.served[-1].output_tokens)
            sent = fake.calls[-1].body
            assert sent["system"] == "Be brief."
            assert sent["tools"] == [
                {
                    "name": "get_weather",
                    "description": "The weather in a city.",
                    "input_schema": WEATHER["function"]["parameters"],
                },
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
            ]
            assert "tool_choice" not in sent  # auto: the API's default
            assert not {"temperature", "top_p", "top_k", "seed", "metadata", "output_config"} & set(sent)

            # the result goes back: the assistant's tool_use, the tool's tool_result
            follow = [*ASK, answered(chunks, choice.tool_calls)]
            follow.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"})
            chunks, err = await outcome(runner, tool_request(follow, stream=stream))
            assert err is None, err
            (choice,) = assemble_choices(chunks)
            assert (choice.text, choice.finish_reason, choice.tool_calls) == ("The tool said: Sunny, 21 C", "stop", ())
            sent = fake.calls[-1].body
            assert sent["messages"][1:] == [
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": fake.tool_preamble},
                        {"type": "tool_use", "id": call.id, "name": "get_weather", "input": served_input},
                    ],
                },
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 21 C"}],
                },
            ]

    run(body)


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "wire", "calls"),
    [
        ("required", None, {"type": "any"}, 2),
        ({"type": "function", "function": {"name": "get_time"}}, None, {"type": "tool", "name": "get_time"}, 2),
        ("none", None, {"type": "none"}, 0),
        ("auto", False, {"type": "auto", "disable_parallel_tool_use": True}, 1),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}, 1),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}, 1),
    ],
)
def test_tool_choice_and_parallel_calls(
    fake: FakeAnthropic, tool_choice: Any, parallel: bool | None, wire: dict[str, Any], calls: int
) -> None:
    async def body() -> None:
        fake.parallel_calls = 2
        async with load(make_runner(fake)) as runner:
            # without the tool word the fake calls a tool only when tool_choice forces it
            forced = tool_choice not in (None, "auto")
            question = [{"role": "user", "content": "What time is it?" if forced else "And the weather?"}]
            req = tool_request(question, tool_choice=tool_choice, parallel_tool_calls=parallel)
            chunks, err = await outcome(runner, req)
            assert err is None, err
            assert fake.calls[-1].body["tool_choice"] == wire
            (choice,) = assemble_choices(chunks)
            assert len(choice.tool_calls) == calls
            if calls:
                named = wire.get("name", "get_weather")
                assert [c.name for c in choice.tool_calls] == [named] * calls
                assert len({c.id for c in choice.tool_calls}) == calls and choice.finish_reason == "tool_calls"
            else:
                assert choice.text == fake.reply_text and choice.finish_reason == "stop"

    run(body)


def test_parallel_results_share_one_user_turn(fake: FakeAnthropic) -> None:
    async def body() -> None:
        fake.parallel_calls = 2
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, tool_request(ASK))
            assert err is None
            (choice,) = assemble_choices(chunks)
            first, second = choice.tool_calls
            assert [d.index for c in chunks for d in c.tool_calls if d.id] == [0, 1]
            follow = [
                *ASK,
                answered(chunks, choice.tool_calls),
                {"role": "tool", "tool_call_id": first.id, "content": "Sunny"},
                {"role": "tool", "tool_call_id": second.id, "content": [{"type": "text", "text": "Windy"}]},
                {"role": "user", "content": "Thanks!"},
            ]
            chunks, err = await outcome(runner, tool_request(follow, stream=False))
            assert err is None, err
            assert assemble_choices(chunks)[0].text == "The tool said: Sunny; Windy"
            sent = fake.calls[-1].body["messages"]
            assert [m["role"] for m in sent] == ["user", "assistant", "user"]
            assert sent[2]["content"] == [
                {"type": "tool_result", "tool_use_id": first.id, "content": "Sunny"},
                {"type": "tool_result", "tool_use_id": second.id, "content": [{"type": "text", "text": "Windy"}]},
                {"type": "text", "text": "Thanks!"},
            ]

    run(body)


def test_tool_arguments_that_are_not_json_are_refused_by_field(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            bad = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris"}}
            follow = [*ASK, {"role": "assistant", "content": None, "tool_calls": [bad]}]
            follow.append({"role": "tool", "tool_call_id": "call_1", "content": "Sunny"})
            _, err = await outcome(runner, tool_request(follow))
            assert isinstance(err, InvalidRequestError) and err.field == "messages[2].tool_calls[0].function.arguments"
            assert fake.count() == 0

    run(body)


def test_images_as_base64_and_url_sources(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            parts = [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": PNG, "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ]
            chunks, err = await outcome(runner, tool_request([{"role": "user", "content": parts}], tools=[]))
            assert err is None and text(chunks) == fake.reply_text
            media, data = PNG.removeprefix("data:").split(";base64,")
            assert fake.calls[-1].body["messages"][0]["content"] == [
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
            ]
            bmp = [
                {"type": "text", "text": "And this?"},
                {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}},
            ]
            _, err = await outcome(runner, tool_request([ASK[1], {"role": "user", "content": bmp}], tools=[]))
            assert isinstance(err, InvalidRequestError) and err.field == "messages[1].content[1].image_url.url"
            assert fake.count() == 1

    run(body)


def test_json_schema_user_and_effort_on_the_wire(fake: FakeAnthropic) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}, "score": {"type": "number"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema}}

    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            req = tool_request(ASK, tools=[], response_format=fmt, user="user-42", reasoning_effort="minimal")
            chunks, err = await outcome(runner, req)
            assert err is None, err
            assert json.loads(text(chunks)) == {"answer": "Paris", "score": 1}
            sent = fake.calls[-1].body
            assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}, "effort": "low"}
            assert sent["metadata"] == {"user_id": "user-42"}

    run(body)


def test_thinking_is_reasoning_and_goes_back_before_the_calls(fake: FakeAnthropic) -> None:
    async def body() -> None:
        fake.thinking_text = "The user wants the weather."
        fake.cache_read_tokens = 7
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, tool_request(ASK))
            assert err is None
            (choice,) = assemble_choices(chunks)
            assert choice.reasoning == fake.thinking_text and choice.finish_reason == "tool_calls"
            served = fake.served[-1]
            assert chunks[-1].usage == Usage(served.input_tokens + 7, served.output_tokens, cached_tokens=7)
            follow = [*ASK, answered(chunks, choice.tool_calls)]
            follow.append({"role": "tool", "tool_call_id": choice.tool_calls[0].id, "content": "Sunny"})
            chunks, err = await outcome(runner, tool_request(follow))
            assert err is None and assemble_choices(chunks)[0].text == "The tool said: Sunny"
            sent = fake.calls[-1].body["messages"][1]["content"]
            assert sent[0] == {"type": "thinking", "thinking": fake.thinking_text, "signature": THINKING_SIGNATURE}
            assert [b["type"] for b in sent] == ["thinking", "text", "tool_use"]

    run(body)


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"seed": 3}, "seed"),
    ({"n": 2}, "n"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 0.5}, "frequency_penalty"),
    ({"logit_bias": {"42": 1.0}}, "logit_bias"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"response_format": {"type": "json_object"}}, "response_format.type"),
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"extra": {"prediction": {"type": "content"}}}, "prediction"),
]


@pytest.mark.parametrize(("fields", "field"), REFUSED)
def test_what_the_api_lacks_is_refused_by_field(fake: FakeAnthropic, fields: dict[str, Any], field: str) -> None:
    runner = make_runner(fake)
    with pytest.raises(InvalidRequestError) as info:
        check_supported(runner, tool_request(ASK, **dict(fields)))
    assert info.value.field == field and "anthropic" in info.value.message
    honoured = tool_request(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": PNG}}],
            }
        ],
        tool_choice="required",
        parallel_tool_calls=False,
        top_k=5,
        user="u1",
        reasoning_effort="high",
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    )
    check_supported(runner, honoured)


# ---- errors ----


@pytest.mark.parametrize(
    ("error_type", "kind"),
    [
        ("overloaded_error", "overloaded"),
        ("rate_limit_error", "rate_limited"),
        ("api_error", "unavailable"),
        ("invalid_request_error", "invalid_request"),
    ],
)
def test_error_event_mid_stream(fake: FakeAnthropic, error_type: str, kind: str) -> None:
    async def body() -> None:
        async with load(make_runner(fake, retry=FAST_RETRY)) as runner:
            fake.error_event_next(error_type, f"mid-stream {error_type} {KEY}", after=2)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert [c.text for c in chunks] == tokenize(fake.reply_text)[:2]  # what was sent, then the error
            assert err is not None and err.kind == kind
            assert_key_hidden(err, KEY)
            assert fake.count() == 1  # text reached the caller: never retried

    run(body)


def test_error_event_before_any_text_is_retried(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake, retry=FAST_RETRY)) as runner:
            fake.error_event_next("overloaded_error", "Overloaded", after=0)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text(chunks) == fake.reply_text
            assert fake.count() == 2

    run(body)


# ---- end to end ----


def test_end_to_end_through_a_node(fake: FakeAnthropic, tmp_path: Path) -> None:
    deployment = key_file_deployment(tmp_path, "claude", "anthropic/claude-fake", fake.url, KEY)
    # a cascade whose first tier cannot give logprobs: refused there, so the next tier answers
    careful = {"name": "careful", "tiers": [{"deployment": "claude", "threshold": -0.5}, {"deployment": "claude"}]}
    with node_serving(tmp_path, {"deployments": [deployment], "cascades": [careful]}) as node:
        with Client(node.address) as client:

            def sent(body: dict[str, Any]) -> None:
                assert body["system"] == "Be brief."

            check_served_through_a_client(
                client, fake, "claude", KEY, sent, lambda s: Usage(s.input_tokens, s.output_tokens)
            )
            with pytest.raises(InvalidRequestError) as refused:  # the API has no logprobs
                client.generate("claude", "Hi", logprobs=True)
            assert refused.value.field == "logprobs" and "anthropic" in refused.value.message
            assert fake.count() == 3
            answered = client.generate("careful", "Hi")
            assert answered.tier == 2 and answered.text == fake.reply_text and answered.logprobs is None
            assert fake.count() == 4  # tier 1 never reached the API
            with pytest.raises(InvalidRequestError) as last:  # the last tier is asked for what the caller asked
                client.generate("careful", "Hi", logprobs=True)
            assert last.value.field == "logprobs" and last.value.details["tier"] == 2
            assert "tier 1: invalid_request" in last.value.details["trail"][0]
            assert fake.count() == 4
    assert KEY not in node.output()


def check_tools_through_the_openai_sdk(
    base: str, model: str, fake: Any, wire: Callable[[Mapping[str, Any], Mapping[str, Any]], None]
) -> None:
    """The official openai SDK against a node's HTTP front: a tool call, its result answered, the
    same call through the SDK's stream helper. `wire(first, second)` checks what the provider got
    for the call and for the result."""
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60)
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
    got = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    (choice,) = got.choices
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert got.usage is not None and got.usage.prompt_tokens > 0
    follow = [
        *messages,
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    done = client.chat.completions.create(model=model, messages=follow, tools=[WEATHER])
    assert done.choices[0].message.content == "The tool said: Sunny, 21 C"
    assert done.choices[0].finish_reason == "stop" and not done.choices[0].message.tool_calls
    with client.chat.completions.stream(model=model, messages=messages, tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    (streamed,) = final.choices
    assert streamed.finish_reason == "tool_calls" and streamed.message.tool_calls
    (same,) = streamed.message.tool_calls
    assert (same.function.name, same.function.arguments) == (call.function.name, call.function.arguments)
    assert same.id and same.id != call.id
    bodies = [c.body for c in fake.calls]
    assert len(bodies) == 3 and bodies[2] == bodies[0]  # streamed or not, the same call
    wire(bodies[0], bodies[1])


def http_base(node: Node) -> str:
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    return match.group(1)


def test_tools_end_to_end_through_the_http_front(fake: FakeAnthropic, tmp_path: Path) -> None:
    deployment = key_file_deployment(tmp_path, "claude", "anthropic/claude-fake", fake.url, KEY)
    with node_serving(tmp_path, {"deployments": [deployment], "http": {"port": 0}}) as node:

        def wire(first: Mapping[str, Any], second: Mapping[str, Any]) -> None:
            assert first["tools"][0]["name"] == "get_weather" and "tool_choice" not in first
            assert "temperature" not in first and first["stream"] is True
            assert [b["type"] for b in second["messages"][1]["content"]] == ["text", "tool_use"]
            assert second["messages"][2]["content"][0]["type"] == "tool_result"

        check_tools_through_the_openai_sdk(http_base(node), "claude", fake, wire)
    assert KEY not in node.output()
