"""The `openai` runner: the official SDK against a fake OpenAI server speaking the real wire format.

What every remote runner does (answers, streaming, stops, seeds, logprobs, cancellation, errors
mapped, its finish reasons, unknown model, connection refused, retry-after, 4xx never retried,
deadline, circuit breaker, a stream cut mid-way, malformed answers, the key kept out of errors and
logs) is the runner contract's (tests/runners/, where the OpenAI wire's own statuses and
context-length and content-filter errors by message and code are in its adapter). Here, what is
the `openai` runner's own: what goes on the wire, a whole answer as one JSON body, completion
logprobs, the max-tokens parameter's name, a server that ignores `stream`, keys, more than four
stop strings, an error body that is not JSON, its retry-after headers, text a session holds when
the stream breaks; then end to end through a node and the Python client.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from pathlib import Path
from typing import Any

import pytest
from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.openai.runner import OpenAIRunner, retry_after_from

from atomr.config import deployment_from_dict
from atomr.core.deployment import Limits
from atomr.core.errors import AuthError
from atomr.core.types import Chunk, StreamEvent, Usage
from atomr.serving.session import run_session
from tests.fakes.openai_server import FakeOpenAI, tokenize
from tests.remote_support import (
    FAST_RETRY,
    NO_RETRY,
    check_openai_stream,
    check_openai_wire,
    check_served_through_a_client,
    fake_server_fixtures,
    new_key,
    node_serving,
    remote_deployment,
    with_runner,
)
from tests.remote_support import openai_chat as chat
from tests.remote_support import openai_completion as completion
from tests.runners.support import logprobs_of
from tests.runners.support import outcome as collect

KEY = new_key()
KEY_ENV = "ATOMR_TEST_OPENAI_KEY"
LOOSE_CIRCUIT = {"failure_threshold": 100, "cooldown_s": 0.5}

server, fake, key_env = fake_server_fixtures(FakeOpenAI, KEY_ENV, KEY)


def runner_for(fake: FakeOpenAI, **engine: Any) -> OpenAIRunner:
    options = {"retry": FAST_RETRY, "circuit": LOOSE_CIRCUIT, **engine}
    return OpenAIRunner(remote_deployment("openai/gpt-fake", fake.url + "/v1", KEY_ENV, **options))


# ---- 1. what comes back ----


def test_what_goes_on_the_wire(fake: FakeOpenAI) -> None:
    with_runner(runner_for(fake), lambda r: check_openai_wire(r, fake, KEY))


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


def test_completion_logprobs_are_the_providers(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, completion(max_tokens=5, logprobs=True))
        assert err is None and fake.calls[-1].body["logprobs"] == 1
        check_openai_stream(chunks, fake.served[-1], logprobs=True)
        assert len(logprobs_of(chunks)) == 5

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


# ---- 2. errors ----


def test_more_than_four_stop_strings_are_refused(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        _, err = await collect(r, completion(stop=tuple("abcde")))
        assert err is not None and err.kind == "invalid_request" and "stop" in err.message

    with_runner(runner_for(fake, retry=NO_RETRY), body)


def test_retry_after_headers_are_read() -> None:
    assert retry_after_from({"retry-after": "2"}) == 2.0
    assert retry_after_from({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    got = retry_after_from({"retry-after": when})
    assert got is not None and 25 <= got <= 31
    assert retry_after_from({"retry-after": "soon"}) is None and retry_after_from({}) is None


# ---- a session holding text ----


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


def test_an_error_body_that_is_not_json_is_still_mapped(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        fake.fail_next(500, body="<html>upstream exploded</html>")
        _, err = await collect(r, completion())
        assert err is not None and err.kind == "unavailable" and err.details.get("status") == 500

    with_runner(runner_for(fake, retry=NO_RETRY), body)


# ---- end to end ----


def test_node_serves_the_fake_through_the_client(fake: FakeOpenAI, tmp_path: Path) -> None:
    from atomr.client import Client

    engine = {"api_base": fake.url + "/v1", "api_key_env": KEY_ENV, "retry": FAST_RETRY}
    config = {"deployments": [{"name": "gpt-fake", "model": "openai/gpt-fake", "engine": engine}]}
    with node_serving(tmp_path, config) as node, Client(node.address) as client:

        def sent(body: dict[str, Any]) -> None:
            assert body["messages"][0] == {"role": "system", "content": "Be brief."}

        check_served_through_a_client(client, fake, "gpt-fake", KEY, sent)
        chunks = list(client.stream("gpt-fake", prompt="Once upon a time", max_tokens=5, logprobs=True))
        served = fake.served[-1]
        assert "".join(c.text for c in chunks) == served.text and chunks[-1].usage == Usage(served.prompt_tokens, 5)
        assert [lp.token for lp in logprobs_of(chunks)] == tokenize(fake.reply_text)[:5]
