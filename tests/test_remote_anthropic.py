"""The Anthropic runner: the real `anthropic` SDK against a fake Messages API on 127.0.0.1.

What every remote runner does (answers, streaming, stops, logprobs refused naming the field,
cancellation, errors mapped (Anthropic's own error types in its adapter), its stop reasons, a
missing key, unknown model, unreachable provider, retry-after, 4xx never retried, deadline,
circuit breaker, a stream cut mid-way, malformed bodies, the key kept out of errors and logs) is the
runner contract's (tests/runners/). Here, what is the Anthropic runner's own: the system prompt's
field, content blocks and what else goes on the wire, a chat of system messages only, error events
in a stream. End to end: a real node serving a deployment that points at the fake
answers `Client.generate` and `Client.stream`, refuses logprobs, and a cascade whose first tier is
that deployment passes the refused tier over.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from atomr.runners.remote.anthropic.runner import AnthropicRunner

from atomr.client import Client
from atomr.core.errors import InvalidRequestError
from atomr.core.types import InferenceRequest, SamplingParams, Usage
from tests.fakes.anthropic_server import FakeAnthropic, tokenize
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

KEY = f"sk-ant-test-{uuid.uuid4().hex}"
KEY_ENV = "ATOMR_TEST_ANTHROPIC_KEY"

server, fake, key_env = fake_server_fixtures(FakeAnthropic, KEY_ENV, KEY)


def make_runner(fake: FakeAnthropic, **engine: Any) -> AnthropicRunner:
    return AnthropicRunner(remote_deployment("anthropic/claude-fake", fake.url, KEY_ENV, name="claude", **engine))


# ---- chat, completion, streaming ----


def test_chat_stream_text_usage_finish_and_system_field(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            req = mixed_roles_chat(max_tokens=100, temperature=0.7, top_p=0.9, top_k=40, seed=3)
            chunks, err = await outcome(runner, req)  # the chunks' shape is the runner contract's
            assert err is None and fake.served[-1].stop_reason == "end_turn" and chunks[-1].finish_reason == "stop"
            assert chunks[-1].usage == Usage(fake.served[-1].input_tokens, fake.served[-1].output_tokens)
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
        async with load(make_runner(fake)) as runner:
            req = InferenceRequest(model="claude", prompt="Once upon a time", params=SamplingParams(max_tokens=50))
            chunks, err = await outcome(runner, req)
            assert err is None and text(chunks) == fake.reply_text
            sent = fake.calls[-1].body
            assert sent["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Once upon a time"}]}]
            assert "system" not in sent and sent["temperature"] == 0.0
            assert "top_p" not in sent and "top_k" not in sent
            assert chunks[-1].usage == Usage(4, len(tokenize(fake.reply_text)))

    run(body)


def test_stop_sequences_and_max_tokens_go_on_the_wire(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=100, stop=(" one", "never")))
            assert err is None and chunks[-1].finish_reason == "stop"
            assert fake.calls[-1].body["stop_sequences"] == [" one", "never"]
            assert fake.served[-1].stop_reason == "stop_sequence" and fake.served[-1].stop_sequence == " one"
            assert chunks[-1].usage == Usage(1, len(tokenize(text(chunks))))

            chunks, err = await outcome(runner, chat(("user", "hi"), max_tokens=3))
            assert err is None and fake.calls[-1].body["max_tokens"] == 3
            assert fake.served[-1].stop_reason == "max_tokens" and chunks[-1].finish_reason == "length"

    run(body)


def test_only_system_messages_is_an_invalid_request(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake)) as runner:
            _, err = await outcome(runner, chat(("system", "You are terse.")))
            assert err is not None and err.kind == "invalid_request" and err.field == "messages"
            assert fake.count() == 0

    run(body)


# ---- errors ----


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
        async with load(make_runner(fake, retry=FAST_RETRY)) as runner:
            fake.error_event_next(error_type, f"mid-stream {error_type} {KEY}", after=2)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert [c.text for c in chunks] == tokenize(fake.reply_text)[:2]  # what was sent, then the error
            assert err is not None and err.kind == kind
            assert_key_hidden(err, KEY)
            assert fake.count() == 1  # text reached the caller: never retried

    run(body)


def test_error_event_before_any_text_is_retried(fake: FakeAnthropic) -> None:
    async def body() -> None:
        async with load(make_runner(fake, retry=FAST_RETRY)) as runner:
            fake.error_event_next("overloaded_error", "Overloaded", after=0)
            chunks, err = await outcome(runner, chat(("user", "hi")))
            assert err is None and text(chunks) == fake.reply_text
            assert fake.count() == 2

    run(body)


# ---- end to end ----


def test_end_to_end_through_a_node(fake: FakeAnthropic, tmp_path: Path) -> None:
    deployment = key_file_deployment(tmp_path, "claude", "anthropic/claude-fake", fake.url, KEY)
    # a cascade whose first tier cannot give logprobs: refused there, so the next tier answers
    careful = {"name": "careful", "tiers": [{"deployment": "claude", "threshold": -0.5}, {"deployment": "claude"}]}
    with node_serving(tmp_path, {"deployments": [deployment], "cascades": [careful]}) as node:
        with Client(node.address) as client:

            def sent(body: dict[str, Any]) -> None:
                assert body["system"] == "Be brief."

            check_served_through_a_client(
                client, fake, "claude", KEY, sent, lambda s: Usage(s.input_tokens, s.output_tokens)
            )
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
    assert KEY not in node.output()
