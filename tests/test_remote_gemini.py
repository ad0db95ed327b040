"""The Gemini runner: the real `google-genai` SDK against a fake Gemini API on 127.0.0.1.

What every remote runner does (answers, streaming, stops, seeds, logprobs, cancellation, errors
mapped (Google's other statuses and a bad key answered with 400 in its adapter), a finish reason, a
missing key, unknown model, unreachable provider, retry-after, 4xx never retried, deadline,
circuit breaker, a stream cut mid-way, malformed bodies, the key kept out of errors and logs) is the
runner contract's (tests/runners/). Here, what is the Gemini runner's own: system_instruction,
roles, generation config and the URL the SDK calls, its finish-reason table, logprobs as Gemini
gives them (per streamed response, whole answers through the SDK), error events in a stream,
RetryInfo; tools (function declarations, tool_config, functionCall parts read as whole tool calls,
functionResponse parts found by call id, thought signatures sent back or Google's placeholder,
Gemini's own call ids), images as inline data (links refused by field), JSON output, several
candidates (n), penalties, thoughts as reasoning, cached and thought tokens, top logprobs, and what
the API lacks refused by field. End to end: a real node serving a deployment that points at the
fake answers `Client.generate` and `Client.stream` (with logprobs too), and the official openai
SDK through the node's HTTP front gets a tool call, the answer to its result, and the same call
streamed.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from atomr.runners.remote.gemini.runner import GeminiRunner, chosen_logprobs, finish_reason_of

from atomr.client import Client
from atomr.core.errors import InvalidRequestError
from atomr.core.runner import check_supported
from atomr.core.types import InferenceRequest, SamplingParams, TokenLogprob, Usage, assemble_choices
from tests.fakes.gemini_server import (
    SKIP_SIGNATURE,
    THOUGHT_SIGNATURE,
    FakeGemini,
    error_json,
    token_logprob,
    tokenize,
)
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
from tests.test_remote_anthropic import (
    ASK,
    PNG,
    WEATHER,
    answered,
    check_tools_through_the_openai_sdk,
    http_base,
    tool_request,
)

KEY = f"AIza-test-{uuid.uuid4().hex}"
KEY_ENV = "ATOMR_TEST_GEMINI_KEY"
STREAM_PATH = "/v1/models/gemini-fake:streamGenerateContent?alt=sse"
GOOGLE_ENV = ("GOOGLE_GENAI_API_VERSION", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE")

server, fake, key_env = fake_server_fixtures(FakeGemini, KEY_ENV, KEY, unset=GOOGLE_ENV)


def make_runner(fake: FakeGemini, model: str = "gemini/gemini-fake", **engine: Any) -> GeminiRunner:
    return GeminiRunner(remote_deployment(model, fake.url, KEY_ENV, name="gemini", **engine))


# ---- chat, completion, streaming ----


def test_chat_stream_text_usage_finish_and_system_instruction(fake: FakeGemini) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            req = mixed_roles_chat(max_tokens=100, temperature=0.7, top_p=0.9, top_k=40, seed=3)
            chunks, err = await outcome(runner, req)  # the chunks' shape is the runner contract's
            served = fake.served[-1]
            assert err is None and served.stream and served.finish_reason == "STOP"
            assert chunks[-1].usage == Usage(served.prompt_tokens, served.completion_tokens)
            call = fake.calls[-1]
            assert call.path == STREAM_PATH  # google-genai 3.x defaults to API version v1
            assert call.headers.get("x-goog-api-key") == KEY
            sent = call.body
            assert sent["systemInstruction"]["parts"] == [{"text": "You are terse.\n\nAnswer in English."}]
            assert [c["role"] for c in sent["contents"]] == ["user", "model", "user"]
            assert sent["contents"][1]["parts"] == [{"text": "Hello."}]
            config = sent["generationConfig"]
            assert config["maxOutputTokens"] == 100 and config["seed"] == 3
            assert (config["temperature"], config["topP"], config["topK"]) == (0.7, 0.9, 40)
            assert "stopSequences" not in config

    run(body)


def test_completion_google_prefix_and_api_version(fake: FakeGemini) -> None:
    async def body() -> None:
        runner = make_runner(fake, model="google/gemini-fake", api_version="v1beta")
        assert runner.model_name == "gemini-fake"
        await runner.load()
        try:
            req = InferenceRequest(model="gemini", prompt="Once upon a time", params=SamplingParams(max_tokens=50))
            chunks, err = await outcome(runner, req)
        finally:
            await runner.unload()
        assert err is None and text(chunks) == fake.reply_text
        assert fake.calls[-1].path == "/v1beta/models/gemini-fake:streamGenerateContent?alt=sse"
        sent = fake.calls[-1].body
        assert sent["contents"] == [{"role": "user", "parts": [{"text": "Once upon a time"}]}]
        assert "systemInstruction" not in sent
        config = sent["generationConfig"]
        assert config["maxOutputTokens"] == 50
        assert not {"temperature", "topP", "topK", "seed", "candidateCount"} & set(config)  # unset: not sent
        assert chunks[-1].usage == Usage(4, len(tokenize(fake.reply_text)))

    run(body)


def test_stop_sequences_and_max_tokens_go_on_the_wire(fake: FakeGemini) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=100, stop=(" one", "never")))
            assert err is None and chunks[-1].finish_reason == "stop"
            assert fake.calls[-1].body["generationConfig"]["stopSequences"] == [" one", "never"]
            assert chunks[-1].usage == Usage(1, len(tokenize(text(chunks))))

            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=3))
            assert err is None and fake.calls[-1].body["generationConfig"]["maxOutputTokens"] == 3
            assert fake.served[-1].finish_reason == "MAX_TOKENS" and chunks[-1].finish_reason == "length"

    run(body)


# ---- logprobs ----


def test_logprobs_arrive_on_every_streamed_chunk(fake: FakeGemini) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=100, logprobs=True))
            assert err is None
            config = fake.calls[-1].body["generationConfig"]
            assert config["responseLogprobs"] is True and config["logprobs"] == 1
            served = fake.served[-1]
            tokens = tokenize(fake.reply_text)
            assert served.stream and served.logprobs is not None and len(served.logprobs) == len(tokens)
            # one streamed response per token here: each chunk carries its response's chosen token
            for i, (chunk, token) in enumerate(zip(chunks[:-1], tokens, strict=True)):
                assert chunk.text == token and chunk.token_count == 1
                assert chunk.logprobs == (TokenLogprob(token, token_logprob(i, token)),)
            got = [(lp.token, lp.logprob) for c in chunks for lp in c.logprobs or ()]
            assert got == list(served.logprobs)
            assert all(v < 0 for _, v in got)
            last = chunks[-1]
            assert last.logprobs == () and last.finish_reason == "stop"
            assert sum(c.token_count for c in chunks) == last.usage.completion_tokens == len(tokens)

            # cut by max_tokens: the logprobs are those of the tokens sent, no more
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=3, logprobs=True))
            assert err is None and chunks[-1].finish_reason == "length"
            assert [lp.token for c in chunks for lp in c.logprobs or ()] == tokens[:3]

    run(body)


def test_no_logprobs_asked_of_the_api_unless_asked(fake: FakeGemini) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=100))
            assert err is None and all(c.logprobs is None for c in chunks)
            config = fake.calls[-1].body["generationConfig"]
            assert "responseLogprobs" not in config and "logprobs" not in config
            assert fake.served[-1].logprobs is None  # the fake sent no logprobsResult

    run(body)


def test_whole_answer_logprobs_through_the_sdk(fake: FakeGemini) -> None:
    """`generateContent` (one whole response) as the SDK reads it from the fake: chosen and top
    candidates for every token when asked, no `logprobs_result` otherwise; the runner's reading
    of a `LogprobsResult` gives the chosen tokens in order."""

    async def body() -> None:
        from google.genai import errors, types

        async with load(make_runner(fake)) as runner:
            tokens = tokenize(fake.reply_text)
            config = types.GenerateContentConfig(response_logprobs=True, logprobs=3, temperature=0.0)
            whole = await runner.client.aio.models.generate_content(model="gemini-fake", contents="hi", config=config)
            assert fake.calls[-1].path == "/v1/models/gemini-fake:generateContent"
            sent = fake.calls[-1].body["generationConfig"]
            assert (sent["responseLogprobs"], sent["logprobs"]) == (True, 3)
            result = whole.candidates[0].logprobs_result
            assert result is not None and not fake.served[-1].stream
            assert [c.token for c in result.chosen_candidates] == tokens
            expected = tuple(TokenLogprob(t, token_logprob(i, t)) for i, t in enumerate(tokens))
            assert chosen_logprobs(result) == expected
            assert [(lp.token, lp.logprob) for lp in expected] == list(fake.served[-1].logprobs or ())
            assert len(result.top_candidates) == len(tokens)
            for step, chosen in zip(result.top_candidates, result.chosen_candidates, strict=True):
                probs = [c.log_probability for c in step.candidates]
                assert len(probs) == 3 and probs == sorted(probs, reverse=True) and probs[0] == chosen.log_probability
            assert result.log_probability_sum == pytest.approx(sum(lp.logprob for lp in expected))

            plain = await runner.client.aio.models.generate_content(model="gemini-fake", contents="hi")
            assert plain.text == fake.reply_text and plain.candidates[0].logprobs_result is None
            assert chosen_logprobs(None) == ()

            # as the API: `logprobs` alone (no responseLogprobs) is refused
            with pytest.raises(errors.ClientError) as info:
                await runner.client.aio.models.generate_content(
                    model="gemini-fake", contents="hi", config=types.GenerateContentConfig(logprobs=2)
                )
            assert info.value.code == 400

    run(body)


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("OTHER", "stop"),
    ],
)
def test_finish_reason_table(reason: str, finish: str) -> None:
    from google.genai import types

    assert finish_reason_of(reason) == finish
    assert finish_reason_of(types.FinishReason(reason)) == finish


# ---- tools, images, structured output, choices ----


@pytest.mark.parametrize("stream", [True, False])
def test_tool_call_round_trip(fake: FakeGemini, stream: bool) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, tool_request(ASK, stream=stream))
            assert err is None, err
            (choice,) = assemble_choices(chunks)
            assert choice.finish_reason == "tool_calls" == chunks[-1].finish_reason and choice.text == ""
            (call,) = choice.tool_calls
            assert call.id.startswith("call_") and len(call.id) == 29 and call.name == "get_weather"
            assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
            assert fake.served[-1].tool_calls == (("get_weather", {"city": "Paris", "unit": "celsius"}),)
            deltas = [d for c in chunks for d in c.tool_calls]
            assert len(deltas) == 1 and deltas[0].id == call.id  # a call comes whole, in one piece
            sent = fake.calls[-1].body
            assert sent["systemInstruction"]["parts"] == [{"text": "Be brief."}]
            assert sent["tools"] == [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_weather",
                            "description": "The weather in a city.",
                            # google-genai sends the field by its proto name, which the API reads too
                            "parameters_json_schema": WEATHER["function"]["parameters"],
                        },
                        {"name": "get_time", "parameters_json_schema": {"type": "object", "properties": {}}},
                    ]
                }
            ]
            assert "toolConfig" not in sent
            assert not {"temperature", "topP", "topK", "seed", "maxOutputTokens"} & set(sent["generationConfig"])

            follow = [*ASK, answered(chunks, choice.tool_calls)]
            follow.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"})
            chunks, err = await outcome(runner, tool_request(follow, stream=stream))
            assert err is None, err
            (choice,) = assemble_choices(chunks)
            assert (choice.text, choice.finish_reason, choice.tool_calls) == ("The tool said: Sunny, 21 C", "stop", ())
            assert fake.calls[-1].body["contents"][1:] == [
                {
                    "role": "model",
                    "parts": [
                        {
                            "functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}},
                            "thoughtSignature": THOUGHT_SIGNATURE,  # sent back as it came
                        }
                    ],
                },
                {
                    "role": "user",
                    "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": "Sunny, 21 C"}}}],
                },
            ]

    run(body)


@pytest.mark.parametrize(
    ("tool_choice", "wire", "calls"),
    [
        ("required", {"mode": "ANY"}, 1),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_time"]},
            1,
        ),
        ("none", {"mode": "NONE"}, 0),
        ("auto", {"mode": "AUTO"}, 0),
    ],
)
def test_tool_choice_on_the_wire(fake: FakeGemini, tool_choice: Any, wire: dict[str, Any], calls: int) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            req = tool_request([{"role": "user", "content": "What time is it?"}], tool_choice=tool_choice)
            chunks, err = await outcome(runner, req)
            assert err is None, err
            assert fake.calls[-1].body["toolConfig"] == {"functionCallingConfig": wire}
            (choice,) = assemble_choices(chunks)
            assert len(choice.tool_calls) == calls
            if calls:
                assert choice.tool_calls[0].name == wire.get("allowedFunctionNames", ["get_weather"])[0]
            else:
                assert choice.text == fake.reply_text and choice.finish_reason == "stop"

    run(body)


def test_parallel_calls_json_results_and_geminis_own_ids(fake: FakeGemini) -> None:
    async def body() -> None:
        fake.parallel_calls = 2
        fake.call_ids = True
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, tool_request(ASK))
            assert err is None
            (choice,) = assemble_choices(chunks)
            first, second = choice.tool_calls
            assert first.id.startswith("fc-") and second.id.startswith("fc-") and first.id != second.id
            assert [d.index for c in chunks for d in c.tool_calls] == [0, 1]
            follow = [
                *ASK,
                answered(chunks, choice.tool_calls),
                {"role": "tool", "tool_call_id": first.id, "content": '{"sky": "clear", "celsius": 21}'},
                {"role": "tool", "tool_call_id": second.id, "content": "[1, 2]"},
            ]
            chunks, err = await outcome(runner, tool_request(follow))
            assert err is None, err
            assert text(chunks) == 'The tool said: {"sky": "clear", "celsius": 21}; [1, 2]'
            model, results = fake.calls[-1].body["contents"][1:]
            assert [p.get("thoughtSignature") for p in model["parts"]] == [THOUGHT_SIGNATURE, None]
            assert [p["functionCall"]["id"] for p in model["parts"]] == [first.id, second.id]
            assert results == {
                "role": "user",
                "parts": [
                    {
                        "functionResponse": {
                            "id": first.id,
                            "name": "get_weather",
                            "response": {"sky": "clear", "celsius": 21},
                        }
                    },
                    {"functionResponse": {"id": second.id, "name": "get_weather", "response": {"result": "[1, 2]"}}},
                ],
            }

    run(body)


def test_calls_from_elsewhere_get_the_placeholder_signature(fake: FakeGemini) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            call = {"id": "call_x1", "type": "function", "function": {"name": "get_time", "arguments": ""}}
            follow = [
                *ASK,
                {"role": "assistant", "content": "Checking.", "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_x1", "content": "noon"},
            ]
            chunks, err = await outcome(runner, tool_request(follow))
            assert err is None and text(chunks) == "The tool said: noon"
            model = fake.calls[-1].body["contents"][1]
            assert model["parts"] == [
                {"text": "Checking."},
                {"functionCall": {"name": "get_time", "args": {}}, "thoughtSignature": SKIP_SIGNATURE},
            ]
            # what cannot be sent is refused by field, before any call
            lost = [*ASK[:2], {"role": "tool", "tool_call_id": "call_nowhere", "content": "noon"}]
            _, err = await outcome(runner, tool_request(lost))
            assert isinstance(err, InvalidRequestError) and err.field == "messages[2].tool_call_id"
            bad = {**call, "function": {"name": "get_time", "arguments": "[1"}}
            broken = [*ASK, {"role": "assistant", "content": None, "tool_calls": [bad]}, follow[-1]]
            _, err = await outcome(runner, tool_request(broken))
            assert isinstance(err, InvalidRequestError) and err.field == "messages[2].tool_calls[0].function.arguments"
            assert fake.count() == 1

    run(body)


def test_images_inline_and_links_refused(fake: FakeGemini) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            parts = [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": PNG}}]
            chunks, err = await outcome(runner, tool_request([{"role": "user", "content": parts}], tools=[]))
            assert err is None and text(chunks) == fake.reply_text
            data = PNG.split(";base64,")[1]
            assert fake.calls[-1].body["contents"][0]["parts"] == [
                {"text": "What is this?"},
                {
                    "inlineData": {
                        "mime_type": "image/png",  # proto names, as the SDK sends
                        "data": wire_bytes(data),
                    }
                },
            ]
            link = [parts[0], {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]
            _, err = await outcome(runner, tool_request([{"role": "user", "content": link}], tools=[]))
            assert isinstance(err, InvalidRequestError) and err.field == "messages[0].content[1]"
            assert fake.count() == 1

    run(body)


def test_json_choices_penalties_and_seed_on_the_wire(fake: FakeGemini) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}

    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
            chunks, err = await outcome(runner, tool_request(ASK, tools=[], response_format=fmt, n=2, seed=5))
            assert err is None, err
            config = fake.calls[-1].body["generationConfig"]
            assert (config["responseMimeType"], config["responseJsonSchema"]) == ("application/json", schema)
            assert (config["candidateCount"], config["seed"]) == (2, 5)
            choices = assemble_choices(chunks)
            assert [c.index for c in choices] == [0, 1]
            assert all(json.loads(c.text) == {"answer": "Paris"} and c.finish_reason == "stop" for c in choices)
            assert [c.index for c in chunks if c.finish_reason] == [0, 1] and chunks[-1].usage is not None
            assert chunks[-1].usage.completion_tokens == fake.served[-1].completion_tokens

            req = tool_request(
                ASK, tools=[], response_format={"type": "json_object"}, presence_penalty=0.5, frequency_penalty=-0.5
            )
            chunks, err = await outcome(runner, req)
            assert err is None and json.loads(text(chunks)) == {"answer": fake.reply_text}
            config = fake.calls[-1].body["generationConfig"]
            assert config["responseMimeType"] == "application/json" and "responseJsonSchema" not in config
            assert (config["presencePenalty"], config["frequencyPenalty"]) == (0.5, -0.5)

    run(body)


def test_thoughts_cached_tokens_and_top_logprobs(fake: FakeGemini) -> None:
    async def body() -> None:
        fake.thought_text = "Thinking about Paris."
        fake.cached_tokens = 3
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, tool_request(ASK, tools=[], reasoning_effort="low", max_tokens=100))
            assert err is None, err
            config = fake.calls[-1].body["generationConfig"]
            assert config["thinkingConfig"] == {"include_thoughts": True, "thinking_level": "LOW"}  # as the SDK
            (choice,) = assemble_choices(chunks)
            assert (choice.reasoning, choice.text) == (fake.thought_text, fake.reply_text)
            thoughts = len(tokenize(fake.thought_text))
            served = fake.served[-1]
            assert chunks[-1].usage == Usage(
                served.prompt_tokens, served.completion_tokens + thoughts, cached_tokens=3, reasoning_tokens=thoughts
            )
            _, err = await outcome(runner, tool_request(ASK, tools=[], reasoning_effort="none"))
            assert err is None and fake.calls[-1].body["generationConfig"]["thinkingConfig"] == {"thinking_budget": 0}

            fake.thought_text = ""
            chunks, err = await outcome(runner, tool_request(ASK, tools=[], logprobs=True, top_logprobs=3))
            assert err is None
            assert fake.calls[-1].body["generationConfig"]["logprobs"] == 3
            lps = [lp for c in chunks for lp in c.logprobs or ()]
            assert [lp.token for lp in lps] == tokenize(fake.reply_text)
            assert all(len(lp.top) == 3 and lp.top[0].logprob == lp.logprob for lp in lps)

    run(body)


def wire_bytes(data: str) -> str:
    """Bytes as google-genai writes them in JSON (URL-safe base64)."""
    return base64.urlsafe_b64encode(base64.b64decode(data)).decode()


REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"parallel_tool_calls": False}, "parallel_tool_calls"),
    ({"logit_bias": {"42": 1.0}}, "logit_bias"),
    ({"user": "u1"}, "user"),
    ({"metadata": {"team": "a"}}, "metadata"),
    ({"response_format": {"type": "regex", "pattern": "a+"}}, "response_format.type"),
    ({"extra": {"prediction": {"type": "content"}}}, "prediction"),
]


@pytest.mark.parametrize(("fields", "field"), REFUSED)
def test_what_the_api_lacks_is_refused_by_field(fake: FakeGemini, fields: dict[str, Any], field: str) -> None:
    runner = make_runner(fake)
    with pytest.raises(InvalidRequestError) as info:
        check_supported(runner, tool_request(ASK, **dict(fields)))
    assert info.value.field == field and "gemini" in info.value.message
    honoured = tool_request(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hi"}, {"type": "image_url", "image_url": {"url": PNG}}],
            }
        ],
        tool_choice="required",
        top_k=5,
        seed=1,
        n=2,
        presence_penalty=0.1,
        frequency_penalty=0.1,
        logprobs=True,
        top_logprobs=2,
        reasoning_effort="high",
        response_format={"type": "json_object"},
    )
    check_supported(runner, honoured)


# ---- errors ----


def test_error_event_mid_stream(fake: FakeGemini) -> None:
    async def body() -> None:
        async with load(make_runner(fake, retry=FAST_RETRY)) as runner:
            fake.error_event_next(503, f"The model is overloaded. {KEY}", after=2)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert [c.text for c in chunks] == tokenize(fake.reply_text)[:2]
            assert err is not None and err.kind == "unavailable"
            assert_key_hidden(err, KEY)
            assert fake.count() == 1

            fake.error_event_next(429, "Resource has been exhausted.", after=0)  # before any text: retried
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text(chunks) == fake.reply_text
            assert fake.count() == 3

    run(body)


# ---- retries ----


def test_429_retry_info_in_the_body_is_honoured(fake: FakeGemini) -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}

    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            fake.fail_next(429, error_json(429, "Quota exceeded.", details=[retry_info]))
            _, err = await outcome(runner, chat(("user", "hi")))
            assert err is not None and err.kind == "rate_limited" and err.retry_after == 1.0
        async with load(make_runner(fake, retry=FAST_RETRY)) as runner:
            fake.reset()
            fake.fail_next(429, error_json(429, "Quota exceeded.", details=[retry_info]))
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text(chunks) == fake.reply_text
            assert fake.calls[1].at - fake.calls[0].at >= 1.0

    run(body)


# ---- end to end ----


def test_end_to_end_through_a_node(fake: FakeGemini, tmp_path: Path) -> None:
    deployment = key_file_deployment(tmp_path, "gemini", "gemini/gemini-fake", fake.url, KEY)
    with node_serving(tmp_path, {"deployments": [deployment]}) as node, Client(node.address) as client:

        def sent(body: dict[str, Any]) -> None:
            assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]

        check_served_through_a_client(client, fake, "gemini", KEY, sent)
        # logprobs through the node: a whole answer, then a stream
        whole = client.generate("gemini", "Hi", max_tokens=5, logprobs=True)
        tokens = tokenize(fake.reply_text)[:5]
        assert whole.text == "".join(tokens) and fake.calls[-1].body["generationConfig"]["responseLogprobs"]
        assert whole.logprobs is not None and [(lp.token, lp.logprob) for lp in whole.logprobs] == [
            (t, token_logprob(i, t)) for i, t in enumerate(tokens)
        ]
        assert whole.confidence is not None and whole.confidence["min_logprob"] < 0
        chunks = list(client.stream("gemini", prompt="Tell me", max_tokens=4, logprobs=True))
        assert [lp.token for c in chunks for lp in c.logprobs or ()] == tokenize(fake.reply_text)[:4]
        assert client.generate("gemini", "Hi", max_tokens=2).logprobs is None
    assert KEY not in node.output()


def test_tools_end_to_end_through_the_http_front(fake: FakeGemini, tmp_path: Path) -> None:
    deployment = key_file_deployment(tmp_path, "gemini", "gemini/gemini-fake", fake.url, KEY)
    with node_serving(tmp_path, {"deployments": [deployment], "http": {"port": 0}}) as node:

        def wire(first: Mapping[str, Any], second: Mapping[str, Any]) -> None:
            assert first["tools"][0]["functionDeclarations"][0]["name"] == "get_weather"
            assert "toolConfig" not in first and "temperature" not in first.get("generationConfig", {})
            assert "functionCall" in second["contents"][1]["parts"][0]
            assert second["contents"][2]["parts"][0]["functionResponse"]["name"] == "get_weather"

        check_tools_through_the_openai_sdk(http_base(node), "gemini", fake, wire)
    assert KEY not in node.output()
