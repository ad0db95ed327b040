"""The `openai` runner: the official SDK against a fake OpenAI server speaking the real wire format.

Runner level (chat, completion, stop, max_tokens, logprobs, error mapping, retries with
retry-after, deadline, circuit breaker, a stream cut mid-way, malformed answers, the API key kept
out of errors and logs), then end to end through a node and the Python client.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.openai.runner import OpenAIRunner, retry_after_from

from atomr.config import deployment_from_dict
from atomr.core.deployment import Limits
from atomr.core.errors import AuthError, InferenceError
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, StreamEvent, TokenLogprob, Usage
from atomr.serving.session import run_session
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI, token_logprob, tokenize
from tests.remote_support import outcome as collect

KEY_ENV = "ATOMR_TEST_OPENAI_KEY"
FAST_RETRY = {"max_attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "jitter_s": 0.0}
NO_RETRY = {"max_attempts": 1}
LOOSE_CIRCUIT = {"failure_threshold": 100, "cooldown_s": 0.5}
CHAT = (Message("system", "You are terse."), Message("user", "Say hello to the fake"))

# status -> (kind, retryable, http_status) the caller must see
STATUS_KINDS: dict[int, tuple[str, bool, int]] = {
    400: ("invalid_request", False, 400),
    401: ("auth", False, 401),
    403: ("auth", False, 401),
    404: ("not_found", False, 404),
    408: ("timeout", True, 504),
    422: ("invalid_request", False, 400),
    429: ("rate_limited", True, 429),
    500: ("unavailable", True, 503),
    502: ("unavailable", True, 503),
    503: ("unavailable", True, 503),
    504: ("timeout", True, 504),
    529: ("overloaded", True, 503),
}
CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
    "Please reduce the length of the messages."
)


# ---- helpers (also used by test_remote_litellm) ----


def error_body(message: str, code: str | None = None, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def new_key() -> str:
    return f"sk-atomr-{uuid.uuid4().hex}"


def deployment(
    model: str,
    fake: FakeOpenAI,
    *,
    retry: dict[str, Any] | None = None,
    circuit: dict[str, Any] | None = None,
    **engine: Any,
) -> Any:
    return deployment_from_dict(
        {
            "name": "remote",
            "model": model,
            "engine": {
                "api_base": fake.url + "/v1",
                "api_key_env": KEY_ENV,
                "retry": FAST_RETRY if retry is None else retry,
                "circuit": LOOSE_CIRCUIT if circuit is None else circuit,
                **engine,
            },
        }
    )


def chat(stream: bool = True, **params: Any) -> InferenceRequest:
    return InferenceRequest(model="remote", messages=CHAT, params=SamplingParams(**params), stream=stream)


def completion(prompt: str = "Once upon a time", stream: bool = True, **params: Any) -> InferenceRequest:
    return InferenceRequest(model="remote", prompt=prompt, params=SamplingParams(**params), stream=stream)


def with_runner(runner: RemoteRunner, body: Callable[[RemoteRunner], Awaitable[None]]) -> None:
    """Load the runner, run `body` on one event loop, unload it."""

    async def main() -> None:
        await runner.load()
        try:
            await body(runner)
        finally:
            await runner.unload()

    asyncio.run(main())


def check_whole(chunks: list[Chunk], served: Any, *, logprobs: bool = False) -> None:
    """The chunks are exactly what the fake served: one per token, then finish_reason and usage."""
    texts = [c.text for c in chunks[:-1]]
    assert texts == tokenize(served.text)
    assert all(c.token_count == 1 and c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.text == "" and last.token_count == 0
    assert last.finish_reason == served.finish_reason
    assert last.usage == Usage(served.prompt_tokens, served.completion_tokens)
    if logprobs:
        for i, c in enumerate(chunks[:-1]):
            assert c.logprobs == (TokenLogprob(c.text, token_logprob(i, c.text)),)
        assert last.logprobs == ()
    else:
        assert all(c.logprobs is None for c in chunks)


def check_key_hidden(key: str, err: InferenceError | None, caplog: pytest.LogCaptureFixture, capsys: Any) -> None:
    assert err is not None
    for text in (err.message, str(err), repr(err), repr(err.info()), str(err.details)):
        assert key not in text
    assert "***" in err.message
    assert key not in caplog.text
    out = capsys.readouterr()
    assert key not in out.out and key not in out.err


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = new_key()
    monkeypatch.setenv(KEY_ENV, value)
    return value


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeOpenAI]:
    """One server for the module (closing one takes up to half a second); reset for every test."""
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake(shared_fake: FakeOpenAI, key: str) -> Iterator[FakeOpenAI]:
    shared_fake.reset(api_key=key)
    yield shared_fake
    shared_fake.reset()


def runner_for(fake: FakeOpenAI, **kw: Any) -> OpenAIRunner:
    return OpenAIRunner(deployment("openai/gpt-fake", fake, **kw))


# ---- 1. what comes back ----


def test_chat_and_completion_stream_what_the_fake_served(fake: FakeOpenAI, key: str) -> None:
    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(max_tokens=64, temperature=0.7, top_p=0.9, seed=11))
        assert err is None
        served = fake.served[-1]
        assert served.stream and served.finish_reason == "stop" and served.text == fake.reply_text
        assert len(chunks) == len(tokenize(fake.reply_text)) + 1
        check_whole(chunks, served)
        call = fake.calls[-1]
        assert call.path == "/v1/chat/completions"
        assert call.headers["authorization"] == f"Bearer {key}"
        sent = call.body
        assert sent["model"] == "gpt-fake" and sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}
        assert sent["messages"] == [{"role": m.role, "content": m.content} for m in CHAT]
        assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == (64, 0.7, 0.9, 11)
        assert "logprobs" not in sent and "stop" not in sent

        chunks, err = await collect(r, completion())
        assert err is None
        assert fake.calls[-1].path == "/v1/completions" and fake.calls[-1].body["prompt"] == "Once upon a time"
        check_whole(chunks, fake.served[-1])
        assert fake.served[-1].prompt_tokens == 4

    with_runner(runner_for(fake), body)


def test_a_caller_waiting_for_the_whole_answer_gets_one_json_answer(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        for request in (chat(stream=False, max_tokens=64, logprobs=True), completion(stream=False, logprobs=True)):
            chunks, err = await collect(r, request)
            assert err is None
            served, sent = fake.served[-1], fake.calls[-1].body
            assert not served.stream and "stream" not in sent and "stream_options" not in sent
            assert "".join(c.text for c in chunks) == served.text and chunks[-1].finish_reason == "stop"
            assert sum(c.token_count for c in chunks) == served.completion_tokens
            lps = [lp for c in chunks for lp in (c.logprobs or ())]
            assert len(lps) == served.completion_tokens and chunks[-1].usage is not None
            assert chunks[-1].usage.prompt_tokens == served.prompt_tokens

    with_runner(runner_for(fake), body)


def test_stop_and_max_tokens_are_honoured(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(stop=(" one", "zzz")))
        assert err is None and fake.calls[-1].body["stop"] == [" one", "zzz"]
        text = "".join(c.text for c in chunks)
        assert text == fake.reply_text[: fake.reply_text.index(" one")]
        assert chunks[-1].finish_reason == "stop"
        check_whole(chunks, fake.served[-1])

        chunks, err = await collect(r, chat(max_tokens=3))
        assert err is None
        assert "".join(c.text for c in chunks) == "".join(tokenize(fake.reply_text)[:3])
        assert chunks[-1].finish_reason == "length" and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 3

        chunks, err = await collect(r, completion(max_tokens=2, stop=("fake",)))
        assert err is None and chunks[-1].finish_reason == "length"
        assert "".join(c.text for c in chunks) == "Hello from"

    with_runner(runner_for(fake), body)


def test_logprobs_for_chat_and_completion(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(max_tokens=6, logprobs=True))
        assert err is None and fake.calls[-1].body["logprobs"] is True
        check_whole(chunks, fake.served[-1], logprobs=True)
        merged = Chunk.merge(chunks)
        assert merged.logprobs is not None and len(merged.logprobs) == 6

        chunks, err = await collect(r, completion(max_tokens=5, logprobs=True))
        assert err is None and fake.calls[-1].body["logprobs"] == 1
        check_whole(chunks, fake.served[-1], logprobs=True)

    assert OpenAIRunner.capabilities.logprobs
    with_runner(runner_for(fake), body)


@pytest.mark.parametrize(
    ("served", "expected"),
    [("tool_calls", "stop"), ("content_filter", "content_filter"), ("length", "length"), ("eos", "stop")],
)
def test_finish_reasons_map_to_atomr_set(fake: FakeOpenAI, served: str, expected: str) -> None:
    fake.finish_override = served

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat())
        assert err is None and chunks[-1].finish_reason == expected

    with_runner(runner_for(fake), body)


def test_max_completion_tokens_param_and_missing_usage(fake: FakeOpenAI) -> None:
    fake.omit_usage = True

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(max_tokens=4))
        assert err is None
        sent = fake.calls[-1].body
        assert sent["max_completion_tokens"] == 4 and "max_tokens" not in sent
        # no usage chunk: completion tokens counted from the deltas, prompt tokens unknown
        assert chunks[-1].usage == Usage(0, 4) and chunks[-1].finish_reason == "length"

    with_runner(runner_for(fake, max_tokens_param="max_completion_tokens"), body)


def test_a_server_that_ignores_stream_still_answers(fake: FakeOpenAI) -> None:
    fake.ignore_stream = True

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(max_tokens=5, logprobs=True))
        assert err is None
        served = fake.served[-1]
        assert not served.stream
        assert "".join(c.text for c in chunks) == served.text
        last = chunks[-1]
        assert last.finish_reason == "length" and last.usage == Usage(served.prompt_tokens, 5)
        merged = Chunk.merge(chunks)
        assert merged.logprobs is not None and [lp.token for lp in merged.logprobs] == tokenize(served.text)

    with_runner(runner_for(fake), body)


def test_keys_placeholder_and_missing_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI() as open_fake:  # a compatible server without auth

        async def body(r: RemoteRunner) -> None:
            chunks, err = await collect(r, chat())
            assert err is None and chunks[-1].finish_reason == "stop"
            assert open_fake.calls[-1].headers["authorization"] == "Bearer EMPTY"

        with_runner(runner_for(open_fake), body)

        # the key from a file wins over the environment
        secret = new_key()
        (tmp_path / "key").write_text(secret + "\n")
        monkeypatch.setenv(KEY_ENV, "not-this-one")

        async def from_file(r: RemoteRunner) -> None:
            _, err = await collect(r, chat())
            assert err is None and open_fake.calls[-1].headers["authorization"] == f"Bearer {secret}"

        with_runner(runner_for(open_fake, api_key_file=str(tmp_path / "key")), from_file)

    no_base = OpenAIRunner(deployment_from_dict({"name": "remote", "model": "openai/gpt-fake"}))
    with pytest.raises(AuthError, match="OPENAI_API_KEY"):
        asyncio.run(no_base.load())


# ---- 2. error mapping ----


@pytest.mark.parametrize("status", sorted(STATUS_KINDS))
def test_http_errors_map_to_the_taxonomy(fake: FakeOpenAI, status: int) -> None:
    kind, retryable, http_status = STATUS_KINDS[status]
    fake.fail_next(status)

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat())
        assert chunks == [] and err is not None
        assert (err.kind, err.retryable, err.http_status) == (kind, retryable, http_status)
        assert err.details.get("status") == status
        assert f"fake error {status}" in err.message and err.message.startswith("openai")
        assert fake.count() == 1

    with_runner(runner_for(fake, retry=NO_RETRY), body)


def test_context_length_by_message_and_by_code(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        fake.fail_next(400, {"error": {"message": CONTEXT_MESSAGE, "type": "invalid_request_error", "code": None}})
        _, err = await collect(r, chat())
        assert err is not None and (err.kind, err.http_status, err.retryable) == ("context_length", 400, False)
        assert "maximum context length is 8192" in err.message

        body_by_code = {
            "error": {"message": "Too long.", "type": "invalid_request_error", "code": "context_length_exceeded"}
        }
        fake.fail_next(400, body_by_code)
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "context_length"

        # the fake's own check, as the real API answers it
        fake.context_window = 3
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "context_length" and "maximum context length is 3" in err.message
        fake.context_window = 4096

        fake.fail_next(
            400, {"error": {"message": "Blocked.", "type": "invalid_request_error", "code": "content_filter"}}
        )
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "content_filtered"

        _, err = await collect(
            r, InferenceRequest(model="remote", messages=CHAT, params=SamplingParams(stop=tuple("abcde")))
        )
        assert err is not None and err.kind == "invalid_request" and "stop" in err.message

    with_runner(runner_for(fake, retry=NO_RETRY), body)


def test_unknown_model_and_connection_refused(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "not_found" and "gpt-nope" in err.message

    with_runner(OpenAIRunner(deployment("openai/gpt-nope", fake, retry=NO_RETRY)), body)

    closed = FakeOpenAI()
    closed.close()

    async def refused(r: RemoteRunner) -> None:
        started = time.monotonic()
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "unavailable" and "connection failed" in err.message
        assert time.monotonic() - started < 2

    with_runner(runner_for(closed), refused)


def test_retry_after_headers_are_read() -> None:
    assert retry_after_from({"retry-after": "2"}) == 2.0
    assert retry_after_from({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    got = retry_after_from({"retry-after": when})
    assert got is not None and 25 <= got <= 31
    assert retry_after_from({"retry-after": "soon"}) is None and retry_after_from({}) is None


# ---- 3. retries and deadline ----


def test_429_waits_for_retry_after_then_succeeds(fake: FakeOpenAI) -> None:
    fake.fail_next(429, headers={"retry-after": "1"})

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat())
        assert err is None and "".join(c.text for c in chunks) == fake.reply_text
        assert fake.count() == 2
        assert fake.calls[1].at - fake.calls[0].at >= 1.0

    with_runner(runner_for(fake), body)


@pytest.mark.parametrize("status", [400, 401])
def test_client_errors_are_never_retried(fake: FakeOpenAI, status: int) -> None:
    fake.fail_next(status, times=3)

    async def body(r: RemoteRunner) -> None:
        _, err = await collect(r, chat())
        assert err is not None and not err.retryable
        assert fake.count() == 1

    with_runner(runner_for(fake, retry={**FAST_RETRY, "max_attempts": 4}), body)


def test_deadline_bounds_a_stalled_provider(key: str) -> None:
    async def body(r: RemoteRunner) -> None:
        started = time.monotonic()
        request = InferenceRequest(model="remote", messages=CHAT, deadline=time.time() + 2, stream=True)
        chunks, err = await collect(r, request)
        elapsed = time.monotonic() - started
        assert chunks == [] and err is not None and err.kind == "timeout"
        assert 1.5 < elapsed < 3.0

    with FakeOpenAI(api_key=key) as stalled:  # its own server: the stalled call lives on after the test
        stalled.stall_next(10)
        with_runner(runner_for(stalled), body)


# ---- 4. circuit breaker ----


def test_circuit_breaker_opens_probes_and_closes(fake: FakeOpenAI) -> None:
    circuit = {"failure_threshold": 3, "cooldown_s": 0.5, "half_open_probes": 1}

    async def body(r: RemoteRunner) -> None:
        fake.fail_next(503, times=3)
        for _ in range(3):
            _, err = await collect(r, chat())
            assert err is not None and err.kind == "unavailable"
        assert r.status()["circuit"]["state"] == "open"
        for _ in range(3):
            _, err = await collect(r, chat())
            assert err is not None and err.kind == "circuit_open" and err.retryable
        assert fake.count() == 3  # nothing reached the provider while open

        await asyncio.sleep(0.6)
        chunks, err = await collect(r, chat())  # the probe goes through and succeeds
        assert err is None and chunks[-1].finish_reason == "stop" and fake.count() == 4
        assert r.status()["circuit"] == {"state": "closed", "consecutive_failures": 0}

        fake.fail_next(503, times=4)
        for _ in range(3):
            await collect(r, chat())
        assert r.status()["circuit"]["state"] == "open" and fake.count() == 7
        await asyncio.sleep(0.6)
        _, err = await collect(r, chat())  # a failed probe opens it again
        assert err is not None and err.kind == "unavailable" and fake.count() == 8
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "circuit_open" and fake.count() == 8

    with_runner(runner_for(fake, retry=NO_RETRY, circuit=circuit), body)


# ---- 5. a stream cut mid-way ----


def test_a_stream_cut_after_text_is_not_restarted(fake: FakeOpenAI) -> None:
    fake.cut_next_after(5)  # role delta + 4 tokens, then the connection drops

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat())
        assert [c.text for c in chunks] == tokenize(fake.reply_text)[:4]
        assert err is not None and err.kind == "unavailable"
        assert fake.count() == 1

    with_runner(runner_for(fake, retry={**FAST_RETRY, "max_attempts": 4}), body)


def test_text_held_for_coalescing_reaches_the_caller_before_the_error(fake: FakeOpenAI) -> None:
    """A session holds later chunks to send them together; a stream cut while text is held sends
    that text first, then the error (whose seq counts every chunk sent)."""
    fake.cut_next_after(5)  # role delta + 4 tokens
    runner = runner_for(fake)
    held = Limits(chunk_max_tokens=64, chunk_max_delay_ms=10_000)  # nothing leaves on count or time
    dep = runner.deployment.model_copy(update={"limits": held})

    async def body(r: RemoteRunner) -> None:
        chunks: list[StreamEvent] = []
        finals: list[StreamEvent] = []
        await run_session(r, chat(), dep, "r0", chunks.append, finals.append)
        texts = [ev.chunk.text for ev in chunks if ev.chunk is not None]
        assert texts == ["".join(tokenize(fake.reply_text)[:1]), "".join(tokenize(fake.reply_text)[1:4])]
        (end,) = finals
        assert end.error is not None and end.error.kind == "unavailable" and end.seq == 2

    with_runner(runner, body)


# ---- 6. malformed answers ----


def test_malformed_answers_give_clear_errors(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        fake.malformed_next()
        chunks, err = await collect(r, chat())
        assert chunks == [] and err is not None
        assert err.kind == "unavailable" and "malformed" in err.message and "not json" in err.message
        assert err.details.get("malformed") is True

        fake.bad_event_next()  # an SSE event whose data is not JSON, after two tokens
        chunks, err = await collect(r, chat())
        assert [c.text for c in chunks] == tokenize(fake.reply_text)[:2]
        assert err is not None and err.kind == "unavailable" and "malformed" in err.message

        fake.fail_next(500, body="<html>upstream exploded</html>")
        _, err = await collect(r, completion())
        assert err is not None and err.kind == "unavailable"

    with_runner(runner_for(fake, retry=NO_RETRY), body)

    fake.malformed_next()

    async def retried(r: RemoteRunner) -> None:
        calls = fake.count()
        chunks, err = await collect(r, chat())
        assert err is None and "".join(c.text for c in chunks) == fake.reply_text
        assert fake.count() == calls + 2  # nothing had reached the caller: one retry

    with_runner(runner_for(fake), retried)


# ---- 7. the API key stays secret ----


def test_api_key_never_appears_in_errors_or_logs(
    key: str, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeOpenAI(api_key="sk-the-right-one") as wrong:  # answers 401 echoing the key it got

        async def body(r: RemoteRunner) -> None:
            _, err = await collect(r, chat())
            assert err is not None and err.kind == "auth" and "Incorrect API key provided: ***" in err.message
            check_key_hidden(key, err, caplog, capsys)

            message = f"quota exceeded for key {key}"
            wrong.fail_next(429, {"error": {"message": message, "type": "requests", "code": None}})
            _, err = await collect(r, chat())
            assert err is not None and err.kind == "rate_limited"
            check_key_hidden(key, err, caplog, capsys)

        with_runner(runner_for(wrong, retry=NO_RETRY), body)


# ---- end to end ----


def test_node_serves_the_fake_through_the_client(fake: FakeOpenAI, tmp_path: Path) -> None:
    from atomr.client import Client

    config = tmp_path / "openai.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {
                        "name": "gpt-fake",
                        "model": "openai/gpt-fake",
                        "engine": {"api_base": fake.url + "/v1", "api_key_env": KEY_ENV, "retry": FAST_RETRY},
                    }
                ]
            }
        )
    )
    node = Node(config=config)
    try:
        with Client(node.address) as client:
            result = client.generate("gpt-fake", "Say hello", max_tokens=64)
            served = fake.served[-1]
            assert result.text == served.text == fake.reply_text
            assert result.finish_reason == "stop"
            assert result.usage == Usage(served.prompt_tokens, served.completion_tokens)

            chunks = list(client.stream("gpt-fake", prompt="Once upon a time", max_tokens=5, logprobs=True))
            served = fake.served[-1]
            assert "".join(c.text for c in chunks) == served.text == "".join(tokenize(fake.reply_text)[:5])
            assert chunks[-1].finish_reason == "length"
            assert chunks[-1].usage == Usage(served.prompt_tokens, 5)
            merged = Chunk.merge(chunks)
            assert merged.logprobs is not None and len(merged.logprobs) == 5
    finally:
        assert node.stop() == []
