"""The OpenAI-compatible HTTP front on a real node, driven by the official openai SDK and by curl.

- sync and async SDK clients, with and without streaming, answer exactly what `atomr.Client`
  answers, with usage; errors raise the SDK's matching exception classes;
- bad bodies (malformed JSON, missing or mistyped fields, empty, 10 MB) get a 4xx OpenAI-style
  error naming the field, and the node keeps serving;
- tenants: a key in the config is stored hashed; no key -> 401, a model the tenant may not use ->
  403, over its concurrency quota -> 429 with Retry-After;
- a request's id is in its JSON log line; the API key never appears in any log;
- a client that disconnects mid-stream cancels the request down to the engine.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai")

import openai

from atomr.client import Client
from atomr.core.tenants import new_key
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI, tokenize

KEY_A, HASH_A = new_key()
KEY_B, HASH_B = new_key()
KEY_OPS, HASH_OPS = new_key()
PROVIDER_KEY = "sk-provider-" + "k" * 32
CHAT = [{"role": "user", "content": "What is an actor?"}]


@pytest.fixture(scope="module")
def provider() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory, provider: FakeOpenAI) -> Iterator[tuple[Node, str]]:
    folder = tmp_path_factory.mktemp("front")
    (folder / "provider.key").write_text(PROVIDER_KEY)
    cfg = folder / "front.yaml"
    cfg.write_text(
        f"""
http: {{port: 0, max_body_bytes: 65536}}
tenants:
  - {{name: team-a, key_sha256: {HASH_A}, models: [tiny, default, gpt], max_concurrency: 2, priority: 1}}
  - {{name: team-b, key_sha256: {HASH_B}, models: [other]}}
  - {{name: ops, key_sha256: {HASH_OPS}}}
deployments:
  - name: tiny
    model: builtin:tiny-llama
    aliases: [default]
    limits: {{max_inflight_per_replica: 16}}
  - name: gpt
    model: openai/gpt-fake
    engine: {{api_base: "{provider.url}/v1", api_key_file: {folder / "provider.key"}, retry: {{max_attempts: 1}}}}
  - name: gpt-raw
    model: openai/gpt-fake
    limits: {{coalesce: false}}
    engine: {{api_base: "{provider.url}/v1", api_key_file: {folder / "provider.key"}, retry: {{max_attempts: 1}}}}
