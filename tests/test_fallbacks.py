"""Fallbacks across deployments through a real node: a provider that fails retryably before its
first chunk is replaced, invisibly, by the next deployment of the list; a stream cut after text
ends with an error and never repeats text."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from atomr.core.errors import InferenceError, UnavailableError
from atomr.models import builtin_model_dir
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-fallback-test-key"
NO_RETRY = {"max_attempts": 1}


@pytest.fixture
def fake() -> FakeOpenAI:
    with FakeOpenAI(api_key=KEY) as f:
        yield f


def _node(tmp_path: Path, fake: FakeOpenAI) -> Node:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    remote = {"api_base": fake.url + "/v1", "api_key_file": str(key_file), "retry": NO_RETRY}
    cfg = tmp_path / "fallbacks.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "deployments": [
                    {"name": "primary", "model": "openai/gpt-fake", "engine": remote, "fallbacks": ["backup", "tiny"]},
                    {"name": "backup", "model": "openai/gpt-fake", "engine": remote},
                    {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}},
                    {"name": "lonely", "model": "openai/gpt-fake", "engine": remote},
                ]
            }
        )
    )
    return Node(config=cfg)


def test_retryable_failures_move_down_the_fallback_list(tmp_path: Path, fake: FakeOpenAI) -> None:
    node = _node(tmp_path, fake)
    try:
        with Client(node.address) as client:
            # primary: 503; backup: 429 -> the local tiny model answers, and the caller sees only that.
            fake.fail_next(503)
            fake.fail_next(429, headers={"retry-after": "1"})
            result = client.generate("primary", prompt="Once upon a time", max_tokens=16)
            assert result.deployment == "tiny"
            assert result.text == ort_greedy_reference(builtin_model_dir("tiny-llama"), "Once upon a time", 16)
            assert fake.count("/chat/completions") + fake.count("/completions") == 2
            # streaming too: the first chunk comes from the fallback, nothing from the failed try
            fake.fail_next(503)
            chunks = list(client.stream("primary", "Hello", max_tokens=32))
            assert "".join(c.text for c in chunks) == fake.reply_text
            # a non-retryable error is not hidden by a fallback
            fake.fail_next(400)
            with pytest.raises(InferenceError) as bad:
                client.generate("primary", "Hello", max_tokens=8)
            assert bad.value.kind == "invalid_request"
            # with no fallback the caller gets the provider's error
            fake.fail_next(503)
            with pytest.raises(UnavailableError):
                client.generate("lonely", "Hello", max_tokens=8)
    finally:
        assert node.stop() == []


def test_a_stream_cut_after_text_never_repeats_text(tmp_path: Path, fake: FakeOpenAI) -> None:
    node = _node(tmp_path, fake)
    try:
        with Client(node.address) as client:
            full = "".join(c.text for c in client.stream("primary", "Hello", max_tokens=64))
            fake.cut_next_after(5)
            seen = ""
            with pytest.raises(InferenceError) as cut:
                for chunk in client.stream("primary", "Hello", max_tokens=64):
                    seen += chunk.text
            assert cut.value.retryable
            assert seen and full.startswith(seen) and seen != full  # a prefix, nothing twice
    finally:
        assert node.stop() == []


def test_an_open_circuit_shows_in_status_and_keeps_calls_away(tmp_path: Path, fake: FakeOpenAI) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    engine = {
        "api_base": fake.url + "/v1",
        "api_key_file": str(key_file),
        "retry": NO_RETRY,
        "circuit": {"failure_threshold": 2, "cooldown_s": 30},
    }
    cfg = tmp_path / "breaker.yaml"
    cfg.write_text(yaml.safe_dump({"deployments": [{"name": "fragile", "model": "openai/gpt-fake", "engine": engine}]}))
    node = Node(config=cfg)
    try:
        with Client(node.address) as client:
            fake.fail_next(503, times=2)
            for _ in range(2):
                with pytest.raises(UnavailableError):
                    client.generate("fragile", "Hello", max_tokens=8)
            calls = fake.count("/completions")
            with pytest.raises(InferenceError) as fast:
                client.generate("fragile", "Hello", max_tokens=8)
            assert fast.value.kind == "circuit_open" and fast.value.retry_after
            assert fake.count("/completions") == calls  # nothing reached the provider
            (replica,) = next(d for d in client.status()["deployments"] if d.name == "fragile").replicas
            assert replica.health["circuit"]["state"] == "open"
    finally:
        assert node.stop() == []
