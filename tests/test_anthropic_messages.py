"""``POST /v1/messages`` and ``/v1/messages/count_tokens`` (Anthropic's Messages wire) with the
official `anthropic` SDK as the client, sync and async, against a real node: the embedded model,
an `openai` deployment on the fake OpenAI server and an `anthropic` one on the fake Anthropic API.

- text, whole and streamed (`client.messages.stream(...)`), usage and stop reasons;
- a tool round trip: the `tool_use` block, then the `tool_result` sent back;
- the request reaches an OpenAI-wire provider as the same chat (system, tools, tool choice);
- an `anthropic` deployment gets the body as sent (`thinking` included) and its events come back
  as the API sent them, whole or streamed; elsewhere `thinking` is refused by name;
- `count_tokens` from the local tokenizer and from the upstream; refused by an `openai` deployment;
- typed errors: `NotFoundError`, `BadRequestError` (naming the field), `RateLimitError`, stream
  or not;
- the key as `x-api-key`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
import yaml

from tests.conftest import Node
from tests.fakes.anthropic_server import THINKING_SIGNATURE, FakeAnthropic, tokenize
from tests.fakes.openai_server import DEFAULT_REPLY as FAKE_REPLY
from tests.fakes.openai_server import FakeOpenAI
from tests.local_support import HELLO

KEY = "sk-messages-" + "m" * 24
WEATHER = {
    "name": "get_weather",
    "description": "Get the weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME = {
    "name": "get_time",
    "description": "Get the time in a timezone.",
    "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI, upstream: FakeAnthropic) -> Iterator[str]:
    """The URL of a node's HTTP front serving tiny, gpt, gpt-limited (1 request an hour) and claude."""
    folder = tmp_path_factory.mktemp("messages")
    (folder / "key").write_text(KEY)
    remote = {"api_key_file": str(folder / "key"), "retry": {"max_attempts": 1}}
    openai_engine = {**remote, "api_base": provider.url + "/v1"}
    deployments = [
        {"name": "gpt", "model": "openai/gpt-fake", "engine": openai_engine},
        {
            "name": "gpt-limited",
            "model": "openai/gpt-fake",
            "engine": openai_engine,
            "rate_limits": {"rpm": 1, "window_s": 3600},
        },
        {"name": "claude", "model": "anthropic/claude-fake", "engine": {**remote, "api_base": upstream.url}},
        {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
    ]
    cfg = folder / "messages.yaml"
    cfg.write_text(yaml.safe_dump({"http": {"port": 0}, "deployments": deployments}))
    node = Node(config=cfg)
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    try:
        yield match.group(1).rstrip("/")
    finally:
        assert node.stop() == []


@pytest.fixture(scope="module")
def client(front: str) -> Iterator[anthropic.Anthropic]:
    sdk = anthropic.Anthropic(base_url=front, api_key="unused", max_retries=0, timeout=120)
    try:
        yield sdk
    finally:
        sdk.close()


def test_text_whole_and_streamed(client: anthropic.Anthropic) -> None:
    message = client.messages.create(model="tiny", max_tokens=60, messages=[{"role": "user", "content": "Hello!"}])
    assert message.type == "message" and message.role == "assistant" and message.stop_reason == "end_turn"
    (block,) = message.content
    assert block.type == "text" and block.text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0
    with client.messages.stream(model="tiny", max_tokens=60, messages=[{"role": "user", "content": "Hello!"}]) as s:
        streamed = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed == block.text and final.content[0].text == block.text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == message.usage.output_tokens
    short = client.messages.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": "Hello!"}])
    assert short.stop_reason == "max_tokens"
    for model in ("tiny", "claude"):  # the events on the wire, pings included (the SDK drops those)
        with client.messages.with_streaming_response.create(
            model=model, max_tokens=60, messages=[{"role": "user", "content": "Hello!"}], stream=True
        ) as raw:
            kinds = [line.removeprefix("event: ") for line in raw.iter_lines() if line.startswith("event: ")]
        assert kinds[:3] == ["message_start", "ping", "content_block_start"] and kinds[-2:] == [
            "message_delta",
            "message_stop",
        ]


def test_a_tool_round_trip_on_the_embedded_model(client: anthropic.Anthropic) -> None:
    first = client.messages.create(model="tiny", max_tokens=60, messages=ASK, tools=[WEATHER, TIME])  # type: ignore[list-item]
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    result = {"type": "tool_result", "tool_use_id": call.id, "content": '{"city": "Paris", "weather": "sunny, 21 C"}'}
    history: list[Any] = [*ASK, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    second = client.messages.create(model="tiny", max_tokens=40, messages=history, tools=[WEATHER, TIME])  # type: ignore[list-item]
    assert second.content[0].text == "The weather in Paris is sunny, 21 C."  # type: ignore[union-attr]
    with client.messages.stream(
        model="tiny",
        max_tokens=60,
        messages=ASK,
        tools=[WEATHER, TIME],
        tool_choice={"type": "any"},  # type: ignore[list-item]
    ) as s:
        final = s.get_final_message()
    (streamed,) = [b for b in final.content if b.type == "tool_use"]
    assert (streamed.name, streamed.input) == ("get_weather", {"city": "Paris"}) and final.stop_reason == "tool_use"


def test_an_openai_wire_provider_gets_the_same_chat(client: anthropic.Anthropic, provider: FakeOpenAI) -> None:
    provider.reset(KEY)
    message = client.messages.create(
        model="gpt",
        max_tokens=50,
        system="Be brief.",
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "get_weather"},
        metadata={"user_id": "u-1"},
    )
    (call,) = [b for b in message.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"}
    sent = provider.calls[-1].body
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, *ASK]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER["description"],
                "parameters": WEATHER["input_schema"],
            },
        }
    ]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["max_tokens"] == 50 and sent["user"] == "u-1" and "temperature" not in sent