"""
    )
    node = Node(config=cfg)
    match = re.search(r"http front on (http://\S+)", node.output())
    assert match, node.output()
    try:
        yield node, match.group(1)
    finally:
        assert node.stop() == []


def sdk(base: str, key: str = KEY_A) -> Any:
    return openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)


def test_sync_sdk_answers_equal_the_atomr_client(front: tuple[Node, str]) -> None:
    node, base = front
    with Client(node.address) as client:
        want_chat = client.generate("tiny", CHAT, max_tokens=24)
        want_completion = client.generate("tiny", prompt="The actor model", max_tokens=24)
    c = sdk(base)
    got = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=24)
    assert got.choices[0].message.content == want_chat.text
    assert got.choices[0].finish_reason == want_chat.finish_reason
    assert got.usage is not None and got.usage.completion_tokens == want_chat.usage.completion_tokens
    assert got.usage.prompt_tokens == want_chat.usage.prompt_tokens
    done = c.completions.create(model="tiny", prompt="The actor model", max_tokens=24)
    assert done.choices[0].text == want_completion.text
    assert done.usage is not None and done.usage.total_tokens == want_completion.usage.total_tokens
    # streaming: the deltas add up to the same text; usage arrives in the last event when asked
    parts, usage, finish = [], None, None
    for ev in c.chat.completions.create(
        model="tiny", messages=CHAT, max_tokens=24, stream=True, stream_options={"include_usage": True}
    ):
        if ev.choices:
            parts.append(ev.choices[0].delta.content or "")
            finish = ev.choices[0].finish_reason or finish
        if ev.usage is not None:
            usage = ev.usage
    assert "".join(parts) == want_chat.text and finish == want_chat.finish_reason
    assert usage is not None and usage.completion_tokens == want_chat.usage.completion_tokens
    text = "".join(
        ev.choices[0].text
        for ev in c.completions.create(model="tiny", prompt="The actor model", max_tokens=24, stream=True)
    )
    assert text == want_completion.text
    # logprobs, chat shape
    lp = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, logprobs=True)
    entries = lp.choices[0].logprobs.content
    assert len(entries) == lp.usage.completion_tokens and all(e.logprob <= 0 for e in entries)
    assert "".join(e.token for e in entries) == lp.choices[0].message.content
    assert {m.id for m in c.models.list().data} == {"tiny", "default", "gpt"}  # what team-a may use
    assert {m.id for m in sdk(base, key=KEY_B).models.list().data} == set()


def test_async_sdk_streams_and_runs_concurrently(front: tuple[Node, str]) -> None:
    node, base = front
    with Client(node.address) as client:
        want = client.generate("tiny", prompt="In winter", max_tokens=16).text

    async def go() -> list[str]:
        c = openai.AsyncOpenAI(base_url=base + "/v1", api_key=KEY_A, max_retries=0, timeout=60)

        async def one(stream: bool) -> str:
            if not stream:
                r = await c.completions.create(model="default", prompt="In winter", max_tokens=16)
                return r.choices[0].text
            out = []
            async for ev in await c.completions.create(model="default", prompt="In winter", max_tokens=16, stream=True):
                out.append(ev.choices[0].text)
            return "".join(out)

        try:
            return await asyncio.gather(one(True), one(False))  # two: the tenant's quota is 2
        finally:
            await c.close()

    assert asyncio.run(go()) == [want, want]


def test_errors_raise_the_sdk_exception_classes(front: tuple[Node, str], provider: FakeOpenAI) -> None:
    _, base = front
    with pytest.raises(openai.AuthenticationError):
        sdk(base, key="atomr-not-a-key").chat.completions.create(model="tiny", messages=CHAT)
    with pytest.raises(openai.NotFoundError) as nf:
        sdk(base, key=KEY_OPS).chat.completions.create(model="nope", messages=CHAT)
    assert nf.value.status_code == 404
    with pytest.raises(openai.PermissionDeniedError):
        sdk(base, key=KEY_B).chat.completions.create(model="tiny", messages=CHAT)
    with pytest.raises(openai.BadRequestError) as bad:
        sdk(base).chat.completions.create(model="tiny", messages=CHAT, temperature=7)
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as too_long:
        sdk(base).completions.create(model="tiny", prompt="word " * 400, max_tokens=8)
    assert too_long.value.body["code"] == "context_length_exceeded"  # type: ignore[index]  # OpenAI's spelling
    assert nf.value.body["code"] == "model_not_found"  # type: ignore[index]
    # over the tenant's concurrency quota (2): 429 with Retry-After, while two calls are in flight
    with ThreadPoolExecutor(2) as pool:
        provider.stall_next(2.0, times=2)
        slow = [pool.submit(c.chat.completions.create, model="gpt", messages=CHAT) for c in (sdk(base), sdk(base))]
        deadline = time.time() + 10
        while provider.count("/chat/completions") < 2 and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(openai.RateLimitError) as limited:
            sdk(base).completions.create(model="tiny", prompt="x", max_tokens=4)
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert all(f.result().choices[0].message.content for f in slow)
    assert sdk(base).completions.create(model="tiny", prompt="x", max_tokens=4).choices  # the quota is free again


def test_a_stream_refused_before_its_first_byte_is_an_http_error(front: tuple[Node, str]) -> None:
    """Known before the first event, a stream's error is an HTTP status with a JSON body (what the
    SDK turns into its typed error); after it, the stream has begun and the error is an SSE event."""
    _, base = front
    with pytest.raises(openai.NotFoundError) as nf:
        sdk(base, key=KEY_OPS).chat.completions.create(model="nope", messages=CHAT, stream=True)
    assert nf.value.status_code == 404 and nf.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        sdk(base).completions.create(model="tiny", prompt="word " * 400, max_tokens=8, stream=True)
    assert too_long.value.status_code == 400 and too_long.value.code == "context_length_exceeded"
    assert too_long.value.param == "prompt"
    code, body = curl(
        base + "/v1/chat/completions",
        "-H", f"Authorization: Bearer {KEY_A}",
        "-d", json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": 500, "stream": True}),
    )  # fmt: skip
    assert code == 400 and body["error"]["code"] == "context_length_exceeded", body
    # the node keeps serving streams
    stream = sdk(base).chat.completions.create(model="tiny", messages=CHAT, max_tokens=8, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def curl(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", url, *args], capture_output=True, timeout=60, check=True
    ).stdout.decode()
    body, _, code = out.rpartition("\n")
    return int(code), json.loads(body) if body.strip() else {}


@pytest.mark.parametrize(
    ("data", "status", "param"),
    [
        ("{not json", 400, "body"),
        ("", 400, "body"),
        ("[1, 2]", 400, "body"),
        ('{"model": "tiny"}', 400, "messages"),
        ('{"model": "tiny", "messages": "hello"}', 400, "messages"),
        ('{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
        ('{"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages[0].role"),
        ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}', 400, "max_tokens"),
        ('{"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "n": 3}', 400, "n"),
    ],
)
def test_bad_bodies_get_4xx_naming_the_field(front: tuple[Node, str], data: str, status: int, param: str) -> None:
    _, base = front
    code, body = curl(base + "/v1/chat/completions", "-H", f"authorization: Bearer {KEY_A}", "--data-binary", data)
    assert code == status, body
    assert body["error"]["param"] == param and body["error"]["type"] == "invalid_request_error"
    assert body["error"]["message"]


def test_huge_body_is_refused_and_the_node_keeps_serving(front: tuple[Node, str], tmp_path: Path) -> None:
    _, base = front
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * (10 << 20)}]}))
    code, body = curl(base + "/v1/chat/completions", "-H", f"authorization: Bearer {KEY_A}", "--data-binary", f"@{big}")
    assert code == 413 and body["error"]["param"] == "body"
    code, body = curl(base + "/v1/chat/completions", "-H", f"authorization: Bearer {KEY_A}", "-d",
                      json.dumps({"model": "tiny", "messages": CHAT, "max_tokens": 4}))  # fmt: skip
    assert code == 200 and body["choices"][0]["message"]["content"]
    assert curl(base + "/healthz")[0] == 200
    assert curl(base + "/health") == (200, {"status": "ok"})  # vLLM's name, which load tools probe
    code, ready = curl(base + "/readyz")
    assert code == 200 and ready["deployments"] == {"tiny": "ready", "gpt": "ready", "gpt-raw": "ready"}


def test_request_id_is_logged_and_the_key_never_is(front: tuple[Node, str]) -> None:
    node, base = front
    r = sdk(base).chat.completions.with_raw_response.create(model="tiny", messages=CHAT, max_tokens=4)
    rid = r.headers["x-request-id"]
    assert r.parse().id == f"chatcmpl-{rid}"
    deadline = time.time() + 5
    while time.time() < deadline and rid not in node.output():
        time.sleep(0.1)
    lines = [json.loads(line) for line in node.output().splitlines() if rid in line and line.startswith("{")]
    assert any(
        rec.get("event") == "request" and rec.get("outcome") == "ok" and rec.get("tenant") == "team-a" for rec in lines
    )
    # no log holds a key, whether it was accepted or refused
    with pytest.raises(openai.AuthenticationError):
        sdk(base, key=KEY_B[:-1] + "x").chat.completions.create(model="tiny", messages=CHAT)
    out = node.output()
    assert KEY_A not in out and KEY_B not in out and KEY_B[:-1] not in out and KEY_OPS not in out


def test_client_disconnect_cancels_the_request(front: tuple[Node, str], provider: FakeOpenAI) -> None:
    node, base = front
    host, _, port = base.removeprefix("http://").partition(":")
    provider.stall_next(3.0)  # the provider is slow: the caller leaves while its request is running
    before = provider.count("/chat/completions")
    body = json.dumps({"model": "gpt", "messages": CHAT, "stream": True}).encode()
    seen = len(node.output().splitlines())
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            + f"authorization: Bearer {KEY_A}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        deadline = time.time() + 10
        while provider.count("/chat/completions") == before and time.time() < deadline:
            time.sleep(0.02)  # the request reached the provider
        assert provider.count("/chat/completions") > before
    # The caller left (before the stream's first byte: its status waits for the first event): the
    # request is cancelled down to the runner (its call to the provider is dropped), it is logged
    # as cancelled long before the provider would have answered, and the tenant's quota is free.
    deadline = time.time() + 10
    rec: dict[str, Any] | None = None
    while time.time() < deadline and rec is None:
        for line in node.output().splitlines()[seen:]:
            if '"event": "request"' in line and '"deployment": "gpt"' in line:
                rec = json.loads(line)
        time.sleep(0.05)
    assert rec is not None and rec["outcome"] == "cancelled", rec
    assert rec["latency_ms"] < 2500
    for _ in range(2):  # the tenant may have 2 in flight: both slots are free
        assert sdk(base).completions.create(model="tiny", prompt="x", max_tokens=2).choices[0].text is not None


def test_coalescing_off_relays_the_upstream_chunking(front: tuple[Node, str], provider: FakeOpenAI) -> None:
    _, base = front
    c = sdk(base, KEY_OPS)
    events = list(
        c.chat.completions.create(model="gpt-raw", messages=CHAT, stream=True, stream_options={"include_usage": True})
    )
    pieces = [e.choices[0].delta.content for e in events if e.choices and e.choices[0].delta.content]
    assert pieces == tokenize(provider.reply_text)  # one SSE event per upstream delta, none merged
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == len(pieces)
