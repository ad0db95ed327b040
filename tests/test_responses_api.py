"""``POST /v1/responses`` (OpenAI's Responses API) with the official `openai` SDK as the client,
against a real node: the embedded model and an `openai` deployment on the fake OpenAI server,
two tenants.

- text, whole and streamed (`responses.stream` and `responses.create(stream=True)`): the same
  text, the events in order with their sequence numbers, usage, `incomplete` at max_output_tokens;
- a function-tool round trip: the `function_call` item, then the `function_call_output` sent back
  (in the input, or after `previous_response_id`), streamed calls;
- json_schema answers through `text.format` that validate against the schema;
- stored conversations: `previous_response_id` continues one (the chat the provider receives
  holds the earlier turns, not their instructions), `responses.retrieve` / `delete`, another
  tenant finds nothing;
- reasoning as a `reasoning` item; a failure mid-stream as `error` and `response.failed` events;
- typed errors (`NotFoundError`, `BadRequestError` naming the field), stream or not;
- the store itself and the store switched off, without a node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Literal

import jsonschema
import openai
import pytest
import yaml
from pydantic import BaseModel, Field

from atomr.core.errors import InvalidRequestError
from atomr.core.messages import Message, ToolCall
from atomr.core.tenants import new_key
from atomr.http.responses_api import protocol
from atomr.http.responses_api.endpoints import ResponsesWire
from atomr.http.responses_api.store import ResponseStore, StoredResponse
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI
from tests.local_support import HELLO
from tests.structured_support import ANSWER_SCHEMA

PROVIDER_KEY = "sk-responses-" + "r" * 24
KEY_A, HASH_A = new_key()
KEY_B, HASH_B = new_key()
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": None,
}
TIME = {
    "type": "function",
    "name": "get_time",
    "description": "Get the time in a timezone.",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
    "strict": None,
}
TOOLS: list[Any] = [WEATHER, TIME]
ASK = "What is the weather in Paris?"
SUNNY = '{"city": "Paris", "weather": "sunny, 21 C"}'
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("responses")
    (folder / "key").write_text(PROVIDER_KEY)
    remote = {"api_base": provider.url + "/v1", "api_key_file": str(folder / "key"), "retry": {"max_attempts": 1}}
    config = {
        "http": {"port": 0},
        "tenants": [
            {"name": "team-a", "key_sha256": HASH_A},
            {"name": "team-b", "key_sha256": HASH_B},
        ],
        "deployments": [
            {"name": "gpt", "model": "openai/gpt-fake", "engine": remote},
            {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
        ],
    }
    cfg = folder / "responses.yaml"
    cfg.write_text(yaml.safe_dump(config))
    node = Node(config=cfg)
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    try:
        yield match.group(1).rstrip("/") + "/v1"
    finally:
        assert node.stop() == []


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key=KEY_A, max_retries=0, timeout=120) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def other_tenant(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=base_url, api_key=KEY_B, max_retries=0, timeout=120) as sdk:
        yield sdk


class Forecast(BaseModel):
    """A pydantic model the SDK turns into a strict json_schema format and parses the answer into."""

    answer: str = Field(max_length=30)
    mood: Literal["calm", "busy", "sunny"]
    confidence: int = Field(ge=0, le=100)


def squeezed(types: list[str]) -> list[str]:
    """Event types with runs of the same type as one."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


