"""The `litellm` runner: `litellm.acompletion` / `atext_completion` (model "openai/<name>") against the
fake OpenAI server, and one other provider string ("anthropic/<name>") against the fake Anthropic
server.

What every remote runner does (answers, streaming, stops, seeds, logprobs and their refusal for
text completions, cancellation, errors mapped (the OpenAI wire's own statuses and context length
by message in its adapter), its finish reasons, unknown model, connection refused, retries,
deadline, circuit breaker, broken streams and bodies, the key kept out of errors and logs) is the
runner contract's (tests/runners/). Here, what is LiteLLM's own: a quiet, offline import, its
messages' prefixes, what it sends, stop strings beyond the 4 it forwards, one JSON object where a
stream was asked for, secrets in its arguments, another provider's wire; end to end through a node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from atomr.runners.remote.base import RemoteRunner
from atomr.runners.remote.litellm.runner import LiteLLMRunner, clean_message

from atomr.core.errors import InferenceError
from atomr.core.types import Chunk, Message, Usage
from tests.conftest import REPO
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.openai_server import FakeOpenAI, tokenize
from tests.remote_support import (
    FAST_RETRY,
    NO_RETRY,
    OPENAI_CHAT,
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

MODEL = "litellm/openai/gpt-fake"
KEY = new_key()
KEY_ENV = "ATOMR_TEST_LITELLM_KEY"

server, fake, key_env = fake_server_fixtures(FakeOpenAI, KEY_ENV, KEY)


def runner_for(fake: Any, model: str = MODEL, **engine: Any) -> LiteLLMRunner:
    api_base = fake.url + ("/v1" if isinstance(fake, FakeOpenAI) else "")
    return LiteLLMRunner(remote_deployment(model, api_base, KEY_ENV, **{"retry": FAST_RETRY, **engine}))


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


def test_what_goes_on_the_wire(fake: FakeOpenAI) -> None:
    with_runner(runner_for(fake), lambda r: check_openai_wire(r, fake, KEY))


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


# ---- 2. malformed answers ----


def test_one_json_object_where_a_stream_was_asked_for_is_malformed(fake: FakeOpenAI) -> None:
    fake.ignore_stream = True

    async def body(r: RemoteRunner) -> None:
        chunks, err = await collect(r, chat())
        assert chunks == [] and err is not None and err.kind == "unavailable" and "malformed" in err.message

    with_runner(runner_for(fake, retry=NO_RETRY), body)


# ---- 3. secrets ----


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

    engine = {"api_base": fake.url + "/v1", "api_key_env": KEY_ENV, "retry": FAST_RETRY}
    config = {"deployments": [{"name": "via-litellm", "model": MODEL, "engine": engine}]}
    with node_serving(tmp_path, config) as node, Client(node.address) as client:

        def sent(body: dict[str, Any]) -> None:
            assert body["messages"][0] == {"role": "system", "content": "Be brief."}

        check_served_through_a_client(client, fake, "via-litellm", KEY, sent)
        chunks = list(client.stream("via-litellm", [Message("user", "Say hello")], max_tokens=4, logprobs=True))
        assert [lp.token for lp in logprobs_of(chunks)] == tokenize(fake.reply_text)[:4]


def test_another_provider_string_speaks_that_providers_wire() -> None:
    """`litellm/anthropic/...` goes out in Anthropic's format (the fake Anthropic server), not
    OpenAI's: system prompt in its own field, content blocks, its SSE events mapped back."""
    with FakeAnthropic(api_key=KEY) as anthropic:

        async def body(r: RemoteRunner) -> None:
            chunks, err = await collect(r, chat(max_tokens=6))
            assert err is None
            call, served = anthropic.calls[-1], anthropic.served[-1]
            assert call.path == "/v1/messages" and call.headers["x-api-key"] == KEY
            assert call.body["model"] == "claude-fake" and call.body["stream"] is True
            system = [content for role, content in OPENAI_CHAT if role == "system"]
            assert [b["text"] for b in call.body["system"]] == system
            assert all(m["role"] != "system" for m in call.body["messages"])
            assert "".join(c.text for c in chunks) == served.text
            assert chunks[-1].finish_reason == "length"  # Anthropic's max_tokens
            assert chunks[-1].usage == Usage(served.input_tokens, served.output_tokens)

        with_runner(runner_for(anthropic, model="litellm/anthropic/claude-fake", retry=NO_RETRY), body)