def test_typed_errors_whole_and_streamed(client: anthropic.Anthropic) -> None:
    for stream in (False, True):
        with pytest.raises(anthropic.NotFoundError) as nf:
            client.messages.create(model="nope", max_tokens=5, messages=ASK, stream=stream)
        assert nf.value.status_code == 404 and nf.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
        with pytest.raises(anthropic.BadRequestError) as bad:
            client.messages.create(
                model="tiny",
                max_tokens=5,
                messages=ASK,
                stream=stream,
                thinking={"type": "enabled", "budget_tokens": 1024},
            )  # type: ignore[call-overload]
        assert bad.value.status_code == 400 and "thinking" in bad.value.message


def test_the_async_client_whole_and_streamed(front: str) -> None:
    async def run() -> tuple[str, str, str]:
        async with anthropic.AsyncAnthropic(base_url=front, api_key="unused", max_retries=0, timeout=120) as sdk:
            whole, on_gpt = await asyncio.gather(
                sdk.messages.create(model="tiny", max_tokens=60, messages=[{"role": "user", "content": "Hello!"}]),
                sdk.messages.create(model="gpt", max_tokens=60, messages=ASK[:1]),
            )
            async with sdk.messages.stream(
                model="tiny", max_tokens=60, messages=[{"role": "user", "content": "Hello!"}]
            ) as s:
                streamed = "".join([piece async for piece in s.text_stream])
            return whole.content[0].text, streamed, on_gpt.content[0].text  # type: ignore[union-attr]

    whole, streamed, on_gpt = asyncio.run(run())
    assert whole and streamed == whole
    assert on_gpt == FAKE_REPLY


def test_count_tokens_where_the_runtime_can_count(client: anthropic.Anthropic, upstream: FakeAnthropic) -> None:
    tools: list[Any] = [WEATHER, TIME]
    counted = client.messages.count_tokens(model="tiny", messages=ASK, tools=tools, system="Be brief.")
    asked = client.messages.create(model="tiny", max_tokens=60, messages=ASK, tools=tools, system="Be brief.")
    assert counted.input_tokens == asked.usage.input_tokens > 0  # the tokenizer and template it generates with
    plain = client.messages.count_tokens(model="tiny", messages=ASK)
    assert 0 < plain.input_tokens < counted.input_tokens  # the tools' descriptions are part of the prompt
    upstream.reset()
    on_claude = client.messages.count_tokens(model="claude", messages=ASK, system="Be brief.")
    assert on_claude.input_tokens == len(tokenize("Be brief.")) + len(tokenize(ASK[0]["content"]))  # the fake's words
    assert upstream.calls[-1].path.endswith("/v1/messages/count_tokens")
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.count_tokens(model="gpt", messages=ASK)
    assert refused.value.status_code == 400 and "count tokens" in refused.value.message
    assert refused.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]


