"""Structured outputs and tool calls on the ORT runner (ORT GenAI guidance, the built-in model's
tool-call format): json_schema / json_object / regex answers, forced and automatic tool calls,
conversations with tool results, and the same through a node's HTTP front with the openai SDK."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("onnxruntime_genai")

import jsonschema
from atomr.runners.common.structured import AutoStream, CallStream, output_plan
from atomr.runners.local.ort.runner import OrtRunner

from atomr.core.errors import InvalidRequestError
from atomr.core.messages import ResponseFormat, ToolCall, ToolChoice
from atomr.core.types import Message, assemble_choices
from tests.local_support import HELLO, MODEL, tiny_deployment
from tests.runners.support import collect, outcome
from tests.structured_support import (
    ANSWER_SCHEMA,
    BOOKING,
    PROMPTS,
    QUESTIONS,
    TIME,
    TOOLS,
    TRAINED_CALLS,
    WEATHER,
    ask,
    check_call_stream,
    run_all,
)


@pytest.fixture(scope="module")
def runner() -> Iterator[OrtRunner]:
    r = OrtRunner(tiny_deployment("ort"))
    asyncio.run(r.load())
    yield r
    asyncio.run(r.unload())


# -- structured outputs ------------------------------------------------------------------------


def test_fifty_json_schema_answers_all_validate(runner: OrtRunner) -> None:
    assert len(set(PROMPTS)) == 50
    fmt = ResponseFormat("json_schema", ANSWER_SCHEMA, name="answer", strict=True)
    results = run_all(runner, [ask(p, response_format=fmt) for p in PROMPTS])
    for prompt, chunks in zip(PROMPTS, results, strict=True):
        (choice,) = assemble_choices(chunks)
        assert choice.finish_reason == "stop", (prompt, choice)
        jsonschema.validate(json.loads(choice.text), ANSWER_SCHEMA)
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == sum(c.token_count for c in chunks)


def test_json_object_and_regex(runner: OrtRunner) -> None:
    obj = ResponseFormat("json_object")
    pattern = r"(yes|no), it is [a-z]{2,8}\."
    regex = ResponseFormat("regex", pattern=pattern)
    requests = [ask(q, response_format=obj, max_tokens=120) for q in QUESTIONS[:8]]
    requests += [ask(q, response_format=regex) for q in QUESTIONS]
    results = run_all(runner, requests)
    # Any JSON object: a tiny model may write a string until max_tokens; what ends is an object.
    ended = [assemble_choices(chunks)[0] for chunks in results[:8]]
    ended = [c for c in ended if c.finish_reason == "stop"]
    assert len(ended) >= 3 and all(isinstance(json.loads(c.text), dict) for c in ended)
    for chunks in results[8:]:
        (choice,) = assemble_choices(chunks)
        assert choice.finish_reason == "stop" and re.fullmatch(pattern, choice.text), choice.text


def test_guided_requests_on_every_scheduler() -> None:
    fmt = ResponseFormat("json_schema", ANSWER_SCHEMA)
    for scheduler in ("engine", "generators"):
        r = OrtRunner(tiny_deployment("ort", scheduler=scheduler))
        asyncio.run(r.load())
        try:
            results = run_all(r, [ask(q, response_format=fmt) for q in QUESTIONS[:4]] + [ask("Hello!")])
            for chunks in results[:4]:
                jsonschema.validate(json.loads(assemble_choices(chunks)[0].text), ANSWER_SCHEMA)
            assert assemble_choices(results[4])[0].text == HELLO  # unguided, beside them
        finally:
            asyncio.run(r.unload())


def test_what_guidance_cannot_do_is_refused_by_field(runner: OrtRunner) -> None:
    async def go() -> None:
        cases = [
            (
                ask("Hi", response_format=ResponseFormat("json_schema", {"type": "objekt"})),
                "response_format.json_schema",
            ),
            (ask("Hi", response_format=ResponseFormat("regex", pattern="([")), "response_format.pattern"),
            (ask("Hi", tools=TOOLS, tool_choice=ToolChoice("function", "nope")), "tool_choice"),
            (ask("Hi", tool_choice=ToolChoice("required")), "tool_choice"),
        ]
        for request, field in cases:
            chunks, error = await outcome(runner, request)
            assert chunks == [] and isinstance(error, InvalidRequestError), (request, error)
            assert error.field == field
        assert "".join(c.text for c in await collect(runner, ask("Hello!"))) == HELLO  # still serving

    asyncio.run(go())


# -- forced tool calls -------------------------------------------------------------------------


def test_named_tool_choice_arguments_always_validate(runner: OrtRunner) -> None:
    choice = ToolChoice("function", "book")
    requests = [ask(q, tools=(BOOKING,), tool_choice=choice, max_tokens=48) for q in QUESTIONS + PROMPTS[23:36]]
    results = run_all(runner, requests)
    for request, chunks in zip(requests, results, strict=True):
        call = check_call_stream(chunks, request)
        assert call.name == "book"
        jsonschema.validate(json.loads(call.arguments), BOOKING.schema)


def test_named_and_required_calls_on_trained_prompts(runner: OrtRunner) -> None:
    questions = list(TRAINED_CALLS)
    requests = [ask(q, tools=TOOLS, tool_choice=ToolChoice("function", TRAINED_CALLS[q][0])) for q in questions]
    requests += [ask(q, tools=TOOLS, tool_choice=ToolChoice("required")) for q in questions]
    requests += [ask("Hello!", tools=(WEATHER,), tool_choice=ToolChoice("required"))]  # one tool: named
    results = run_all(runner, requests)
    for i, (request, chunks) in enumerate(zip(requests, results, strict=True)):
        call = check_call_stream(chunks, request)
        tool = {t.name: t for t in TOOLS}[call.name]
        jsonschema.validate(json.loads(call.arguments), dict(tool.schema))
        if i < 2 * len(questions):  # what the model learnt, now under the schema
            assert (call.name, json.loads(call.arguments)) == TRAINED_CALLS[questions[i % len(questions)]]


# -- automatic tool calls (the model decides) ---------------------------------------------------


def test_auto_calls_the_tools_on_the_trained_prompts(runner: OrtRunner) -> None:
    questions = list(TRAINED_CALLS)
    requests = [ask(q, tools=TOOLS) for q in questions]
    requests += [ask(q, tools=TOOLS, tool_choice=ToolChoice("auto")) for q in questions]
    results = run_all(runner, requests)
    for request, chunks in zip(requests, results, strict=True):
        call = check_call_stream(chunks, request)
        assert (call.name, json.loads(call.arguments)) == TRAINED_CALLS[request.messages[0].text]  # type: ignore[index]
        assert not any("<" in c.text for c in chunks)  # the tag never leaks as text


def test_auto_answers_plainly_and_none_hides_the_tools(runner: OrtRunner) -> None:
    results = run_all(
        runner,
        [
            ask("Hello!", tools=TOOLS),
            ask("What is two plus two?", tools=TOOLS),
            ask("What is the weather in Paris?", tools=TOOLS, tool_choice=ToolChoice("none")),
        ],
    )
    answers = [assemble_choices(chunks)[0] for chunks in results]
    assert [(a.text, a.finish_reason, a.tool_calls) for a in answers[:2]] == [
        (HELLO, "stop", ()),
        ("Two plus two is four.", "stop", ()),
    ]
    assert answers[2].tool_calls == () and answers[2].finish_reason == "stop"  # no tools shown, none parsed


def test_tool_results_render_through_the_template_and_get_answered(runner: OrtRunner) -> None:
    def conversation(question: str, name: str, args: dict[str, str], result: dict[str, str]) -> list[Message]:
        call = ToolCall("call_7", name, json.dumps(args))
        return [
            Message("user", question),
            Message("assistant", None, tool_calls=(call,)),
            Message("tool", json.dumps(result), tool_call_id="call_7"),
        ]

    requests = [
        ask(conversation("What is the weather in Paris?", "get_weather", {"city": "Paris"},
                         {"city": "Paris", "weather": "sunny, 21 C"}), tools=TOOLS, max_tokens=40),
        ask(conversation("What time is it in UTC?", "get_time", {"timezone": "UTC"},
                         {"timezone": "UTC", "time": "09:30"}), tools=TOOLS, max_tokens=40),
    ]  # fmt: skip
    results = run_all(runner, requests)
    answers = [assemble_choices(chunks)[0] for chunks in results]
    assert [(a.text, a.finish_reason) for a in answers] == [
        ("The weather in Paris is sunny, 21 C.", "stop"),
        ("It is 09:30 in UTC.", "stop"),
    ]


def test_template_renders_like_transformers() -> None:
    """ORT GenAI's template engine and transformers' Jinja give the same prompt for tools, tool
    calls and tool results (the runner feeds the one, the model was trained on the other)."""
    transformers = pytest.importorskip("transformers")
    import onnxruntime_genai as og

    hf = transformers.AutoTokenizer.from_pretrained(MODEL / "hf")
    tok = og.Tokenizer(og.Model(str(MODEL / "onnx")))
    call = ToolCall("call_1", "get_weather", '{"city": "Rome"}')
    messages = [
        Message("system", "Be brief."),
        Message("user", "What is the weather in Rome?"),
        Message("assistant", None, tool_calls=(call,)),
        Message("tool", '{"city": "Rome", "weather": "sunny, 25 C"}', tool_call_id="call_1"),
    ]
    wire = [m.to_openai() for m in messages]
    tools = [t.to_openai() for t in TOOLS]
    for tl in (tools, None):
        ours = tok.apply_chat_template(
            json.dumps(wire), tools=json.dumps(tl) if tl else None, add_generation_prompt=True
        )
        theirs = hf.apply_chat_template(wire, tools=tl, tokenize=False, add_generation_prompt=True)
        assert ours == theirs
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "Rome"}}</tool_call></s>' in ours


# -- the text readers ---------------------------------------------------------------------------


def test_auto_stream_holds_a_possible_tag_and_keeps_what_is_not_a_call() -> None:
    request = ask("x", tools=TOOLS)
    text = 'Sure <tool<b> <tool_call>{"name": "get_time", "arguments": {"timezone": "UTC"}}</tool_call> ok'
    text += ' <tool_call>{"name": "nope", "arguments": {}}</tool_call><tool_call>{"name": "get_weather",'
    text += ' "arguments": {"city": "Lima"}}'
    for size in (1, 2, 3, 7, len(text)):
        stream = AutoStream(request)
        out, deltas = "", []
        for i in range(0, len(text), size):
            piece, ds = stream.feed(text[i : i + size])
            out += piece
            deltas += ds
            if len(out) < 18:  # text before the call with an unknown name never shows a tag
                assert "<tool_call" not in out
        piece, ds = stream.finish()
        out += piece
        deltas += ds
        assert out == 'Sure <tool<b>  ok <tool_call>{"name": "nope", "arguments": {}}</tool_call>'
        assert [(d.index, d.name, d.arguments) for d in deltas] == [
            (0, "get_time", ""),
            (0, None, '{"timezone": "UTC"}'),
            (1, "get_weather", ""),  # EOS before its closing tag: complete, so still a call
            (1, None, '{"city": "Lima"}'),
        ]
        assert stream.calls == 2


def test_call_stream_streams_the_arguments_once_the_name_is_known() -> None:
    request = ask("x", tools=TOOLS, tool_choice=ToolChoice("required"))
    text = '{"name": "get_time", "arguments": {"timezone": "Europe/Paris"}}'
    for size in (1, 4, len(text)):
        stream = CallStream(request)
        deltas = []
        for i in range(0, len(text), size):
            piece, ds = stream.feed(text[i : i + size])
            assert piece == ""
            deltas += ds
        deltas += stream.finish()[1]
        assert deltas[0].name == "get_time" and deltas[0].arguments == ""
        assert "".join(d.arguments for d in deltas) == '{"timezone": "Europe/Paris"}'


def test_plans() -> None:
    fmt = ResponseFormat("json_object")
    assert output_plan(ask("x")).guidance is None
    assert output_plan(ask("x", response_format=fmt)).guidance is not None
    assert output_plan(ask("x", tools=TOOLS)).tools_mode == "auto"
    assert output_plan(ask("x", tools=TOOLS, response_format=fmt)).tools_mode == "none"  # the format wins
    none = output_plan(ask("x", tools=TOOLS, tool_choice=ToolChoice("none")))
    assert none.template_tools == () and none.tools_mode == "none"
    named_request = ask("x", tools=TOOLS, tool_choice=ToolChoice("function", "get_time"))
    named = output_plan(named_request)
    assert named.guidance is not None and named.guidance.kind == "json_schema" and named.prefill == ""
    assert json.loads(named.guidance.data)["properties"] == {"timezone": {"type": "string"}}
    tagged = output_plan(named_request, tagged_calls=True)  # the built-in model's format
    assert tagged.prefill == '<tool_call>{"name": "get_time", "arguments": ' and tagged.suffix == "}</tool_call>"
    assert tagged.guidance is not None and tagged.guidance.kind == "lark_grammar"
    required = output_plan(ask("x", tools=TOOLS, tool_choice=ToolChoice("required")))
    assert required.tools_mode == "call" and required.prefill == "" and required.suffix == "}"


# -- through a node's HTTP front with the openai SDK ---------------------------------------------


def http_base(output: str) -> str:
    m = re.search(r"http front on (http://\S+)", output)
    assert m, output[-2000:]
    return m.group(1)


def test_openai_sdk_structured_output_and_named_tool_call(local_node: Any) -> None:
    openai = pytest.importorskip("openai")
    sdk = openai.OpenAI(base_url=http_base(local_node.output()) + "/v1", api_key="none", max_retries=0, timeout=60)
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": ANSWER_SCHEMA, "strict": True}}
    resp = sdk.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "What is an actor?"}], response_format=fmt, max_tokens=120
    )
    jsonschema.validate(json.loads(resp.choices[0].message.content or ""), ANSWER_SCHEMA)
    tools: Any = [t.to_openai() for t in (WEATHER, TIME)]
    named: Any = {"type": "function", "function": {"name": "get_weather"}}
    messages: Any = [{"role": "user", "content": "What is the weather in Paris?"}]
    resp = sdk.chat.completions.create(model="tiny", messages=messages, tools=tools, tool_choice=named)
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
    stream = sdk.chat.completions.create(model="tiny", messages=messages, tools=tools, stream=True)
    pieces = [c.choices[0] for c in stream if c.choices]
    deltas = [d for p in pieces for d in (p.delta.tool_calls or [])]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == {"city": "Paris"}
    assert pieces[-1].finish_reason == "tool_calls"


def test_parallel_tool_calls_false_makes_one_call_at_most() -> None:
    text = '<tool_call>{"name": "get_time", "arguments": {"timezone": "UTC"}}</tool_call>'
    text += '<tool_call>{"name": "get_weather", "arguments": {"city": "Lima"}}</tool_call>'
    for parallel, calls in ((None, 2), (True, 2), (False, 1)):
        request = dataclasses.replace(ask("x", tools=TOOLS), parallel_tool_calls=parallel)
        stream = AutoStream(request)
        out, deltas = stream.feed(text)
        rest, more = stream.finish()
        heads = [d for d in (*deltas, *more) if d.id is not None]
        assert len(heads) == calls == stream.calls
        assert (out + rest == "") == (calls == 2)  # the call past the limit stays text, as written