def test_text_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.responses.create(model="tiny", input="Hello!")
    assert whole.object == "response" and whole.id.startswith("resp_") and whole.status == "completed"
    assert whole.output_text == HELLO and whole.model == "tiny" and whole.to_dict()["store"] is True
    (message,) = whole.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    usage = whole.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0

    with client.responses.stream(model="tiny", input="Hello!") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert squeezed([e.type for e in events]) == [*TEXT_EVENTS, "response.completed"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == HELLO
    assert final.output_text == HELLO and final.status == "completed" and final.id != whole.id
    assert final.usage is not None and final.usage.output_tokens == usage.output_tokens
    items: list[Any] = final.output
    assert len(items) == 1 and items[0].id.startswith("msg_")

    raw = list(client.responses.create(model="tiny", input="Hello!", stream=True))
    assert squeezed([e.type for e in raw]) == [*TEXT_EVENTS, "response.completed"]
    assert raw[-1].response.output_text == HELLO  # type: ignore[union-attr]


def test_max_output_tokens_leaves_the_answer_incomplete(client: openai.OpenAI) -> None:
    short = client.responses.create(model="tiny", input="Hello!", max_output_tokens=2)
    assert short.status == "incomplete" and short.incomplete_details is not None
    message: Any = short.output[0]
    assert short.incomplete_details.reason == "max_output_tokens" and message.status == "incomplete"
    assert short.max_output_tokens == 2 and HELLO.startswith(short.output_text)
    events = list(client.responses.create(model="tiny", input="Hello!", max_output_tokens=2, stream=True))
    assert squeezed([e.type for e in events]) == [*TEXT_EVENTS, "response.incomplete"]
    last: Any = events[-1].response  # type: ignore[union-attr]
    assert last.output_text == short.output_text and last.incomplete_details.reason == "max_output_tokens"


def test_a_tool_round_trip_on_the_embedded_model(client: openai.OpenAI) -> None:
    ask: list[Any] = [{"role": "user", "content": ASK}]
    first = client.responses.create(model="tiny", input=ask, tools=TOOLS, store=False, max_output_tokens=60)
    assert first.to_dict()["store"] is False
    calls: list[Any] = first.output
    (call,) = calls
    assert call.type == "function_call" and call.status == "completed" and call.id and call.id.startswith("fc_")
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})
    answer = {"type": "function_call_output", "call_id": call.call_id, "output": SUNNY}
    turns: list[Any] = [*ask, *first.output, answer]
    second = client.responses.create(model="tiny", input=turns, tools=TOOLS, max_output_tokens=40)
    assert second.output_text == "The weather in Paris is sunny, 21 C."

    forced: Any = {"type": "function", "name": "get_weather"}
    with client.responses.stream(
        model="tiny", input=ask, tools=TOOLS, tool_choice=forced, max_output_tokens=60
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert squeezed([e.type for e in events]) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    streamed: Any = final.output[0]
    assert len(final.output) == 1
    assert streamed.type == "function_call" and json.loads(streamed.arguments) == {"city": "Paris"}
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert done.arguments == streamed.arguments


def test_json_schema_answers_validate(client: openai.OpenAI) -> None:
    text: Any = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    whole = client.responses.create(model="tiny", input="What is an actor?", text=text, max_output_tokens=120)
    assert whole.status == "completed" and whole.text is not None and whole.text.format is not None
    assert whole.text.format.type == "json_schema"
    jsonschema.validate(json.loads(whole.output_text), ANSWER_SCHEMA)
    with client.responses.stream(model="tiny", input="What is an actor?", text=text, max_output_tokens=120) as stream:
        final = stream.get_final_response()
    assert final.output_text == whole.output_text
    parsed = client.responses.parse(model="tiny", input="What is a seed?", text_format=Forecast, max_output_tokens=120)
    assert isinstance(parsed.output_parsed, Forecast) and parsed.output_parsed.mood in ("calm", "busy", "sunny")


def test_a_stored_conversation_continues_on_an_openai_wire_provider(
    client: openai.OpenAI, other_tenant: openai.OpenAI, provider: FakeOpenAI
) -> None:
    provider.reset(PROVIDER_KEY)
    first = client.responses.create(model="gpt", instructions="Use tools.", input=ASK, tools=[WEATHER])  # type: ignore[list-item]
    (call,) = first.output
    assert call.type == "function_call" and call.name == "get_weather"
    sent = provider.calls[-1].body
    assert sent["messages"] == [{"role": "system", "content": "Use tools."}, {"role": "user", "content": ASK}]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": WEATHER["description"],
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    answer = {"type": "function_call_output", "call_id": call.call_id, "output": SUNNY}
    second = client.responses.create(model="gpt", previous_response_id=first.id, input=[answer], tools=[WEATHER])  # type: ignore[list-item]
    assert second.output_text == f"The tool said: {SUNNY}" and second.previous_response_id == first.id
    called = {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": call.arguments}}
    earlier = [
        {"role": "user", "content": ASK},
        {"role": "assistant", "content": None, "tool_calls": [called]},
        {"role": "tool", "content": SUNNY, "tool_call_id": call.call_id},
    ]
    assert provider.calls[-1].body["messages"] == earlier  # the first turn's instructions stay with it
    events = client.responses.create(
        model="gpt",
        previous_response_id=second.id,
        instructions="Be brief.",
        input="Thanks!",
        max_output_tokens=3,
        stream=True,
    )
    last = list(events)[-1]
    assert last.type == "response.incomplete"
    third = last.response
    assert provider.calls[-1].body["messages"] == [
        {"role": "system", "content": "Be brief."},
        *earlier,
        {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "Thanks!"},
    ]
    assert third.status == "incomplete" and third.output_text == "Hello from the"

    assert client.responses.retrieve(second.id).model_dump() == second.model_dump()
    assert client.responses.retrieve(third.id).model_dump() == third.model_dump()  # kept when streamed too
    with pytest.raises(openai.NotFoundError) as theirs:
        other_tenant.responses.retrieve(second.id)
    assert second.id in theirs.value.message
    with pytest.raises(openai.NotFoundError) as continued:
        other_tenant.responses.create(model="gpt", previous_response_id=second.id, input="Hi")
    assert "previous_response_id" in continued.value.message
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    kept = client.responses.create(model="gpt", previous_response_id=second.id, input="Again?")  # still there
    assert kept.status == "completed"


def test_reasoning_is_an_output_item(client: openai.OpenAI, provider: FakeOpenAI) -> None:
    provider.reset(PROVIDER_KEY)
    whole = client.responses.create(model="gpt", input="Think first.", reasoning={"effort": "low"})
    assert provider.calls[-1].body["reasoning_effort"] == "low"
    thought, said = whole.output
    assert thought.type == "reasoning" and thought.content and thought.content[0].text == "Thinking it over."
    assert said.type == "message" and whole.output_text.startswith("Hello from the fake provider")
    assert whole.usage is not None and whole.usage.output_tokens_details.reasoning_tokens == 3
    with client.responses.stream(model="gpt", input="Think first.", reasoning={"effort": "low"}) as stream:
        types = squeezed([e.type for e in stream])
        final = stream.get_final_response()
    assert types[2:6] == [
        "response.output_item.added",
        "response.content_part.added",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
    ]
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output_text == whole.output_text
    # a response's output, reasoning item included, is the next request's input
    again = client.responses.create(model="gpt", input=[{"role": "user", "content": "Think first."}, *whole.output])  # type: ignore[list-item]
    assert provider.calls[-1].body["messages"][-1] == {"role": "assistant", "content": whole.output_text}
    assert again.status == "completed"
    with pytest.raises(openai.BadRequestError) as refused:
        client.responses.create(model="tiny", input="Hi", reasoning={"effort": "low"})
    assert "reasoning.effort" in refused.value.message


def test_a_failure_mid_stream_is_an_error_event(client: openai.OpenAI, provider: FakeOpenAI) -> None:
    provider.reset(PROVIDER_KEY)
    provider.bad_event_next()
    events = list(client.responses.create(model="gpt", input="Hello!", stream=True))
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    error, failed = events[-2:]
    assert error.type == "error" and error.message
    assert failed.type == "response.failed" and failed.response.status == "failed"
    assert failed.response.error is not None and failed.response.error.message == error.message
    assert [e.sequence_number for e in events] == list(range(len(events)))


@pytest.mark.parametrize("stream", [False, True])
def test_typed_errors(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.responses.create(model="nope", input="Hi", stream=stream)
    assert nf.value.status_code == 404 and nf.value.code == "model_not_found"
    bad_fields: list[tuple[dict[str, Any], str]] = [
        ({"truncation": "auto"}, "truncation"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"tool_choice": {"type": "function", "name": "nope"}, "tools": [WEATHER]}, "tool_choice.name"),
        ({"temperature": 3}, "temperature"),
    ]
    for extra, field in bad_fields:
        body = {"model": "tiny", "input": "Hi", "stream": stream, **extra}
        with pytest.raises(openai.BadRequestError) as bad:
            client.responses.create(**body)
        assert bad.value.status_code == 400 and field in bad.value.message and bad.value.param == field, field
    with pytest.raises(openai.NotFoundError) as gone:
        client.responses.create(model="tiny", input="Hi", previous_response_id="resp_unknown", stream=stream)
    assert gone.value.param == "previous_response_id" and "resp_unknown" in gone.value.message


# ---- without a node ----


def test_the_store_evicts_the_oldest_expires_and_keeps_tenants_apart() -> None:
    now = [0.0]
    store = ResponseStore(max_items=2, max_age_s=10, clock=lambda: now[0])
    said = (Message("user", "Hi"), Message("assistant", "Hello"))
    for n, tenant in ((1, "a"), (2, "a"), (3, "b")):
        now[0] += 1
        store.put(StoredResponse(f"resp_{n}", tenant, {"id": f"resp_{n}"}, said))
    assert len(store) == 2 and store.get("resp_1", "a") is None  # the oldest, evicted
    found = store.get("resp_2", "a")
    assert found is not None and found.conversation == said
    assert store.get("resp_2", "b") is None and store.get("resp_3", "b") is not None
    assert not store.delete("resp_3", "a") and store.delete("resp_3", "b") and store.get("resp_3", "b") is None
    now[0] += 10  # resp_2 was stored at 2: now 13, past its 10 s
    assert store.get("resp_2", "a") is None and len(store) == 0
    off = ResponseStore(max_items=0, max_age_s=10)
    off.put(StoredResponse("resp_1", "a", {}, said))
    assert not off.enabled and len(off) == 0


def test_with_the_store_off_previous_response_id_and_store_are_refused() -> None:
    wire = ResponsesWire(ResponseStore(max_items=0, max_age_s=10))
    for extra, field in (({"previous_response_id": "resp_1"}, "previous_response_id"), ({"store": True}, "store")):
        raw = json.dumps({"model": "tiny", "input": "Hi", **extra}).encode()
        with pytest.raises(InvalidRequestError) as refused:
            wire.parse(raw, 64)
        assert refused.value.field == field and field in refused.value.message
    body, _ = wire.parse(b'{"model": "tiny", "input": "Hi"}', 64)  # store left to its default: not kept
    assert body.store is None


def test_output_items_read_back_as_the_chat_that_said_them() -> None:
    items = [
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed", "content": [
            {"type": "output_text", "text": "Let me look.", "annotations": []},
        ]},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
        {"type": "function_call", "id": "fc_2", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": [{"type": "input_text", "text": "sunny"}]},
        {"role": "developer", "content": [{"type": "input_text", "text": "Be brief."}]},
    ]  # fmt: skip
    calls = (ToolCall("call_1", "get_weather", "{}"), ToolCall("call_2", "get_time", "{}"))
    assert protocol.input_messages(items) == (
        Message("assistant", "Let me look.", tool_calls=calls),
        Message("tool", "sunny", tool_call_id="call_1"),
        Message("system", "Be brief."),
    )


def test_langchain_on_the_responses_api(base_url: str) -> None:
    """LangChain's ChatOpenAI speaking the Responses API (use_responses_api): whole, streamed and a
    tool round trip on the embedded model."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="tiny", base_url=base_url, api_key=KEY_A, use_responses_api=True, max_retries=0, timeout=120)
    assert llm.invoke("Hello!").text == HELLO
    assert "".join(chunk.text for chunk in llm.stream("Hello!")) == HELLO
    as_chat_tools = [
        {"type": "function", "function": {k: tool[k] for k in ("name", "description", "parameters")}} for tool in TOOLS
    ]
    tools = llm.bind_tools(as_chat_tools, max_tokens=60)  # both tools, as the SDK round trip sends them
    ask = HumanMessage(ASK)
    called = tools.invoke([ask])
    (call,) = called.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    answer = tools.invoke([ask, called, ToolMessage(SUNNY, tool_call_id=call["id"])])
    assert answer.text == "The weather in Paris is sunny, 21 C."
