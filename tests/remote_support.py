"""Helpers shared by the remote-runner tests: deployments that point at a fake provider, running
a runner on a fresh loop, keys and checking that a key never shows, a module's fake server, a node
serving a config, and what the `openai` and `litellm` runners send on the OpenAI wire."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from atomr.config import deployment_from_dict
from atomr.core.deployment import Deployment
from atomr.core.errors import AuthError, InferenceError
from atomr.core.runner import ModelRunner
from atomr.core.types import Chunk, InferenceRequest, Usage
from tests.conftest import Node
from tests.fakes.openai_server import token_logprob, tokenize
from tests.runners.support import chat, completion, outcome

T = TypeVar("T")
R = TypeVar("R", bound=ModelRunner)

NO_RETRY = {"max_attempts": 1}
FAST_RETRY = {"max_attempts": 3, "backoff_initial_s": 0.01, "backoff_max_s": 0.05, "jitter_s": 0.0}
NO_BREAKER = {"failure_threshold": 1000}

# -- the OpenAI wire (the `openai` and `litellm` runners against tests/fakes/openai_server.py) --

OPENAI_CHAT = (("system", "You are terse."), ("user", "Say hello to the fake"))


def openai_chat(stream: bool = True, **params: Any) -> InferenceRequest:
    return chat(*OPENAI_CHAT, model="remote", stream=stream, **params)


def openai_completion(prompt: str = "Once upon a time", stream: bool = True, **params: Any) -> InferenceRequest:
    return completion(prompt, model="remote", stream=stream, **params)


def check_openai_stream(chunks: list[Chunk], served: Any, *, logprobs: bool = False) -> None:
    """The chunks are exactly what the fake OpenAI served: one per token, then finish_reason and
    usage; with `logprobs`, each token's own."""
    assert [c.text for c in chunks[:-1]] == tokenize(served.text)
    assert all(c.token_count == 1 and c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.text == "" and last.token_count == 0
    assert last.finish_reason == served.finish_reason
    assert last.usage == Usage(served.prompt_tokens, served.completion_tokens)
    if logprobs:
        for i, c in enumerate(chunks[:-1]):
            assert [(lp.token, lp.logprob) for lp in c.logprobs or ()] == [(c.text, token_logprob(i, c.text))]
        assert last.logprobs == ()
    else:
        assert all(c.logprobs is None for c in chunks)


def new_key(prefix: str = "sk-atomr-") -> str:
    return f"{prefix}{uuid.uuid4().hex}"


def remote_deployment(
    model: str,
    api_base: str,
    key_env: str,
    *,
    retry: dict[str, Any] | None = None,
    circuit: dict[str, Any] | None = None,
    name: str = "remote",
    **engine: Any,
) -> Deployment:
    """A deployment of `model` (its provider prefix names the runtime) served by the provider at
    `api_base` with the key in `key_env`; no retries and no breaker unless given."""
    options = {
        "api_base": api_base,
        "api_key_env": key_env,
        "retry": NO_RETRY if retry is None else retry,
        "circuit": NO_BREAKER if circuit is None else circuit,
        **engine,
    }
    return deployment_from_dict({"name": name, "model": model, "engine": options})


@contextlib.asynccontextmanager
async def load(runner: R) -> AsyncIterator[R]:
    await runner.load()
    try:
        yield runner
    finally:
        await runner.unload()


def run(body: Callable[[], Awaitable[T]]) -> T:
    """Run `body` on a fresh event loop."""

    async def main() -> T:
        try:
            return await body()
        finally:
            gc.collect()  # let the SDK's abandoned stream generators close on this loop
            await asyncio.sleep(0)

    return asyncio.run(main())


def with_runner(runner: R, body: Callable[[R], Awaitable[None]]) -> None:
    """Load the runner, run `body` on one fresh event loop, unload it."""

    async def main() -> None:
        async with load(runner) as loaded:
            await body(loaded)

    run(main)


def assert_key_hidden(err: BaseException | None, key: str) -> None:
    assert isinstance(err, InferenceError), err
    for shown in (str(err), repr(err), err.message, repr(err.info()), repr(err.details)):
        assert key not in shown


def assert_key_nowhere(
    key: str, err: BaseException | None, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Neither the error (masked as ***) nor the logs nor the output show the key."""
    assert_key_hidden(err, key)
    assert isinstance(err, InferenceError) and "***" in err.message, err
    assert key not in caplog.text
    out = capfd.readouterr()
    assert key not in out.out and key not in out.err


def fake_server_fixtures(
    fake_class: Callable[..., Any], env: str, key: str, unset: tuple[str, ...] = ()
) -> tuple[Any, Any, Any]:
    """A test module's fixtures for a fake provider, to assign to the names `server` (one per
    module: closing one takes up to half a second), `fake` (that server, fresh for the test) and
    `key_env` (autouse: `key` in the variable `env`, the variables in `unset` removed)."""

    @pytest.fixture(scope="module")
    def server() -> Iterator[Any]:
        with fake_class(api_key=key) as running:
            yield running

    @pytest.fixture
    def fake(server: Any) -> Iterator[Any]:
        server.reset()
        server.api_key = key
        yield server
        server.reset()
        server.api_key = key

    @pytest.fixture(autouse=True)
    def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv(env, key)
        for name in unset:
            monkeypatch.delenv(name, raising=False)

    return server, fake, key_env


def mixed_roles_chat(**params: Any) -> InferenceRequest:
    """A streamed chat with two system messages among user and assistant turns (each provider
    places system prompts its own way)."""
    turns = [
        ("system", "You are terse."),
        ("user", "Say hello."),
        ("assistant", "Hello."),
        ("system", "Answer in English."),
        ("user", "Again, please."),
    ]
    return chat(*turns, model="remote", stream=True, **params)


@contextlib.contextmanager
def node_serving(tmp_path: Path, config: dict[str, Any]) -> Iterator[Node]:
    """A real node (its own processes) serving `config`; stopped, leaving nothing behind."""
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    node = Node(config=path)
    try:
        yield node
    finally:
        assert node.stop() == []


async def check_openai_wire(r: ModelRunner, fake: Any, key: str) -> None:
    """A chat and a completion on the OpenAI wire: what the runner sends, and that the chunks are
    exactly what the fake served."""
    chunks, err = await outcome(r, openai_chat(max_tokens=64, temperature=0.7, top_p=0.9, seed=11))
    assert err is None
    served, call = fake.served[-1], fake.calls[-1]
    assert served.stream and served.finish_reason == "stop" and served.text == fake.reply_text
    check_openai_stream(chunks, served)
    assert call.path == "/v1/chat/completions" and call.headers["authorization"] == f"Bearer {key}"
    sent = call.body
    assert sent["model"] == "gpt-fake" and sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["messages"] == [{"role": role, "content": content} for role, content in OPENAI_CHAT]
    assert (sent["max_tokens"], sent["temperature"], sent["top_p"], sent["seed"]) == (64, 0.7, 0.9, 11)
    assert "logprobs" not in sent and "stop" not in sent  # nothing the caller did not set

    chunks, err = await outcome(r, openai_completion(max_tokens=4))
    assert err is None
    assert fake.calls[-1].path == "/v1/completions" and fake.calls[-1].body["prompt"] == "Once upon a time"
    check_openai_stream(chunks, fake.served[-1])
    assert fake.served[-1].prompt_tokens == 4 and chunks[-1].finish_reason == "length"

    chunks, err = await outcome(r, openai_chat(stop=(" one", "zzz")))
    assert err is None and fake.calls[-1].body["stop"] == [" one", "zzz"]
    check_openai_stream(chunks, fake.served[-1])
    # max_tokens reached before the stop string: length
    chunks, err = await outcome(r, openai_completion(max_tokens=2, stop=("fake",)))
    assert err is None and fake.calls[-1].body["max_tokens"] == 2 and chunks[-1].finish_reason == "length"
    assert "".join(c.text for c in chunks) == "Hello from"

    chunks, err = await outcome(r, openai_chat(max_tokens=6, logprobs=True))
    assert err is None and fake.calls[-1].body["logprobs"] is True
    check_openai_stream(chunks, fake.served[-1], logprobs=True)


def key_file_deployment(tmp_path: Path, name: str, model: str, api_base: str, key: str) -> dict[str, Any]:
    """A deployment entry of a node's config whose key is read from a file."""
    key_file = tmp_path / f"{name}.key"
    key_file.write_text(key + "\n")
    return {
        "name": name,
        "model": model,
        "engine": {"api_base": api_base, "api_key_file": str(key_file), "retry": FAST_RETRY},
    }


def check_served_through_a_client(
    client: Any,
    fake: Any,
    name: str,
    key: str,
    sent: Callable[[Any], None],
    usage_of: Callable[[Any], Usage] = lambda served: Usage(served.prompt_tokens, served.completion_tokens),
) -> None:
    """Through a node: a chat with a system prompt (`sent` checks the provider's body), a stream
    cut by max_tokens, then the provider's 401 as an AuthError without the key."""
    got = client.generate(name, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    served = fake.served[-1]
    assert got.text == served.text == fake.reply_text and got.finish_reason == "stop"
    assert got.usage == usage_of(served)
    sent(fake.calls[-1].body)
    chunks = list(client.stream(name, prompt="Tell me", max_tokens=4))
    served = fake.served[-1]
    assert "".join(c.text for c in chunks) == served.text == "".join(tokenize(fake.reply_text)[:4])
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage == Usage(usage_of(served).prompt_tokens, 4)
    fake.fail_next(401)
    with pytest.raises(AuthError) as info:
        client.generate(name, "Hi")
    assert key not in str(info.value)
    assert fake.count() == 3
