"""``POST /v1/messages`` (Anthropic's Messages wire) with the official `anthropic` SDK as the client,
against a real node: an `openai` deployment on the fake OpenAI server and the embedded model.

- text, whole and streamed (`client.messages.stream(...)`), usage and stop reasons;
- a tool round trip: the `tool_use` block, then the `tool_result` sent back;
- the request reaches an OpenAI-wire provider as the same chat (system, tools, tool choice);
- typed errors: `NotFoundError`, `BadRequestError` (naming the field), stream or not;
- the key as `x-api-key`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
import yaml

from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI

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
def client(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI) -> Iterator[anthropic.Anthropic]:
    folder = tmp_path_factory.mktemp("messages")
    (folder / "key").write_text(KEY)
    remote = {"api_base": provider.url + "/v1", "api_key_file": str(folder / "key"), "retry": {"max_attempts": 1}}
    deployments = [
        {"name": "gpt", "model": "openai/gpt-fake", "engine": remote},
        {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
    ]
    cfg = folder / "messages.yaml"
    cfg.write_text(yaml.safe_dump({"http": {"port": 0}, "deployments": deployments}))
    node = Node(config=cfg)
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    sdk = anthropic.Anthropic(base_url=match.group(1).rstrip("/"), api_key="unused", max_retries=0, timeout=120)
    try:
        yield sdk
    finally:
        sdk.close()
        assert node.stop() == []


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
