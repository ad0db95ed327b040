"""The Gemini runner: the real `google-genai` SDK against a fake Gemini API on 127.0.0.1.

What every remote runner does (answers, streaming, stops, seeds, logprobs, cancellation, errors
mapped (Google's other statuses and a bad key answered with 400 in its adapter), a finish reason, a
missing key, unknown model, unreachable provider, retry-after, 4xx never retried, deadline,
circuit breaker, a stream cut mid-way, malformed bodies, the key kept out of errors and logs) is the
runner contract's (tests/runners/). Here, what is the Gemini runner's own: system_instruction,
roles, generation config and the URL the SDK calls, its finish-reason table, logprobs as Gemini
gives them (per streamed response, whole answers through the SDK), error events in a stream,
RetryInfo. End to end: a real node serving a deployment that
points at the fake answers `Client.generate` and `Client.stream` (with logprobs too).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from atomr.runners.remote.gemini.runner import GeminiRunner, chosen_logprobs, finish_reason_of

from atomr.client import Client
from atomr.core.types import InferenceRequest, SamplingParams, TokenLogprob, Usage
from tests.fakes.gemini_server import FakeGemini, error_json, token_logprob, tokenize
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
        assert sent["generationConfig"]["temperature"] == 0.0
        assert "topP" not in sent["generationConfig"] and "topK" not in sent["generationConfig"]
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
