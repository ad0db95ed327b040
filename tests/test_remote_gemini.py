"""The Gemini runner: the real `google-genai` SDK against a fake Gemini API on 127.0.0.1.

Runner level: chat, completion, streaming, system_instruction, roles, generation config, stop and
max_output_tokens, logprobs (streamed per response, whole answers through the SDK, none unless
asked), the URL the SDK calls, the error table (Google's statuses, a bad key answered
with 400), retries (retry-after header and RetryInfo, never 4xx), the request deadline, the
circuit breaker, a stream cut mid-way, malformed bodies and API-key redaction. End to end: a real
node serving a deployment that points at the fake answers `Client.generate` and `Client.stream`
(with logprobs too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from atomr.runners.catalog import runner_class
from atomr.runners.remote.gemini.runner import GeminiRunner, chosen_logprobs, finish_reason_of

from atomr.client import Client
from atomr.config import deployment_from_dict
from atomr.core.errors import (
    AuthError,
    CircuitOpenError,
    InferenceTimeoutError,
    UnavailableError,
)
from atomr.core.types import InferenceRequest, SamplingParams, TokenLogprob, Usage
from tests.conftest import Node
from tests.fakes.gemini_server import FakeGemini, error_json, token_logprob, tokenize
from tests.remote_support import assert_key_hidden as _assert_key_hidden
from tests.remote_support import chat, load, outcome, run, text_of

KEY = f"AIza-test-{uuid.uuid4().hex}"
KEY_ENV = "ATOMR_TEST_GEMINI_KEY"
NO_RETRY = {"max_attempts": 1}
FAST_RETRY = {"max_attempts": 3, "backoff_initial_s": 0.05, "backoff_max_s": 0.1, "jitter_s": 0.0}
NO_BREAKER = {"failure_threshold": 1000}
STREAM_PATH = "/v1/models/gemini-fake:streamGenerateContent?alt=sse"
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGemini]:
    with FakeGemini(api_key=KEY) as f:
        yield f


@pytest.fixture
def fake(server: FakeGemini) -> FakeGemini:
    server.reset()
    return server


@pytest.fixture(autouse=True)
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    for name in ("GOOGLE_GENAI_API_VERSION", "GOOGLE_GENAI_USE_VERTEXAI", "GOOGLE_GENAI_USE_ENTERPRISE"):
        monkeypatch.delenv(name, raising=False)


def make_runner(fake: FakeGemini, model: str = "gemini/gemini-fake", **engine: Any) -> GeminiRunner:
    options: dict[str, Any] = {"api_base": fake.url, "api_key_env": KEY_ENV, "retry": NO_RETRY, "circuit": NO_BREAKER}
    options.update(engine)
    dep = deployment_from_dict({"name": "gemini", "model": model, "engine": options})
    assert dep.runtime == "gemini"
    cls = runner_class(dep.runtime)
    assert cls is GeminiRunner
    runner = cls(dep)
    assert isinstance(runner, GeminiRunner)
    return runner


def loaded(fake: FakeGemini, **engine: Any) -> contextlib.AbstractAsyncContextManager[GeminiRunner]:
    return load(make_runner(fake, **engine))


def assert_key_hidden(err: BaseException, key: str = KEY) -> None:
    _assert_key_hidden(err, key)


# ---- chat, completion, streaming ----


def test_chat_stream_text_usage_finish_and_system_instruction(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake) as runner:
            req = chat(
                ("system", "You are terse."),
                ("user", "Say hello."),
                ("assistant", "Hello."),
                ("system", "Answer in English."),
                ("user", "Again, please."),
                max_tokens=100,
                temperature=0.7,
                top_p=0.9,
                top_k=40,
                seed=3,
            )
            chunks, err = await outcome(runner, req)
            assert err is None
            served = fake.served[-1]
            assert served.stream and served.finish_reason == "STOP"
            assert text_of(chunks) == served.text == fake.reply_text
            assert [c.text for c in chunks[:-1]] == tokenize(fake.reply_text)
            assert all(c.token_count == 1 and c.finish_reason is None for c in chunks[:-1])
            last = chunks[-1]
            assert last.finish_reason == "stop" and last.token_count == 0 and last.text == ""
            assert last.usage == Usage(served.prompt_tokens, served.completion_tokens)
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
        assert err is None and text_of(chunks) == fake.reply_text
        assert fake.calls[-1].path == "/v1beta/models/gemini-fake:streamGenerateContent?alt=sse"
        sent = fake.calls[-1].body
        assert sent["contents"] == [{"role": "user", "parts": [{"text": "Once upon a time"}]}]
        assert "systemInstruction" not in sent
        assert sent["generationConfig"]["temperature"] == 0.0
        assert "topP" not in sent["generationConfig"] and "topK" not in sent["generationConfig"]
        assert chunks[-1].usage == Usage(4, len(tokenize(fake.reply_text)))

    run(body)


def test_stop_sequences_and_max_tokens_honoured(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake) as runner:
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=100, stop=(" one", "never")))
            assert err is None
            assert fake.calls[-1].body["generationConfig"]["stopSequences"] == [" one", "never"]
            assert text_of(chunks) == fake.reply_text[: fake.reply_text.index(" one")]
            assert chunks[-1].finish_reason == "stop"
            assert chunks[-1].usage == Usage(1, len(tokenize(text_of(chunks))))

            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=3))
            assert err is None and fake.served[-1].finish_reason == "MAX_TOKENS"
            assert text_of(chunks) == "".join(tokenize(fake.reply_text)[:3])
            assert chunks[-1].finish_reason == "length" and chunks[-1].usage == Usage(1, 3)

            fake.finish_override = "SAFETY"
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and chunks[-1].finish_reason == "content_filter"

    run(body)


# ---- logprobs ----


def test_capabilities_say_logprobs() -> None:
    caps = GeminiRunner.capabilities
    assert caps.streaming and caps.chat and caps.completion and caps.logprobs and not caps.needs_gpu


def test_logprobs_arrive_on_every_streamed_chunk(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake) as runner:
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


def test_no_logprobs_unless_asked(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake) as runner:
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=100))
            assert err is None and text_of(chunks) == fake.reply_text
            config = fake.calls[-1].body["generationConfig"]
            assert "responseLogprobs" not in config and "logprobs" not in config
            assert fake.served[-1].logprobs is None  # the fake sent no logprobsResult
            assert all(c.logprobs is None for c in chunks)

    run(body)


def test_whole_answer_logprobs_through_the_sdk(fake: FakeGemini) -> None:
    """`generateContent` (one whole response) as the SDK reads it from the fake: chosen and top
    candidates for every token when asked, no `logprobs_result` otherwise; the runner's reading
    of a `LogprobsResult` gives the chosen tokens in order."""

    async def body() -> None:
        from google.genai import errors, types

        async with loaded(fake) as runner:
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


def test_a_missing_key_fails_at_load(fake: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    runner = make_runner(fake)
    with pytest.raises(AuthError, match=KEY_ENV):
        asyncio.run(runner.load())


# ---- errors ----

ERROR_TABLE = [
    (400, error_json(400, "Invalid value at 'contents[0].role'"), "invalid_request", False, 400),
    (
        400,
        error_json(400, "The input token count (1234567) exceeds the maximum number of tokens allowed (1048576)."),
        "context_length",
        False,
        400,
    ),
    (
        400,
        error_json(
            400,
            "API key not valid. Please pass a valid API key.",
            details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}],
        ),
        "auth",
        False,
        401,
    ),
    (401, error_json(401, "Request had invalid authentication credentials."), "auth", False, 401),
    (403, error_json(403, "Method doesn't allow unregistered callers."), "auth", False, 401),
    (404, error_json(404, "models/gemini-nope is not found for API version v1."), "not_found", False, 404),
    (429, error_json(429, "Resource has been exhausted (e.g. check quota)."), "rate_limited", True, 429),
    (500, error_json(500, "An internal error has occurred."), "unavailable", True, 503),
    (503, error_json(503, "The model is overloaded. Please try again later."), "unavailable", True, 503),
    (504, error_json(504, "Deadline expired before operation could complete."), "timeout", True, 504),
]


@pytest.mark.parametrize(("status", "payload", "kind", "retryable", "http_status"), ERROR_TABLE)
def test_error_table(
    fake: FakeGemini, status: int, payload: dict[str, Any], kind: str, retryable: bool, http_status: int
) -> None:
    payload = {"error": {**payload["error"], "message": payload["error"]["message"] + f" [{KEY}]"}}

    async def body() -> None:
        async with loaded(fake) as runner:
            fake.fail_next(status, payload)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert chunks == [] and err is not None
            assert (err.kind, err.retryable, err.http_status) == (kind, retryable, http_status)
            assert payload["error"]["status"] in err.message
            assert_key_hidden(err)
            assert fake.count() == 1

    run(body)


def test_error_event_mid_stream(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.error_event_next(503, f"The model is overloaded. {KEY}", after=2)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert [c.text for c in chunks] == tokenize(fake.reply_text)[:2]
            assert err is not None and err.kind == "unavailable"
            assert_key_hidden(err)
            assert fake.count() == 1

            fake.error_event_next(429, "Resource has been exhausted.", after=0)  # before any text: retried
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text
            assert fake.count() == 3

    run(body)


# ---- retries, deadline, breaker ----


def test_429_retry_after_header_is_honoured_then_succeeds(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.fail_next(429, headers={"retry-after": "1"})
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text
            assert fake.count() == 2
            assert fake.calls[1].at - fake.calls[0].at >= 1.0

    run(body)


def test_429_retry_info_in_the_body_is_honoured(fake: FakeGemini) -> None:
    retry_info = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}

    async def body() -> None:
        async with loaded(fake) as runner:
            fake.fail_next(429, error_json(429, "Quota exceeded.", details=[retry_info]))
            _, err = await outcome(runner, chat(("user", "hi")))
            assert err is not None and err.kind == "rate_limited" and err.retry_after == 1.0
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.reset()
            fake.fail_next(429, error_json(429, "Quota exceeded.", details=[retry_info]))
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text
            assert fake.calls[1].at - fake.calls[0].at >= 1.0

    run(body)


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request"), (401, "auth")])
def test_400_and_401_are_never_retried(fake: FakeGemini, status: int, kind: str) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.fail_next(status, times=2)
            _, err = await outcome(runner, chat(("user", "hi")))
            assert err is not None and err.kind == kind
            assert fake.count() == 1

    run(body)


def test_server_errors_are_retried_by_atomr_not_the_sdk(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.fail_next(503, times=2)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text
            assert fake.count() == 3
        async with loaded(fake) as runner:  # max_attempts 1: one call, the SDK adds none
            fake.reset()
            fake.fail_next(503, times=3)
            _, err = await outcome(runner, chat(("user", "hi")))
            assert err is not None and err.kind == "unavailable" and fake.count() == 1

    run(body)


def test_deadline_bounds_a_stalled_provider() -> None:
    async def body(fake: FakeGemini) -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.stall_next(10)
            start = time.monotonic()
            _, err = await outcome(runner, chat(("user", "hi"), deadline=time.time() + 2))
            elapsed = time.monotonic() - start
            assert isinstance(err, InferenceTimeoutError)
            assert 1.5 < elapsed < 3.0
            assert fake.count() == 1

    with FakeGemini(api_key=KEY) as stalled:  # its own server: the stalled handler outlives the test
        run(lambda: body(stalled))


def test_circuit_opens_and_fails_fast(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake, circuit={"failure_threshold": 2, "cooldown_s": 0.3}) as runner:
            fake.fail_next(503, times=2)
            for _ in range(2):
                _, err = await outcome(runner, chat(("user", "hi")))
                assert err is not None and err.kind == "unavailable"
            _, err = await outcome(runner, chat(("user", "hi")))
            assert isinstance(err, CircuitOpenError) and fake.count() == 2
            await asyncio.sleep(0.35)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text
            assert runner.status()["circuit"]["state"] == "closed" and fake.count() == 3

    run(body)


# ---- broken streams and bodies ----


def test_stream_cut_after_five_events(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.cut_next_after(5)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert [c.text for c in chunks] == tokenize(fake.reply_text)[:5]  # no chunk twice
            assert isinstance(err, UnavailableError) and "finishReason" in err.message
            assert fake.count() == 1

    run(body)


def test_malformed_body_is_a_clear_error(fake: FakeGemini) -> None:
    async def body() -> None:
        async with loaded(fake) as runner:
            fake.malformed_next()
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert chunks == [] and isinstance(err, UnavailableError)
            assert "malformed" in err.message and err.details.get("malformed") is True
            fake.bad_event_next()
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert [c.text for c in chunks] == tokenize(fake.reply_text)[:1]
            assert isinstance(err, UnavailableError) and "malformed" in err.message
            assert fake.count() == 2

    run(body)


# ---- secrets ----


def test_the_key_never_reaches_errors_or_logs(
    fake: FakeGemini, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = f"AIza-wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("ATOMR_TEST_WRONG_KEY", wrong)
    caplog.set_level(logging.DEBUG)

    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:  # right key, error bodies echo it
            fake.fail_next(429, headers={"retry-after": "0"})
            fake.fail_next(500)
            fake.fail_next(503)
            _, err = await outcome(runner, chat(("user", "hi")))
            assert isinstance(err, UnavailableError) and "***" in err.message
            assert_key_hidden(err)
            logging.getLogger("atomr.test").error("request failed: %s (%r)", err, err)
        async with loaded(fake, retry=FAST_RETRY, api_key_env="ATOMR_TEST_WRONG_KEY") as runner:
            _, err = await outcome(runner, chat(("user", "hi")))  # the fake's own 400 echoes the key sent
        assert isinstance(err, AuthError) and "(got ***)" in err.message
        assert_key_hidden(err, wrong)
        logging.getLogger("atomr.test").error("request failed: %s (%r)", err, err)

    run(body)
    assert any("request failed" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text and wrong not in caplog.text


# ---- end to end ----


def test_end_to_end_through_a_node(fake: FakeGemini, tmp_path: Path) -> None:
    key_file = tmp_path / "gemini.key"
    key_file.write_text(KEY + "\n")
    config = tmp_path / "node.yaml"
    deployment = {
        "name": "gemini",
        "model": "gemini/gemini-fake",
        "engine": {"api_base": fake.url, "api_key_file": str(key_file), "retry": FAST_RETRY},
    }
    config.write_text(yaml.safe_dump({"deployments": [deployment]}))
    node = Node(config=config)
    try:
        with Client(node.address) as client:
            got = client.generate(
                "gemini", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
            )
            served = fake.served[-1]
            assert got.text == served.text == fake.reply_text
            assert got.finish_reason == "stop"
            assert got.usage == Usage(served.prompt_tokens, served.completion_tokens)
            assert fake.calls[-1].body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
            chunks = list(client.stream("gemini", prompt="Tell me", max_tokens=4))
            served = fake.served[-1]
            assert "".join(c.text for c in chunks) == served.text == "".join(tokenize(fake.reply_text)[:4])
            assert chunks[-1].finish_reason == "length"
            assert chunks[-1].usage == Usage(served.prompt_tokens, 4)
            fake.fail_next(401)
            with pytest.raises(AuthError) as info:
                client.generate("gemini", "Hi")
            assert KEY not in str(info.value)
            assert fake.count() == 3
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
    finally:
        assert node.stop() == []
    assert KEY not in node.output()
