"""Faults 6 and 7: a remote provider (the fake OpenAI server) that answers 500/503/429 for a burst,
and one that cuts streams midway, under mixed load through the Client and the HTTP front.

* Without a fallback, callers get structured errors (`unavailable`, `rate_limited`,
  `circuit_open`) during the storm, and the deployment serves again soon after it ends (the
  circuit breaker's cooldown). Each process that calls the provider has its own breaker (the
  runner host for Client requests, the gateway for the HTTP front's), so both paths are probed.
* With a fallback, no caller sees the storm: each failed try moves to the local tiny model.
* A stream cut before its first chunk is retried invisibly; one cut after text ends with a
  retryable error and shows only a prefix of the answer, never a part twice.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator

import pytest
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI, tokenize
from tests.fakes.server import Fault
from tests.faults.harness import (
    KINDS,
    MODEL,
    PROMPT,
    Load,
    http_completion,
    http_url,
    serves_again,
    tiny,
    write_config,
)

KEY = "sk-faults-" + "f" * 24
MAX_TOKENS = 16
STORM_ERRORS = (500, 503, 429)
STORM_S = 2.0
# A long answer, so that streams are cut well inside it.
LONG_REPLY = " ".join(f"word{i}" for i in range(60))


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as f:
        yield f


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, fake: FakeOpenAI) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("provider-faults")
    (folder / "key").write_text(KEY)
    engine = {
        "api_base": fake.url + "/v1",
        "api_key_file": str(folder / "key"),
        # 3 attempts: a retry may take the next queued cut, which may also come before any text
        "retry": {"max_attempts": 3, "backoff_initial_s": 0.02, "backoff_max_s": 0.1, "jitter_s": 0.01},
        "circuit": {"failure_threshold": 5, "cooldown_s": 1.0},
        "timeout_s": 10,
    }
    cfg = write_config(
        folder / "remote.yaml",
        {"name": "remote", "model": "openai/gpt-fake", "engine": engine},
        {"name": "guarded", "model": "openai/gpt-fake", "engine": engine, "fallbacks": ["tiny"]},
        tiny("tiny", limits={"max_inflight_per_replica": 16}),
        http={"port": 0, "request_timeout_s": 20},
    )
    n = Node(config=cfg)
    try:
        yield n
    finally:
        assert n.stop() == []


@pytest.fixture
def provider(fake: FakeOpenAI) -> FakeOpenAI:
    fake.reset(KEY)
    return fake


def fake_answer(fake: FakeOpenAI, max_tokens: int) -> str:
    """What the fake provider answers to any prompt within `max_tokens` (its tokens are words)."""
    return "".join(tokenize(fake.reply_text)[:max_tokens])


@contextlib.contextmanager
def storm(fake: FakeOpenAI, seconds: float) -> Iterator[None]:
    """Every call to the provider fails (500, 503, 429 in turn) for `seconds`; then it is healthy."""
    statuses = itertools.cycle(STORM_ERRORS)
    stop = threading.Event()

    def keep_failing() -> None:
        while not stop.is_set():
            with fake.lock:
                while len(fake.faults) < 8:
                    status = next(statuses)
                    headers = {"retry-after": "0"} if status == 429 else {}
                    fake.faults.append(Fault(status=status, headers=headers))
            stop.wait(0.005)

    filler = threading.Thread(target=keep_failing, daemon=True)
    filler.start()
    try:
        time.sleep(seconds)
        yield
    finally:
        stop.set()
        filler.join()
        with fake.lock:
            fake.faults.clear()


def test_error_storm_without_fallback_gives_structured_errors_then_recovers(node: Node, provider: FakeOpenAI) -> None:
    want = fake_answer(provider, MAX_TOKENS)
    with Client(node.address) as client:
        load = Load(client, "remote", PROMPT, want, MAX_TOKENS, kinds=KINDS, workers=6, http=http_url(node))
        try:
            load.wait_for(12)
            calls = provider.count("/completions")
            with storm(provider, STORM_S):
                pass
            ended = time.time()
            assert provider.count("/completions") > calls
            took = max(
                serves_again(lambda: client.generate("remote", prompt=PROMPT, max_tokens=8, timeout=5), ended),
                serves_again(lambda: http_completion(node, "remote"), ended),
            )
            healthy = time.time()
            load.wait_for(12, started_after=healthy)
        finally:
            load.stop()
    summary = load.check({"unavailable", "rate_limited", "circuit_open"}, before=healthy)
    assert sum(summary.errors.values()) > 0, summary  # the storm reached callers: no fallback hid it
    assert took < 5, took  # the breaker's cooldown is 1 s


def test_error_storm_with_fallback_is_invisible(node: Node, provider: FakeOpenAI) -> None:
    remote = fake_answer(provider, MAX_TOKENS)
    local = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
    with Client(node.address) as client:
        load = Load(client, "guarded", PROMPT, (remote, local), MAX_TOKENS, kinds=KINDS, workers=6, http=http_url(node))
        try:
            load.wait_for(12)
            with storm(provider, STORM_S):
                pass
            ended = time.time()
            serves_again(lambda: client.generate("remote", prompt=PROMPT, max_tokens=8, timeout=5), ended)
            load.wait_for(12, started_after=time.time())
        finally:
            load.stop()
    summary = load.check(set())  # no error at all: every failed try moved to the fallback
    assert summary.texts[local] > 0 and summary.texts[remote] > 0, summary


def test_streams_cut_midway_never_repeat_text(node: Node, provider: FakeOpenAI) -> None:
    provider.reply_text = LONG_REPLY
    max_tokens = 64
    want = fake_answer(provider, max_tokens)
    with Client(node.address) as client:
        load = Load(client, "remote", PROMPT, want, max_tokens, kinds=KINDS, workers=6, http=http_url(node))
        try:
            load.wait_for(12)
            # before the first chunk (0, and 1: a chat stream's first event is the role alone), and
            # well inside the text; the cuts before text are kept apart
            for n in (0, 10, 3, 30, 1, 20, 2) * 3:
                provider.cut_next_after(n)
                time.sleep(0.03)
            cut_done = time.time()
            while provider.faults and time.time() - cut_done < 10:
                time.sleep(0.05)
            assert not provider.faults
            healthy = time.time()
            load.wait_for(12, started_after=healthy)
        finally:
            load.stop()
    summary = load.check({"unavailable"}, before=healthy + 1.0)
    for o in load.outcomes:
        if o.error is not None:
            assert o.text and o.kind.endswith("stream"), o  # cut after text: the caller keeps a prefix
    print(summary)