def test_rate_limited_whole_and_streamed(client: anthropic.Anthropic) -> None:
    client.messages.create(model="gpt-limited", max_tokens=5, messages=ASK)  # the hour's one request
    for stream in (False, True):
        with pytest.raises(anthropic.RateLimitError) as limited:
            client.messages.create(model="gpt-limited", max_tokens=5, messages=ASK, stream=stream)
        assert limited.value.status_code == 429
        assert limited.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert int(limited.value.response.headers["retry-after"]) >= 1


THINK = {"type": "enabled", "budget_tokens": 1024}


def _relayed(events: list[Any]) -> list[dict[str, Any]]:
    """The events as dicts, the message's and tool calls' ids left out (the fake makes new ones
    on every call)."""
    out = [ev.to_dict() for ev in events]
    for ev in out:
        ev.get("message", {}).pop("id", None)
        ev.get("content_block", {}).pop("id", None)
    return out


def test_an_anthropic_deployment_gets_the_body_as_sent_and_answers_as_the_api(
    client: anthropic.Anthropic, upstream: FakeAnthropic
) -> None:
    upstream.reset()
    upstream.thinking_text = "The user asks about Paris."
    tools: list[Any] = [{**WEATHER, "cache_control": {"type": "ephemeral"}}]
    asked: dict[str, Any] = {"max_tokens": 200, "messages": ASK, "tools": tools, "thinking": THINK}
    first = client.messages.create(model="claude", **asked)
    sent = upstream.calls[-1].body
    assert sent == {**asked, "model": "claude-fake", "stream": True}  # nothing added, nothing lost
    thinking, _, call = first.content
    assert thinking.type == "thinking" and thinking.signature == THINKING_SIGNATURE  # type: ignore[union-attr]
    assert thinking.thinking == "The user asks about Paris."  # type: ignore[union-attr]
    assert call.type == "tool_use" and call.input == {"city": "Paris"} and first.stop_reason == "tool_use"
    assert first.model == "claude-fake" and first.usage.input_tokens == len(tokenize(ASK[0]["content"]))

    # the thinking block goes back as it came, before the call it led to
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
    history: list[Any] = [*ASK, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    second = client.messages.create(model="claude", max_tokens=200, messages=history, tools=tools, thinking=THINK)  # type: ignore[arg-type]
    assert upstream.calls[-1].body["messages"][1]["content"][0] == {
        "type": "thinking",
        "thinking": "The user asks about Paris.",
        "signature": THINKING_SIGNATURE,
    }
    assert second.content[-1].text == "The tool said: sunny"  # type: ignore[union-attr]

    # streamed: the very events the API sends
    direct = anthropic.Anthropic(base_url=upstream.url, api_key=KEY, max_retries=0)
    with direct:
        expected = _relayed(list(direct.messages.create(model="claude-fake", stream=True, **asked)))
    got = _relayed(list(client.messages.create(model="claude", stream=True, **asked)))
    assert got == expected and [e["type"] for e in got][:2] == ["message_start", "content_block_start"]

    # elsewhere, what atomr does not model is refused by name
    for model in ("gpt", "tiny"):
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(model=model, **asked)
        assert "thinking" in refused.value.message
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.create(model=model, max_tokens=50, messages=history)
        assert "messages[1].content[0].type" in refused.value.message


def test_langchain_anthropic_on_the_embedded_model(front: str) -> None:
    """LangChain's ChatAnthropic as the client of the Messages wire: whole, streamed, and a tool
    round trip on the embedded model."""
    from langchain_anthropic import ChatAnthropic
    from langchain_core.messages import HumanMessage, ToolMessage

    llm = ChatAnthropic(model="tiny", base_url=front, api_key="unused", max_tokens=60, max_retries=0, timeout=120)
    assert llm.invoke("Hello!").text == HELLO
    assert "".join(chunk.text for chunk in llm.stream("Hello!")) == HELLO
    tools = llm.bind_tools([WEATHER, TIME])
    ask = HumanMessage(ASK[0]["content"])
    called = tools.invoke([ask])
    (call,) = called.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    answer = tools.invoke(
        [ask, called, ToolMessage('{"city": "Paris", "weather": "sunny, 21 C"}', tool_call_id=call["id"])]
    )
    assert answer.text == "The weather in Paris is sunny, 21 C."
