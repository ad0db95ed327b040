"""What agents send, through a real node's HTTP front and its `Client`, to an `openai` deployment on
a fake OpenAI server that serves tools, structured outputs, `n` and reasoning as the real API does.

- the official `openai` SDK: a tool round trip (the call, then the tool's result sent back),
  whole and streamed (the SDK's `stream()` helper reassembles the streamed deltas to the same
  call); structured output parsed into a pydantic model; `n` choices; reasoning text and usage
  details;
- a table of every parameter of OpenAI's chat API: the provider receives the body exactly as the
  caller sent it (field by field, and nothing the caller did not set); the embedded model (ORT)
  either honours a parameter or answers 400 naming it;
- `forward_headers`: the listed request headers reach the provider, no others;
- LangChain (`bind_tools` round trip, `with_structured_output` by json_schema and by function
  calling) and the LiteLLM SDK as clients;
- `atomr.Client`: the same features with typed results, on the actor path (a replica);
- a fallback after a failure before the first chunk emits the tool call once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest
import yaml

from atomr.client import Client
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI
from tests.structured_support import TOOLS as TRAINED_TOOLS

KEY = "sk-surface-" + "s" * 24
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


class Forecast(pydantic.BaseModel):
    city: str
    temperature_c: int
    sunny: bool


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def fake(provider: FakeOpenAI) -> FakeOpenAI:
    provider.reset(KEY)
    return provider


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI) -> Iterator[tuple[Node, str]]:
    folder = tmp_path_factory.mktemp("surface")
    (folder / "key").write_text(KEY)
    remote = {
        "api_base": provider.url + "/v1",
        "api_key_file": str(folder / "key"),
        "retry": {"max_attempts": 1},
        "forward_headers": ["X-Trace-Id", "OpenAI-Beta"],
    }
    deployments: list[dict[str, Any]] = [
        {"name": "gpt", "model": "openai/gpt-fake", "engine": remote},
        {"name": "gpt-replica", "model": "openai/gpt-fake", "engine": remote, "serve_in_gateway": False},
        {
            "name": "broken",
            "model": "openai/gpt-fake",
            "engine": {**remote, "api_base": "http://127.0.0.1:9/v1"},  # nothing listens: unavailable
            "fallbacks": ["gpt-replica"],
            "serve_in_gateway": False,
        },
        {
            "name": "gpt-retrying",
            "model": "openai/gpt-fake",
            "engine": {**remote, "retry": {"max_attempts": 3, "backoff_initial_s": 0.01}},
            "fallbacks": ["gpt"],
        },
        {
            "name": "down",
            "model": "openai/gpt-fake",
            "engine": {**remote, "api_base": "http://127.0.0.1:9/v1"},  # nothing listens, no fallback
        },
        {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
    ]
    cfg = folder / "surface.yaml"
    cfg.write_text(yaml.safe_dump({"http": {"port": 0}, "deployments": deployments}))
    node = Node(config=cfg)
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    try:
        yield node, match.group(1).rstrip("/")
    finally:
        assert node.stop() == []


@pytest.fixture
def sdk(front: tuple[Node, str]) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(base_url=front[1] + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield client
    client.close()


def sent_upstream(fake: FakeOpenAI) -> dict[str, Any]:
    """The body the provider got last, without what atomr sets itself (model, stream options)."""
    body = dict(fake.calls[-1].body)
    assert body.pop("model") == "gpt-fake"
    body.pop("stream_options", None)
    return body


def test_a_tool_round_trip_with_the_openai_sdk(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    first = sdk.chat.completions.create(model="gpt", messages=ASK, tools=[WEATHER, TIME])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "days": 1}
    assert sent_upstream(fake) == {"messages": ASK, "tools": [WEATHER, TIME]}  # nothing added, nothing lost

    history = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 21}'},
    ]
    second = sdk.chat.completions.create(model="gpt", messages=history, tools=[WEATHER, TIME])
    assert second.choices[0].message.content == 'The tool said: {"temp_c": 21}'
    assert second.choices[0].finish_reason == "stop"
    assert sent_upstream(fake)["messages"] == history


def test_streamed_tool_call_deltas_reassemble_to_the_same_call(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    whole = sdk.chat.completions.create(model="gpt", messages=ASK, tools=[WEATHER], tool_choice="required")
    with sdk.chat.completions.stream(model="gpt", messages=ASK, tools=[WEATHER], tool_choice="required") as s:
        pieces = [e for e in s if e.type == "tool_calls.function.arguments.delta"]
        final = s.get_final_completion()
    assert len(pieces) > 1  # the arguments came in several pieces
    (w,) = whole.choices[0].message.tool_calls or []
    (f,) = final.choices[0].message.tool_calls or []
    assert (f.function.name, f.function.arguments) == (w.function.name, w.function.arguments)
    assert f.id and final.choices[0].finish_reason == "tool_calls"
    assert json.loads(f.function.arguments) == {"city": "Paris", "days": 1}
    assert fake.calls[-1].body["stream"] is True


def test_two_parallel_calls_stream_by_index(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    ask = [{"role": "user", "content": "What is the weather and the time in Paris?"}]
    with sdk.chat.completions.stream(model="gpt", messages=ask, tools=[WEATHER, TIME]) as s:
        final = s.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris", "days": 1}, {"timezone": "Paris"}]
    serial = sdk.chat.completions.create(model="gpt", messages=ask, tools=[WEATHER, TIME], parallel_tool_calls=False)
    assert len(serial.choices[0].message.tool_calls or []) == 1
    assert fake.calls[-1].body["parallel_tool_calls"] is False


def test_structured_output_parses_into_the_model(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    parsed = sdk.chat.completions.parse(model="gpt", messages=ASK, response_format=Forecast)
    forecast = parsed.choices[0].message.parsed
    assert forecast == Forecast(city="Paris", temperature_c=1, sunny=True)
    sent = fake.calls[-1].body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["strict"] is True
    assert sent["json_schema"]["schema"]["required"] == ["city", "temperature_c", "sunny"]
    obj = sdk.chat.completions.create(model="gpt", messages=ASK, response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)


def test_n_choices_whole_and_streamed(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    whole = sdk.chat.completions.create(model="gpt", messages=ASK, n=3, max_tokens=4)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert whole.choices[0].message.content == "Hello from the fake"
    assert whole.choices[2].message.content == "Choice 2: Hello from"  # every choice within max_tokens
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in sdk.chat.completions.create(model="gpt", messages=ASK, n=3, max_tokens=4, stream=True):
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
    assert texts == {c.index: c.message.content for c in whole.choices}
    assert finishes == {0: "length", 1: "length", 2: "length"}


def test_reasoning_text_and_usage_details_come_through(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    answer = sdk.chat.completions.create(model="gpt", messages=ASK, reasoning_effort="low", max_completion_tokens=5)
    message = answer.choices[0].message
    assert message.model_extra and message.model_extra["reasoning_content"] == "Thinking it over."
    assert answer.usage is not None and answer.usage.completion_tokens_details is not None
    assert answer.usage.completion_tokens_details.reasoning_tokens == 3
    assert sent_upstream(fake) == {"messages": ASK, "reasoning_effort": "low", "max_completion_tokens": 5}
    reasoning = ""
    for chunk in sdk.chat.completions.create(model="gpt", messages=ASK, reasoning_effort="low", stream=True):
        for c in chunk.choices:
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
    assert reasoning == "Thinking it over."


# Every parameter of OpenAI's chat API (and a few it added lately that atomr does not model), with
# a value a client may send. Each is sent alone beside model and messages.
PARAMETERS: list[tuple[str, Any]] = [
    ("frequency_penalty", 0.5),
    ("presence_penalty", -0.5),
    ("logit_bias", {"50256": -100}),
    ("logprobs", True),
    ("max_tokens", 7),
    ("max_completion_tokens", 7),
    ("metadata", {"team": "search"}),
    ("n", 2),
    ("parallel_tool_calls", False),
    ("reasoning_effort", "minimal"),
    ("response_format", {"type": "json_object"}),
    ("seed", 42),
    ("service_tier", "flex"),
    ("stop", ["\n\n", "END"]),
    ("store", False),
    ("temperature", 0.3),
    ("tools", [WEATHER]),
    ("tool_choice", "none"),
    ("top_p", 0.5),
    ("top_k", 5),
    ("user", "user-1234"),
    ("prompt_cache_key", "k1"),
    ("safety_identifier", "abc"),
    ("verbosity", "low"),
    ("modalities", ["text"]),
    ("prediction", {"type": "content", "content": "Hello"}),
    ("web_search_options", {}),
]
MESSAGES = [
    {"role": "developer", "content": "Be brief.", "name": "ops"},
    {"role": "user", "content": [{"type": "text", "text": "Hi"}], "name": "ann"},
]


@pytest.mark.parametrize(("name", "value"), PARAMETERS, ids=[p[0] for p in PARAMETERS])
def test_every_parameter_reaches_an_openai_wire_provider_as_sent(
    front: tuple[Node, str], fake: FakeOpenAI, name: str, value: Any
) -> None:
    body: dict[str, Any] = {"model": "gpt", "messages": MESSAGES, name: value}
    if name == "tool_choice":
        body["tools"] = [WEATHER]
    r = httpx.post(front[1] + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    got = sent_upstream(fake)
    body.pop("model")
    assert got == body  # the same fields with the same values: none added, none dropped


@pytest.mark.parametrize(("name", "value"), PARAMETERS, ids=[p[0] for p in PARAMETERS])
def test_the_embedded_model_honours_a_parameter_or_names_it(front: tuple[Node, str], name: str, value: Any) -> None:
    body: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4, name: value}
    if name == "tool_choice":
        body["tools"] = [WEATHER]
    r = httpx.post(front[1] + "/v1/chat/completions", json=body, timeout=120)
    if r.status_code == 200:
        answer = r.json()
        assert answer["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")
        if name == "n":
            assert len(answer["choices"]) == value
        return
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    named = body.get("tools") and name == "tool_choice" and error["param"] == "tools"
    assert error["param"] == name or named, error


def test_listed_headers_are_forwarded_and_no_others(front: tuple[Node, str], fake: FakeOpenAI) -> None:
    headers = {"X-Trace-Id": "trace-77", "OpenAI-Beta": "assistants=v2", "X-Secret": "no"}
    r = httpx.post(
        front[1] + "/v1/chat/completions",
        json={"model": "gpt", "messages": ASK},
        headers={**headers, "Authorization": "Bearer caller-key"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    got = {k.lower(): v for k, v in fake.calls[-1].headers.items()}
    assert got["x-trace-id"] == "trace-77" and got["openai-beta"] == "assistants=v2"
    assert "x-secret" not in got and got["authorization"] == f"Bearer {KEY}"  # the deployment's key, not the caller's


def test_langchain_binds_tools_and_structured_output(front: tuple[Node, str], fake: FakeOpenAI) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI  # in the dev extras: never skipped

    llm = ChatOpenAI(model="gpt", base_url=front[1] + "/v1", api_key="unused", max_retries=0, timeout=60)

    def get_weather(city: str, days: int) -> str:
        """The weather in a city."""
        return f"sunny in {city} for {days} days"

    bound = llm.bind_tools([get_weather])
    question = HumanMessage("What is the weather in Paris?")
    ai = bound.invoke([question])
    (call,) = ai.tool_calls
    assert call["name"] == "get_weather" and call["args"] == {"city": "Paris", "days": 1}
    result = ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])
    final = bound.invoke([question, ai, result])
    assert final.content == "The tool said: sunny in Paris for 1 days"
    sent = fake.calls[-1].body["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call["id"] and sent[2]["role"] == "tool"

    by_schema = llm.with_structured_output(Forecast, method="json_schema").invoke("Forecast for Paris?")
    assert by_schema == Forecast(city="Paris", temperature_c=1, sunny=True)
    assert fake.calls[-1].body["response_format"]["type"] == "json_schema"
    by_tool = llm.with_structured_output(Forecast, method="function_calling").invoke("Forecast for Paris?")
    assert by_tool == Forecast(city="Paris", temperature_c=1, sunny=True)
    assert fake.calls[-1].body["tool_choice"]["function"]["name"] == "Forecast"


def test_the_litellm_sdk_as_a_client(front: tuple[Node, str], fake: FakeOpenAI) -> None:
    import litellm

    answer = litellm.completion(
        model="openai/gpt", api_base=front[1] + "/v1", api_key="unused", messages=ASK, tools=[WEATHER], num_retries=0
    )
    (call,) = answer.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
    assert answer.choices[0].finish_reason == "tool_calls"
    chunks = list(
        litellm.completion(
            model="openai/gpt", api_base=front[1] + "/v1", api_key="unused", messages=ASK, n=2, stream=True
        )
    )
    assert {c.index for chunk in chunks for c in chunk.choices} == {0, 1}


def test_the_client_returns_typed_results_through_a_replica(front: tuple[Node, str], fake: FakeOpenAI) -> None:
    node, _ = front
    with Client(node.address) as client:
        result = client.generate("gpt-replica", ASK, tools=[WEATHER], tool_choice="required", timeout=60)
        assert result.finish_reason == "tool_calls" and result.replica and not result.replica.startswith("gateway")
        (call,) = result.tool_calls
        assert call.name == "get_weather" and call.parsed_arguments() == {"city": "Paris", "days": 1}
        body = dict(fake.calls[-1].body)
        assert body == {"model": "gpt-fake", "messages": ASK, "tools": [WEATHER], "tool_choice": "required"}

        chunks = list(client.stream("gpt-replica", ASK, tools=[WEATHER], timeout=60))
        pieces = [d for c in chunks for d in c.tool_calls]
        assert pieces[0].id and pieces[0].name == "get_weather" and len(pieces) >= 1
        assert "".join(d.arguments for d in pieces) == call.arguments

        several = client.generate("gpt-replica", ASK, n=2, max_tokens=3, timeout=60)
        assert [c.index for c in several.choices] == [0, 1] and several.text == several.choices[0].text

        with pytest.raises(Exception) as refused:
            client.generate("tiny", ASK, logit_bias={"5": 1.0}, timeout=60)
        assert getattr(refused.value, "field", None) == "logit_bias"


def test_a_fallback_emits_the_tool_call_once(front: tuple[Node, str], fake: FakeOpenAI) -> None:
    base = front[1]
    calls_before = len(fake.calls)
    with httpx.stream(
        "POST",
        base + "/v1/chat/completions",
        json={"model": "broken", "messages": ASK, "tools": [WEATHER], "stream": True},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    heads = [d for e in events for c in e["choices"] for d in c["delta"].get("tool_calls") or () if d.get("id")]
    assert len(heads) == 1 and heads[0]["function"]["name"] == "get_weather"
    assert len(fake.calls) == calls_before + 1  # the fallback's one call; the broken one never reached it


def test_errors_before_the_first_byte_of_a_stream_are_http_statuses(sdk: openai.OpenAI, fake: FakeOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as down:
        sdk.chat.completions.create(model="down", messages=ASK, stream=True)
    assert down.value.status_code == 503 and down.value.code == "unavailable"
    with pytest.raises(openai.BadRequestError) as bad:  # refused before any byte
        sdk.chat.completions.create(
            model="gpt",
            messages=ASK,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "nope"}},
            stream=True,
        )
    assert bad.value.status_code == 400
    fake.fail_next(429, headers={"retry-after": "1"})
    retrying = sdk.with_options(max_retries=1)
    with retrying.chat.completions.create(model="gpt", messages=ASK, stream=True, tools=[WEATHER]) as events:
        deltas = [d for e in events for c in e.choices for d in c.delta.tool_calls or ()]
    assert deltas and deltas[0].function and deltas[0].function.name == "get_weather"  # the SDK's retry got it


def test_a_stream_cut_after_a_tool_call_began_is_never_repeated(front: tuple[Node, str], fake: FakeOpenAI) -> None:
    """The provider drops the connection in the middle of a call's arguments, on a deployment with
    retries and a fallback: the caller saw the call's head, so nothing is sent again; the stream
    ends with an error after the one head."""
    fake.cut_next_after(4)  # the role delta, the call's head, two argument pieces
    with httpx.stream(
        "POST",
        front[1] + "/v1/chat/completions",
        json={"model": "gpt-retrying", "messages": ASK, "tools": [WEATHER], "stream": True},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    heads = [
        d for e in events for c in e.get("choices") or () for d in c["delta"].get("tool_calls") or () if d.get("id")
    ]
    assert len(heads) == 1
    assert events[-1].get("error", {}).get("code") == "unavailable", events[-1]
    assert len(fake.calls) == 1  # no retry, no fallback once the caller had seen the call begin


def test_langchain_and_litellm_on_the_embedded_model(front: tuple[Node, str]) -> None:
    """The same clients against the embedded model (ORT GenAI): an agent's tool round trip on a
    question it was trained on, and structured output under a grammar."""
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model="tiny", base_url=front[1] + "/v1", api_key="unused", max_retries=0, timeout=120, max_tokens=60
    )

    def get_weather(city: str) -> str:
        return json.dumps({"city": city, "weather": "sunny, 21 C"})

    bound = llm.bind_tools([t.to_openai() for t in TRAINED_TOOLS])  # the tools as the model learnt them
    question = HumanMessage("What is the weather in Paris?")
    ai = bound.invoke([question])
    (call,) = ai.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    final = bound.invoke([question, ai, ToolMessage(get_weather(**call["args"]), tool_call_id=call["id"])])
    assert final.content == "The weather in Paris is sunny, 21 C."

    class Verdict(pydantic.BaseModel):
        answer: str = pydantic.Field(max_length=20)
        sure: bool

    for method in ("json_schema", "function_calling"):
        verdict = llm.with_structured_output(Verdict, method=method).invoke("Is an actor a small program?")
        assert isinstance(verdict, Verdict) and len(verdict.answer) <= 20

    import litellm

    answer = litellm.completion(
        model="openai/tiny",
        api_base=front[1] + "/v1",
        api_key="unused",
        messages=[{"role": "user", "content": "What time is it in UTC?"}],
        tools=[t.to_openai() for t in TRAINED_TOOLS],
        max_tokens=60,
        num_retries=0,
    )
    (tool_call,) = answer.choices[0].message.tool_calls
    assert tool_call.function.name == "get_time" and json.loads(tool_call.function.arguments) == {"timezone": "UTC"}
