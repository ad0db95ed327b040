"""The `litellm` runner: `litellm.acompletion` / `atext_completion` (model "openai/<name>") against the
fake OpenAI server, with the same checks as the `openai` runner plus LiteLLM's own quirks (a quiet,
offline import; stop strings beyond the 4 it forwards; no logprobs on text completions), and one
other provider string ("anthropic/<name>") against the fake Anthropic server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.litellm.runner import LiteLLMRunner, clean_message

from atomr.config import deployment_from_dict
from atomr.core.errors import InferenceError
from atomr.core.types import Chunk, InferenceRequest, Message, Usage
from tests.conftest import REPO, Node
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI, tokenize
from tests.test_remote_openai import (
    CHAT,
    CONTEXT_MESSAGE,
    FAST_RETRY,
    KEY_ENV,
    NO_RETRY,
    STATUS_KINDS,
    chat,
    check_key_hidden,
    check_whole,
    collect,
    completion,
    deployment,
    new_key,
    with_runner,
)

MODEL = "litellm/openai/gpt-fake"


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    value = new_key()
    monkeypatch.setenv(KEY_ENV, value)
    return value


@pytest.fixture(scope="module")
def shared_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


@pytest.fixture
def fake(shared_fake: FakeOpenAI, key: str) -> Iterator[FakeOpenAI]:
    shared_fake.reset(api_key=key)
    yield shared_fake
    shared_fake.reset()


def runner_for(fake: FakeOpenAI, model: str = MODEL, **kw: Any) -> LiteLLMRunner:
    return LiteLLMRunner(deployment(model, fake, **kw))


def test_import_is_quiet_and_offline() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LITELLM")}
    env["LITELLM_MODEL_COST_MAP_URL"] = "http://127.0.0.1:9/unreachable.json"  # a fetch would fail loudly
    env["PYTHONPATH"] = str(REPO)
    code = (
        "import logging, os; logging.basicConfig(level=logging.INFO); import atomr.runners.remote.litellm.runner; "
        "print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n" and done.stderr == ""


def test_litellm_messages_lose_their_prefixes() -> None:
    assert clean_message("litellm.RateLimitError: RateLimitError: OpenAIException - slow down") == "slow down"
    assert clean_message("litellm.Timeout: Timeout Error: OpenAIException - fake error 408") == "fake error 408"
    text = (
        "litellm.ContextWindowExceededError: litellm.BadRequestError: ContextWindowExceededError: "
        "OpenAIException - Too long: yes"
    )
    assert clean_message(text) == "Too long: yes"
    assert clean_message("Overloaded: try later") == "Overloaded: try later"


# ---- 1. what comes back ----


def test_chat_and_completion_stream_what_the_fake_served(fake: FakeOpenAI, key: str) -> None:
    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(max_tokens=64, temperature=0.7, top_p=0.9, seed=11))
        assert err is None
        served = fake.served[-1]
        assert served.stream and served.text == fake.reply_text
        check_whole(chunks, served)
        call = fake.calls[-1]
        assert call.path == "/v1/chat/completions" and call.headers["authorization"] == f"Bearer {key}"
        sent = call.body
        assert sent["model"] == "gpt-fake" and sent["stream"] is True
        assert sent["stream_options"] == {"include_usage": True}
        assert sent["messages"] == [{"role": m.role, "content": m.content} for m in CHAT]
        assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == (64, 0.7, 0.9, 11)

        chunks, err = await collect(r, completion(max_tokens=4))
        assert err is None
        assert fake.calls[-1].path == "/v1/completions" and fake.calls[-1].body["prompt"] == "Once upon a time"
        check_whole(chunks, fake.served[-1])
        assert chunks[-1].finish_reason == "length"

    with_runner(runner_for(fake), body)


def test_stop_and_max_tokens_are_honoured(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(stop=(" one",)))
        assert err is None and fake.calls[-1].body["stop"] == [" one"]
        assert "".join(c.text for c in chunks) == fake.reply_text[: fake.reply_text.index(" one")]
        check_whole(chunks, fake.served[-1])

        chunks, err = await collect(r, chat(max_tokens=3))
        assert err is None and chunks[-1].finish_reason == "length"
        assert "".join(c.text for c in chunks) == "".join(tokenize(fake.reply_text)[:3])
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3

    with_runner(runner_for(fake), body)


def test_stop_strings_beyond_the_four_litellm_forwards(fake: FakeOpenAI) -> None:
    stops = ("zz1", "zz2", "zz3", "zz4", "vi", " a time")

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(stop=stops, logprobs=True))
        assert err is None
        assert fake.calls[-1].body["stop"] == list(stops[:4])  # what LiteLLM sent on
        text = "".join(c.text for c in chunks)
        assert text == fake.reply_text[: fake.reply_text.index("vi")]  # "provider" holds "vi"
        assert chunks[-1].finish_reason == "stop"
        merged = Chunk.merge(chunks)
        assert merged.logprobs is not None and [lp.token for lp in merged.logprobs] == tokenize(text + "vider,")[:5]

        chunks, err = await collect(r, completion(stop=("zz1", "zz2", "zz3", "zz4", "zz5")))
        assert err is None and "".join(c.text for c in chunks) == fake.reply_text  # no match: all held text flushed
        assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None

    with_runner(runner_for(fake), body)


def test_logprobs_for_chat_only(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat(max_tokens=6, logprobs=True))
        assert err is None and fake.calls[-1].body["logprobs"] is True
        check_whole(chunks, fake.served[-1], logprobs=True)

        calls = fake.count()
        chunks, err = await collect(r, completion(logprobs=True))
        assert chunks == [] and err is not None and err.kind == "invalid_request" and err.field == "logprobs"
        assert fake.count() == calls

    with_runner(runner_for(fake), body)


@pytest.mark.parametrize(("served", "expected"), [("tool_calls", "stop"), ("content_filter", "content_filter")])
def test_finish_reasons_map_to_atomr_set(fake: FakeOpenAI, served: str, expected: str) -> None:
    fake.finish_override = served

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat())
        assert err is None and chunks[-1].finish_reason == expected

    with_runner(runner_for(fake), body)


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
        assert err.message == f"litellm returned {status}: fake error {status}"
        assert fake.count() == 1

    with_runner(runner_for(fake, retry=NO_RETRY), body)


def test_context_length_unknown_model_and_connection_refused(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        fake.fail_next(400, {"error": {"message": CONTEXT_MESSAGE, "type": "invalid_request_error", "code": None}})
        _, err = await collect(r, chat())
        assert err is not None and (err.kind, err.http_status) == ("context_length", 400)
        assert "maximum context length is 8192" in err.message

        fake.context_window = 3
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "context_length"

    with_runner(runner_for(fake, retry=NO_RETRY), body)

    async def unknown(r: RemoteRunner) -> None:
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "not_found" and "gpt-nope" in err.message

    with_runner(runner_for(fake, model="litellm/openai/gpt-nope", retry=NO_RETRY), unknown)

    closed = FakeOpenAI()
    closed.close()

    async def refused(r: RemoteRunner) -> None:
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "unavailable" and "connection failed" in err.message

    with_runner(runner_for(closed, retry=NO_RETRY), refused)


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
        assert err is not None and not err.retryable and fake.count() == 1

    with_runner(runner_for(fake, retry={**FAST_RETRY, "max_attempts": 4}), body)


def test_deadline_bounds_a_stalled_provider(key: str) -> None:
    async def body(r: RemoteRunner) -> None:
        started = time.monotonic()
        request = InferenceRequest(model="remote", messages=CHAT, deadline=time.time() + 2)
        chunks, err = await collect(r, request)
        elapsed = time.monotonic() - started
        assert chunks == [] and err is not None and err.kind == "timeout"
        assert 1.5 < elapsed < 3.0

    with FakeOpenAI(api_key=key) as stalled:
        stalled.stall_next(10)
        with_runner(runner_for(stalled), body)


# ---- 4. circuit breaker ----


def test_circuit_breaker_opens_probes_and_closes(fake: FakeOpenAI) -> None:
    circuit = {"failure_threshold": 2, "cooldown_s": 0.5, "half_open_probes": 1}

    async def body(r: RemoteRunner) -> None:
        fake.fail_next(503, times=2)
        for _ in range(2):
            _, err = await collect(r, chat())
            assert err is not None and err.kind == "unavailable"
        for _ in range(2):
            _, err = await collect(r, chat())
            assert err is not None and err.kind == "circuit_open"
        assert fake.count() == 2

        await asyncio.sleep(0.6)
        _, err = await collect(r, chat())
        assert err is None and fake.count() == 3 and r.status()["circuit"]["state"] == "closed"

        fake.fail_next(503, times=3)
        for _ in range(2):
            await collect(r, chat())
        await asyncio.sleep(0.6)
        _, err = await collect(r, chat())  # the probe fails: open again
        assert err is not None and err.kind == "unavailable" and fake.count() == 6
        _, err = await collect(r, chat())
        assert err is not None and err.kind == "circuit_open" and fake.count() == 6

    with_runner(runner_for(fake, retry=NO_RETRY, circuit=circuit), body)


# ---- 5. a stream cut mid-way ----


def test_a_stream_cut_after_text_is_not_restarted(fake: FakeOpenAI) -> None:
    fake.cut_next_after(5)

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat())
        assert [c.text for c in chunks] == tokenize(fake.reply_text)[:4]
        assert err is not None and err.kind == "unavailable"
        assert fake.count() == 1

    with_runner(runner_for(fake, retry={**FAST_RETRY, "max_attempts": 4}), body)


# ---- 6. malformed answers ----


def test_malformed_answers_give_clear_errors(fake: FakeOpenAI) -> None:
    async def body(r: RemoteRunner) -> None:
        fake.malformed_next()
        chunks, err = await collect(r, chat())
        assert chunks == [] and err is not None and err.kind == "unavailable" and "malformed" in err.message

        fake.bad_event_next()
        chunks, err = await collect(r, chat())
        assert [c.text for c in chunks] == tokenize(fake.reply_text)[:2]
        assert err is not None and err.kind == "unavailable" and "malformed" in err.message

        fake.ignore_stream = True  # one JSON object where a stream was asked for
        chunks, err = await collect(r, chat())
        assert chunks == [] and err is not None and "malformed" in err.message

    with_runner(runner_for(fake, retry=NO_RETRY), body)

    fake.ignore_stream = False
    fake.malformed_next()

    async def retried(r: RemoteRunner) -> None:
        calls = fake.count()
        chunks, err = await collect(r, chat())
        assert err is None and "".join(c.text for c in chunks) == fake.reply_text
        assert fake.count() == calls + 2

    with_runner(runner_for(fake), retried)


# ---- 7. the API key stays secret ----


def test_api_key_never_appears_in_errors_or_logs(
    key: str, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level("DEBUG")
    with FakeOpenAI(api_key="sk-the-right-one") as wrong:

        async def body(r: RemoteRunner) -> None:
            _, err = await collect(r, chat())
            assert err is not None and err.kind == "auth" and "Incorrect API key provided: ***" in err.message
            check_key_hidden(key, err, caplog, capfd)

            wrong.fail_next(500, {"error": {"message": f"upstream rejected {key}", "type": "server_error"}})
            _, err = await collect(r, chat())
            assert err is not None and err.kind == "unavailable"
            check_key_hidden(key, err, caplog, capfd)

        with_runner(runner_for(wrong, retry=NO_RETRY), body)


def test_secrets_in_litellm_args_are_redacted(fake: FakeOpenAI) -> None:
    extra_secret = new_key()
    fake.fail_next(400, {"error": {"message": f"bad header token {extra_secret}", "type": "invalid_request_error"}})

    async def body(r: RemoteRunner) -> None:
        _, err = await collect(r, chat())
        assert isinstance(err, InferenceError) and err.kind == "invalid_request"
        assert extra_secret not in str(err) and "***" in err.message
        assert fake.calls[-1].headers["x-extra-token"] == extra_secret  # the argument did reach LiteLLM

    with_runner(runner_for(fake, retry=NO_RETRY, litellm_args={"extra_headers": {"x-extra-token": extra_secret}}), body)


# ---- end to end ----


def test_node_serves_the_fake_through_the_client(fake: FakeOpenAI, tmp_path: Path) -> None:
    from atomr.client import Client

    config = tmp_path / "litellm.yaml"
    deployment_entry = {
        "name": "via-litellm",
        "model": MODEL,
        "engine": {"api_base": fake.url + "/v1", "api_key_env": KEY_ENV, "retry": FAST_RETRY},
    }
    config.write_text(yaml.safe_dump({"deployments": [deployment_entry]}))
    node = Node(config=config)
    try:
        with Client(node.address) as client:
            result = client.generate("via-litellm", [Message("user", "Say hello")], max_tokens=64)
            served = fake.served[-1]
            assert result.text == served.text == fake.reply_text and result.finish_reason == "stop"
            assert result.usage == Usage(served.prompt_tokens, served.completion_tokens)

            chunks = list(client.stream("via-litellm", "Say hello", max_tokens=4, logprobs=True))
            served = fake.served[-1]
            assert "".join(c.text for c in chunks) == served.text == "".join(tokenize(fake.reply_text)[:4])
            assert chunks[-1].finish_reason == "length" and chunks[-1].usage == Usage(served.prompt_tokens, 4)
            merged = Chunk.merge(chunks)
            assert merged.logprobs is not None and len(merged.logprobs) == 4
    finally:
        assert node.stop() == []


def test_another_provider_string_speaks_that_providers_wire(key: str) -> None:
    """`litellm/anthropic/...` goes out in Anthropic's format (the fake Anthropic server), not
    OpenAI's: system prompt in its own field, content blocks, its SSE events mapped back."""
    with FakeAnthropic(api_key=key) as anthropic:
        dep = deployment_from_dict(
            {
                "name": "remote",
                "model": "litellm/anthropic/claude-fake",
                "engine": {"api_base": anthropic.url, "api_key_env": KEY_ENV, "retry": NO_RETRY},
            }
        )

        async def body(r: RemoteRunner) -> None:
            chunks, err = await collect(r, chat(max_tokens=6))
            assert err is None
            call, served = anthropic.calls[-1], anthropic.served[-1]
            assert call.path == "/v1/messages" and call.headers["x-api-key"] == key
            assert call.body["model"] == "claude-fake" and call.body["stream"] is True
            system = [m.content for m in CHAT if m.role == "system"]
            assert [b["text"] for b in call.body["system"]] == system
            assert all(m["role"] != "system" for m in call.body["messages"])
            assert "".join(c.text for c in chunks) == served.text
            assert chunks[-1].finish_reason == "length"  # Anthropic's max_tokens
            assert chunks[-1].usage == Usage(served.input_tokens, served.output_tokens)

        with_runner(LiteLLMRunner(dep), body)
