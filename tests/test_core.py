"""Core values: deployment validation and runtime inference, request validation, errors on the wire."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
from atomr.runners.catalog import infer_runtime

from atomr.config import deployment_from_dict, load_deployments
from atomr.core.errors import (
    ConfigError,
    ContextLengthError,
    InferenceError,
    InvalidRequestError,
    OverloadedError,
    RateLimitedError,
)
from atomr.core.messages import ToolCallDelta
from atomr.core.types import Chunk, InferenceRequest, Message, SamplingParams, TokenLogprob, Usage, make_messages
from atomr.serving.coalesce import ChunkCoalescer

REPO = Path(__file__).resolve().parents[1]


def test_runtime_is_inferred_from_the_model_reference(tmp_path: Path) -> None:
    assert infer_runtime("openai/gpt-4o-mini") == "openai"
    assert infer_runtime("anthropic/claude-3-5-haiku") == "anthropic"
    assert infer_runtime("gemini/gemini-2.0-flash") == "gemini"
    assert infer_runtime("builtin:tiny-llama") == "ort"
    ort = tmp_path / "ort"
    ort.mkdir()
    (ort / "genai_config.json").write_text("{}")
    assert infer_runtime(str(ort), ort) == "ort"
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert infer_runtime(str(hf), hf) == "vllm"
    trt = tmp_path / "trt"
    trt.mkdir()
    (trt / "rank0.engine").write_bytes(b"")
    assert infer_runtime(str(trt), trt) == "tensorrt"


def test_builtin_model_deployment_resolves_the_shipped_files() -> None:
    dep = deployment_from_dict({"name": "tiny", "model": "builtin:tiny-llama"})
    assert dep.runtime == "ort"
    assert dep.model_path is not None and (dep.model_path / "onnx" / "genai_config.json").is_file()


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"name": "a", "model": "x", "runtime": "nope"}, "runtime", "unknown runtime 'nope'"),
        ({"name": "a", "model": "openai/x", "replicas": 0}, "replicas", "greater than or equal to 1"),
        ({"name": "a b", "model": "openai/x"}, "name", "letters, digits"),
        ({"name": "a", "model": "openai/x", "limits": {"max_queue": -1}}, "limits.max_queue", ">= 0"),
        ({"name": "a", "model": "openai/x", "colour": "red"}, "colour", "Extra inputs"),
        ({"name": "a", "model": "./missing-model", "runtime": "ort"}, "model", "not found"),
        ({"name": "a", "model": "builtin:no-such-model"}, "model", "no-such-model"),
        ({"name": "a", "model": "/somewhere/unknown"}, "model", "cannot infer the runtime"),
    ],
)
def test_deployment_errors_name_the_field(raw: dict, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        deployment_from_dict(raw, where="deployments[0]")
    assert info.value.field == field
    assert words.replace(">= 0", "greater than or equal to 0") in info.value.message or words in info.value.message
    assert "deployments[0]" in info.value.message


def test_yaml_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  - name: a\n    model: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_deployments(bad)
    assert "bad.yaml" in info.value.message and "line" in info.value.message

    dup = tmp_path / "dup.yaml"
    dup.write_text("deployments:\n  - {name: a, model: openai/x}\n  - {name: a, model: openai/y}\n")
    with pytest.raises(ConfigError, match=r"deployments\[1\]\.name: 'a' is used twice"):
        load_deployments(dup)

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("deployments:\n  - {name: a, model: openai/x, replicas: many}\n")
    with pytest.raises(ConfigError, match=r"wrong.yaml: deployments\[0\]\.replicas"):
        load_deployments(wrong)


def test_shipped_local_config_is_valid() -> None:
    deps = load_deployments(REPO / "system_config" / "local.yaml")
    assert [d.name for d in deps] == ["tiny"] and deps[0].runtime == "ort"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"params": SamplingParams(max_tokens=0)}, "max_tokens"),
        ({"params": SamplingParams(temperature=-1.0)}, "temperature"),
        ({"params": SamplingParams(top_p=0.0)}, "top_p"),
        ({"params": SamplingParams(stop=("",))}, "stop"),
        ({"messages": (Message("robot", "hi"),)}, "messages[0].role"),
        ({"messages": ()}, "messages"),
        ({"messages": None, "prompt": None}, "messages"),
        ({"prompt": "x"}, "prompt"),  # both messages and prompt
    ],
)
def test_invalid_requests_name_the_field(kwargs: dict, field: str) -> None:
    base = {"model": "m", "messages": (Message("user", "hi"),)}
    base.update(kwargs)
    with pytest.raises(InvalidRequestError) as info:
        InferenceRequest(**base).validate()
    assert info.value.field == field


def test_make_messages_names_the_bad_element() -> None:
    assert make_messages([{"role": "user", "content": "hi"}]) == (Message("user", "hi"),)
    with pytest.raises(InvalidRequestError) as info:
        make_messages([{"role": "user", "content": "hi"}, {"role": "user"}])
    assert info.value.field == "messages[1].content"


def test_errors_survive_pickling_with_their_class_and_fields() -> None:
    for err in (
        RateLimitedError("slow down", retry_after=1.5),
        ContextLengthError("too long", field="prompt"),
        OverloadedError("full", retry_after=1.0),
    ):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err)
        assert (back.message, back.field, back.retry_after) == (err.message, err.field, err.retry_after)
    assert RateLimitedError.retryable and not InvalidRequestError.retryable
    assert RateLimitedError.http_status == 429 and ContextLengthError.http_status == 400
    assert isinstance(InferenceError.from_info(OverloadedError("x").info()), OverloadedError)


def test_coalescer_sends_first_chunk_at_once_then_by_count_and_time() -> None:
    co = ChunkCoalescer(max_tokens=3, max_delay=0.05)
    [first] = co.add(Chunk("a"), now=0.0)
    assert first.text == "a"
    assert co.add(Chunk("b"), now=0.001) == []
    assert co.add(Chunk("c"), now=0.002) == []
    [merged] = co.add(Chunk("d"), now=0.003)
    assert merged.text == "bcd" and merged.token_count == 3
    assert co.add(Chunk("e"), now=0.010) == []
    [timed] = co.add(Chunk("f"), now=0.061)
    assert timed.text == "ef"
    co.add(Chunk("g", logprobs=(TokenLogprob("g", -0.5),)), now=0.062)
    [last] = co.add(Chunk("h", logprobs=(TokenLogprob("h", -0.1),), finish_reason="stop", usage=Usage(3, 8)), now=0.063)
    assert last.text == "gh" and last.finish_reason == "stop"
    assert last.usage == Usage(3, 8) and [lp.token for lp in last.logprobs or ()] == ["g", "h"]
    assert co.take() is None


def test_a_coalescer_switched_off_sends_every_chunk_as_it_came() -> None:
    co = ChunkCoalescer.for_limits(False, max_tokens=16, max_delay=10.0)
    chunks = [Chunk("a"), Chunk("", token_count=0), Chunk("b"), Chunk("c", finish_reason="stop", usage=Usage(1, 3))]
    for i, chunk in enumerate(chunks):
        assert co.add(chunk, now=0.001 * i) == [chunk]
    assert co.take() is None


def test_coalescer_never_merges_two_choices_and_joins_tool_call_pieces() -> None:
    co = ChunkCoalescer(max_tokens=100, max_delay=10.0)
    co.add(Chunk("x"), now=0.0)  # the first chunk leaves at once
    call = ToolCallDelta(0, "call_1", "get_weather", "")
    assert co.add(Chunk("", tool_calls=(call,)), now=0.001) == []
    assert co.add(Chunk("", tool_calls=(ToolCallDelta(0, arguments='{"city":'),)), now=0.002) == []
    assert co.add(Chunk("", tool_calls=(ToolCallDelta(0, arguments=' "Paris"}'),)), now=0.003) == []
    [sent] = co.add(Chunk("other", index=1), now=0.004)  # another choice: what was pending goes first
    assert sent.index == 0 and sent.tool_calls == (ToolCallDelta(0, "call_1", "get_weather", '{"city": "Paris"}'),)
    held = co.take()
    assert held is not None and held.index == 1 and held.text == "other"


def test_every_error_kind_comes_back_from_the_code_the_http_front_answers_with() -> None:
    from atomr.core import errors
    from atomr.http.openai_wire import error_code, kind_of_code

    kinds = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.InferenceError)]
    for cls in kinds:
        for field in (None, "model"):
            exc = cls("x", field=field)
            assert kind_of_code(error_code(exc)) == exc.kind, (cls, field)
