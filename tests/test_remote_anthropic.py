"""The Anthropic runner: the real `anthropic` SDK against a fake Messages API on 127.0.0.1.

Runner level: chat, completion, streaming, system prompt placement, stop and max_tokens, a request
asking for logprobs refused (naming the field), the error table, retries (retry-after, 529, never
4xx), the request deadline, the circuit breaker, a stream cut mid-way, malformed bodies and API-key
redaction. End to end: a real node serving a deployment that points at the fake answers
`Client.generate` and `Client.stream`, refuses logprobs, and a cascade whose first tier is that
deployment passes the refused tier over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from atomr.runners.catalog import runner_class
from atomr.runners.remote.anthropic.runner import AnthropicRunner

from atomr.client import Client
from atomr.config import deployment_from_dict
from atomr.core.errors import (
    AuthError,
    CircuitOpenError,
    InferenceTimeoutError,
    InvalidRequestError,
    OverloadedError,
    UnavailableError,
)
from atomr.core.runner import check_supported
from atomr.core.types import InferenceRequest, SamplingParams, StreamEvent, Usage
from atomr.serving.session import run_session
from tests.conftest import Node
from tests.fakes.anthropic_server import FakeAnthropic, error_json, tokenize
from tests.remote_support import assert_key_hidden as _assert_key_hidden
from tests.remote_support import chat, load, outcome, run, text_of

KEY = f"sk-ant-test-{uuid.uuid4().hex}"
KEY_ENV = "ATOMR_TEST_ANTHROPIC_KEY"
NO_RETRY = {"max_attempts": 1}
FAST_RETRY = {"max_attempts": 3, "backoff_initial_s": 0.05, "backoff_max_s": 0.1, "jitter_s": 0.0}
NO_BREAKER = {"failure_threshold": 1000}
T = TypeVar("T")


@pytest.fixture(scope="module")
def server() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as f:
        yield f


@pytest.fixture
def fake(server: FakeAnthropic) -> FakeAnthropic:
    server.reset()
    return server


@pytest.fixture(autouse=True)
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def make_runner(fake: FakeAnthropic, **engine: Any) -> AnthropicRunner:
    options: dict[str, Any] = {"api_base": fake.url, "api_key_env": KEY_ENV, "retry": NO_RETRY, "circuit": NO_BREAKER}
    options.update(engine)
    dep = deployment_from_dict({"name": "claude", "model": "anthropic/claude-fake", "engine": options})
    assert dep.runtime == "anthropic"
    cls = runner_class(dep.runtime)
    assert cls is AnthropicRunner
    runner = cls(dep)
    assert isinstance(runner, AnthropicRunner)
    return runner


def loaded(fake: FakeAnthropic, **engine: Any) -> contextlib.AbstractAsyncContextManager[AnthropicRunner]:
    return load(make_runner(fake, **engine))


def assert_key_hidden(err: BaseException, key: str = KEY) -> None:
    _assert_key_hidden(err, key)


# ---- chat, completion, streaming ----


def test_chat_stream_text_usage_finish_and_system_field(fake: FakeAnthropic) -> None:
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
            assert served.stream and served.stop_reason == "end_turn"
            assert text_of(chunks) == served.text == fake.reply_text
            assert [c.text for c in chunks[:-1]] == tokenize(fake.reply_text)  # one chunk per text delta
            assert all(c.token_count == 1 and c.finish_reason is None for c in chunks[:-1])
            last = chunks[-1]
            assert last.finish_reason == "stop" and last.token_count == 0 and last.text == ""
            assert last.usage == Usage(served.input_tokens, served.output_tokens)
            assert last.usage.completion_tokens == len(chunks) - 1
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
        async with loaded(fake) as runner:
            req = InferenceRequest(model="claude", prompt="Once upon a time", params=SamplingParams(max_tokens=50))
            chunks, err = await outcome(runner, req)
            assert err is None and text_of(chunks) == fake.reply_text
            sent = fake.calls[-1].body
            assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Once upon a time"}]}]
            assert "system" not in sent and sent["temperature"] == 0.0
            assert "top_p" not in sent and "top_k" not in sent
            assert chunks[-1].usage == Usage(4, len(tokenize(fake.reply_text)))

    run(body)


def test_stop_sequences_and_max_tokens_honoured(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with loaded(fake) as runner:
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=100, stop=(" one", "never")))
            assert err is None
            assert fake.calls[-1].body["stop_sequences"] == [" one", "never"]
            assert fake.served[-1].stop_reason == "stop_sequence" and fake.served[-1].stop_sequence == " one"
            assert text_of(chunks) == fake.reply_text[: fake.reply_text.index(" one")]
            assert chunks[-1].finish_reason == "stop"
            assert chunks[-1].usage == Usage(1, len(tokenize(text_of(chunks))))

            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=3))
            assert err is None
            assert fake.served[-1].stop_reason == "max_tokens"
            assert text_of(chunks) == "".join(tokenize(fake.reply_text)[:3])
            assert chunks[-1].finish_reason == "length" and chunks[-1].usage == Usage(1, 3)

            fake.stop_reason_override = "refusal"
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and chunks[-1].finish_reason == "content_filter"

    run(body)


def test_capabilities_say_streaming_without_logprobs() -> None:
    caps = AnthropicRunner.capabilities
    assert caps.streaming and caps.chat and caps.completion and not caps.logprobs and not caps.needs_gpu


def test_asking_for_logprobs_is_refused_naming_the_field(fake: FakeAnthropic) -> None:
    """The Messages API has no logprobs: a request asking for them is refused before any call,
    by the capability check every runner goes through (`run_session`), never answered without."""

    async def body() -> None:
        async with loaded(fake) as runner:
            finals: list[StreamEvent] = []
            chunks: list[StreamEvent] = []
            req = chat(("user", "hi"), logprobs=True)
            req.validate()
            await run_session(runner, req, runner.deployment, "r0", chunks.append, finals.append)
            assert chunks == [] and len(finals) == 1 and fake.count() == 0
            error = finals[0].error
            assert error is not None and error.kind == "invalid_request" and error.field == "logprobs"
            assert "anthropic" in error.message and error.details["runtime"] == "anthropic"
            with pytest.raises(InvalidRequestError, match="logprobs") as info:
                check_supported(runner, req)
            assert info.value.field == "logprobs"

            # without logprobs the same request is served
            finals.clear()
            await run_session(runner, chat(("user", "hi")), runner.deployment, "r0", chunks.append, finals.append)
            assert finals[0].error is None and fake.count() == 1
            assert all(ev.chunk is not None and ev.chunk.logprobs is None for ev in chunks)

    run(body)


def test_a_missing_key_fails_at_load(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    runner = make_runner(fake)
    with pytest.raises(AuthError, match=KEY_ENV):
        asyncio.run(runner.load())


def test_only_system_messages_is_an_invalid_request(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with loaded(fake) as runner:
            _, err = await outcome(runner, chat(("system", "You are terse.")))
            assert err is not None and err.kind == "invalid_request" and err.field == "messages"
            assert fake.count() == 0

    run(body)


# ---- errors ----

ERROR_TABLE = [
    (400, error_json("invalid_request_error", "messages: Field required"), "invalid_request", False, 400),
    (
        400,
        error_json("invalid_request_error", "prompt is too long: 250312 tokens > 200000 maximum"),
        "context_length",
        False,
        400,
    ),
    (401, error_json("authentication_error", "invalid x-api-key"), "auth", False, 401),
    (403, error_json("permission_error", "Your API key does not have permission"), "auth", False, 401),
    (404, error_json("not_found_error", "model: claude-nope"), "not_found", False, 404),
    (
        413,
        error_json("request_too_large", "Request exceeds the maximum allowed number of bytes."),
        "context_length",
        False,
        400,
    ),
    (
        429,
        error_json("rate_limit_error", "Number of request tokens has exceeded your rate limit"),
        "rate_limited",
        True,
        429,
    ),
    (500, error_json("api_error", "Internal server error"), "unavailable", True, 503),
    (503, error_json("api_error", "Service unavailable"), "unavailable", True, 503),
    (529, error_json("overloaded_error", "Overloaded"), "overloaded", True, 503),
]


@pytest.mark.parametrize(("status", "payload", "kind", "retryable", "http_status"), ERROR_TABLE)
def test_error_table(
    fake: FakeAnthropic, status: int, payload: dict[str, Any], kind: str, retryable: bool, http_status: int
) -> None:
    payload = {**payload, "error": {**payload["error"], "message": payload["error"]["message"] + f" [{KEY}]"}}

    async def body() -> None:
        async with loaded(fake) as runner:
            fake.fail_next(status, payload)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert chunks == [] and err is not None
            assert (err.kind, err.retryable, err.http_status) == (kind, retryable, http_status)
            assert err.details.get("status") == status
            assert payload["error"]["type"] in err.message
            assert_key_hidden(err)
            assert fake.count() == 1

    run(body)


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
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.error_event_next(error_type, f"mid-stream {error_type} {KEY}", after=2)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert [c.text for c in chunks] == tokenize(fake.reply_text)[:2]  # what was sent, then the error
            assert err is not None and err.kind == kind
            assert_key_hidden(err)
            assert fake.count() == 1  # text reached the caller: never retried

    run(body)


def test_error_event_before_any_text_is_retried(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.error_event_next("overloaded_error", "Overloaded", after=0)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text
            assert fake.count() == 2

    run(body)


def test_unreachable_provider_is_unavailable(fake: FakeAnthropic) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def body() -> None:
        async with loaded(fake, api_base=f"http://127.0.0.1:{port}") as runner:
            _, err = await outcome(runner, chat(("user", "hi")))
            assert err is not None and err.kind == "unavailable" and err.retryable

    run(body)


# ---- retries, deadline, breaker ----


def test_429_retry_after_is_honoured_then_succeeds(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.fail_next(429, headers={"retry-after": "1"})
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text
            assert fake.count() == 2
            assert fake.calls[1].at - fake.calls[0].at >= 1.0

    run(body)


def test_529_is_retried(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.fail_next(529, times=2)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text
            assert fake.count() == 3

    run(body)


@pytest.mark.parametrize(("status", "kind"), [(400, "invalid_request"), (401, "auth")])
def test_400_and_401_are_never_retried(fake: FakeAnthropic, status: int, kind: str) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.fail_next(status, times=2)
            _, err = await outcome(runner, chat(("user", "hi")))
            assert err is not None and err.kind == kind
            assert fake.count() == 1

    run(body)


def test_deadline_bounds_a_stalled_provider() -> None:
    async def body(fake: FakeAnthropic) -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            fake.stall_next(10)
            start = time.monotonic()
            _, err = await outcome(runner, chat(("user", "hi"), deadline=time.time() + 2))
            elapsed = time.monotonic() - start
            assert isinstance(err, InferenceTimeoutError) and err.retryable
            assert 1.5 < elapsed < 3.0
            assert fake.count() == 1

    with FakeAnthropic(api_key=KEY) as stalled:  # its own server: the stalled handler outlives the test
        run(lambda: body(stalled))


def test_circuit_opens_fails_fast_then_a_probe_closes_it(fake: FakeAnthropic) -> None:
    async def body() -> None:
        circuit = {"failure_threshold": 3, "cooldown_s": 0.5, "half_open_probes": 1}
        async with loaded(fake, retry=NO_RETRY, circuit=circuit) as runner:
            fake.fail_next(529, times=3)
            for _ in range(3):
                _, err = await outcome(runner, chat(("user", "hi")))
                assert isinstance(err, OverloadedError)
            assert fake.count() == 3 and runner.status()["circuit"]["state"] == "open"
            for _ in range(3):
                start = time.monotonic()
                _, err = await outcome(runner, chat(("user", "hi")))
                assert isinstance(err, CircuitOpenError) and err.retryable
                assert time.monotonic() - start < 0.1
            assert fake.count() == 3  # nothing reached the provider while open
            await asyncio.sleep(0.6)
            chunks, err = await outcome(runner, chat(("user", "hi")))  # the half-open probe
            assert err is None and text_of(chunks) == fake.reply_text
            assert fake.count() == 4 and runner.status()["circuit"] == {"state": "closed", "consecutive_failures": 0}
            _, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and fake.count() == 5

    run(body)


def test_a_failed_probe_opens_the_circuit_again(fake: FakeAnthropic) -> None:
    async def body() -> None:
        circuit = {"failure_threshold": 2, "cooldown_s": 0.3}
        async with loaded(fake, circuit=circuit) as runner:
            fake.fail_next(529, times=3)
            for _ in range(2):
                _, err = await outcome(runner, chat(("user", "hi")))
                assert isinstance(err, OverloadedError)
            await asyncio.sleep(0.35)
            _, err = await outcome(runner, chat(("user", "hi")))
            assert isinstance(err, OverloadedError) and fake.count() == 3
            _, err = await outcome(runner, chat(("user", "hi")))
            assert isinstance(err, CircuitOpenError) and fake.count() == 3

    run(body)


# ---- broken streams and bodies ----


def test_stream_cut_after_five_events(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:
            # message_start, content_block_start, ping, then two text deltas: the connection drops.
            fake.cut_next_after(5)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert [c.text for c in chunks] == tokenize(fake.reply_text)[:2]  # no chunk twice
            assert isinstance(err, UnavailableError) and "message_stop" in err.message
            assert fake.count() == 1

    run(body)


def test_malformed_body_is_a_clear_error(fake: FakeAnthropic) -> None:
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
        async with loaded(fake, retry=FAST_RETRY) as runner:  # retryable: a second try succeeds
            fake.malformed_next()
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text_of(chunks) == fake.reply_text

    run(body)


# ---- secrets ----


def test_the_key_never_reaches_errors_or_logs(
    fake: FakeAnthropic, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = f"sk-ant-wrong-{uuid.uuid4().hex}"
    monkeypatch.setenv("ATOMR_TEST_WRONG_KEY", wrong)
    caplog.set_level(logging.DEBUG)

    async def body() -> None:
        async with loaded(fake, retry=FAST_RETRY) as runner:  # right key, error bodies echo it
            fake.fail_next(429, headers={"retry-after": "0"})
            fake.fail_next(529)
            fake.fail_next(500)
            _, err = await outcome(runner, chat(("user", "hi")))
            assert isinstance(err, UnavailableError) and "***" in err.message
            assert_key_hidden(err)
            logging.getLogger("atomr.test").error("request failed: %s (%r)", err, err)
        async with loaded(fake, retry=FAST_RETRY, api_key_env="ATOMR_TEST_WRONG_KEY") as runner:
            _, err = await outcome(runner, chat(("user", "hi")))  # the fake's own 401 echoes the key sent
        assert isinstance(err, AuthError) and "invalid x-api-key: ***" in err.message
        assert_key_hidden(err, wrong)
        logging.getLogger("atomr.test").error("request failed: %s (%r)", err, err)

    run(body)
    assert any("request failed" in r.getMessage() for r in caplog.records)
    assert KEY not in caplog.text and wrong not in caplog.text


# ---- end to end ----


def test_end_to_end_through_a_node(fake: FakeAnthropic, tmp_path: Path) -> None:
    key_file = tmp_path / "anthropic.key"
    key_file.write_text(KEY + "\n")
    config = tmp_path / "node.yaml"
    deployment = {
        "name": "claude",
        "model": "anthropic/claude-fake",
        "engine": {"api_base": fake.url, "api_key_file": str(key_file), "retry": FAST_RETRY},
    }
    # a cascade whose first tier cannot give logprobs: refused there, so the next tier answers
    careful = {"name": "careful", "tiers": [{"deployment": "claude", "threshold": -0.5}, {"deployment": "claude"}]}
    config.write_text(yaml.safe_dump({"deployments": [deployment], "cascades": [careful]}))
    node = Node(config=config)
    try:
        with Client(node.address) as client:
            got = client.generate(
                "claude", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
            )
            served = fake.served[-1]
            assert got.text == served.text == fake.reply_text
            assert got.finish_reason == "stop"
            assert got.usage == Usage(served.input_tokens, served.output_tokens)
            assert fake.calls[-1].body["system"] == "Be brief."
            chunks = list(client.stream("claude", prompt="Tell me", max_tokens=4))
            served = fake.served[-1]
            assert "".join(c.text for c in chunks) == served.text == "".join(tokenize(fake.reply_text)[:4])
            assert chunks[-1].finish_reason == "length"
            assert chunks[-1].usage == Usage(served.input_tokens, 4)
            fake.fail_next(401)
            with pytest.raises(AuthError) as info:
                client.generate("claude", "Hi")
            assert KEY not in str(info.value)
            assert fake.count() == 3
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
    finally:
        assert node.stop() == []
    assert KEY not in node.output()
