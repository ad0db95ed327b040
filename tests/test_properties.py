"""Property tests (hypothesis) of every place that reads untrusted input.

- the deployment loader (`deployment_from_dict`, `load_deployments`): valid, mutated and junk
  mappings and YAML texts (wrong types, missing fields, unknown keys, out-of-range numbers, bytes
  that are not YAML or not UTF-8) either load or raise `ConfigError` naming a field (and the file,
  for files); a valid deployment survives a dump and a reload unchanged;
- the tenants and ``http:`` sections of a node config: a table / settings, or a `ConfigError`
  naming the field;
- request validation: any `InferenceRequest` / `SamplingParams` values (NaN, inf, huge integers,
  empty and huge strings, wrong types) pass `.validate()` only when they are usable, and are
  otherwise refused with an `InvalidRequestError` naming the field;
- the OpenAI wire parser: any bytes and any JSON-ish body give a request or an `InferenceError`
  naming the parameter (one the body has, or one it lacks and needs).

Nothing else may come out: no TypeError, no OSError, no RecursionError. The examples are bounded
and derandomized (the same ones on every run, CI included); ``ATOMR_PROPERTY_SCALE=20`` runs
twenty times as many, randomly, to look further.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from atomr.config import deployment_from_dict, load_deployments
from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, InferenceError, InvalidRequestError
from atomr.core.tenants import TenantTable, hash_key, tenants_from_config
from atomr.core.types import ROLES, InferenceRequest, Message, SamplingParams
from atomr.http.openai_requests import parse_chat, parse_completion
from atomr.http.settings import HttpSettings, http_settings_from_config

SCALE = max(1, int(os.environ.get("ATOMR_PROPERTY_SCALE", "1")))


def bounded(n: int) -> settings:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        database=None,  # no example database: every run is the same run
        derandomize=SCALE == 1,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="atomr-props-") as d:
        yield Path(d)


# ---- building blocks ---------------------------------------------------------------------------

ODD_NUMBERS = st.sampled_from(
    [0, -1, 1, -(2**70), 2**70, 2**63, 10**30, 1e308, -1e-9, 0.5, 1.5, math.nan, math.inf, -math.inf, True, False]
)
ODD_STRINGS = st.sampled_from(["", " ", "\x00", "x" * 10_000, "é" * 300, "*", "nan", "1e999", "-1", "true", "~x/y"])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=2**62, max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    ODD_NUMBERS,
    ODD_STRINGS,
)
JUNK = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=6,
)
NAMES = st.from_regex(r"\A[a-zA-Z0-9][a-zA-Z0-9._-]{0,15}\Z")


def mostly(valid: st.SearchStrategy[Any], *bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Valid three times in four, so that one bad value among good ones is common (the deep paths run)."""
    return st.one_of(valid, valid, valid, st.one_of(*bad) if bad else JUNK)


def finite(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)


def positive(hi: float) -> st.SearchStrategy[float]:
    return st.floats(min_value=1e-6, max_value=hi, allow_nan=False, allow_infinity=False)


# Every section with its fields and valid values (the loader's ranges), to build valid deployments
# and to know which keys to break.
SECTIONS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "limits": {
        "max_inflight_per_replica": st.integers(1, 4096),
        "max_queue": st.integers(0, 100_000),
        "chunk_max_tokens": st.integers(1, 4096),
        "chunk_max_delay_ms": finite(0, 10_000),
        "request_timeout_s": positive(86_400),
    },
    "supervision": {
        "restart": st.booleans(),
        "backoff_initial_s": finite(0, 600),
        "backoff_max_s": finite(0, 3600),
        "max_restarts": st.integers(0, 10_000),
        "window_s": positive(86_400),
    },
    "rate_limits": {
        "rpm": st.none() | st.integers(1, 10**9),
        "tpm": st.none() | st.integers(1, 10**9),
        "key": st.none() | st.text(max_size=20),
        "window_s": positive(3600),
    },
    "rollout": {
        "canary_share": finite(0, 1),
        "canary_s": finite(0, 3600),
        "ready_timeout_s": positive(86_400),
    },
    "cost": {"prompt": finite(0, 1_000_000), "completion": finite(0, 1_000_000)},
    "placement": {
        "role": st.none() | st.sampled_from(["head", "gpu", "cpu"]),
        "require": st.dictionaries(
            st.text(max_size=8),
            st.none() | st.booleans() | st.integers() | st.text(max_size=8) | finite(-1e9, 1e9),
            max_size=3,
        ),
    },
}
TOP: dict[str, st.SearchStrategy[Any]] = {
    "version": st.text(min_size=1, max_size=12),
    "replicas": st.integers(1, 256),
    "gpus_per_replica": st.integers(0, 64),
    "quality": st.integers(0, 1000),
    "fallbacks": st.lists(NAMES, max_size=3),
    "engine": st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8) | st.booleans(), max_size=3),
}
MODELS = st.sampled_from(
    ["openai/gpt-4o-mini", "anthropic/claude-x", "gemini/flash", "litellm/x/y", "builtin:tiny-llama"]
)


@st.composite
def valid_deployments(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(NAMES)
    out: dict[str, Any] = {"name": name, "model": draw(MODELS)}
    if draw(st.booleans()):
        out["aliases"] = draw(st.lists(NAMES.filter(lambda a: a != name), max_size=3, unique=True))
    for key, strategy in TOP.items():
        if draw(st.booleans()):
            out[key] = draw(strategy)
    for section, fields in SECTIONS.items():
        if draw(st.booleans()):
            chosen = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
            out[section] = {f: draw(fields[f]) for f in chosen}
    return out


BAD_VALUES = st.one_of(JUNK, ODD_NUMBERS, ODD_STRINGS)
KNOWN_KEYS = sorted({*Deployment.model_fields, "aliases"})


@st.composite
def mutated_deployments(draw: st.DrawFn) -> Any:
    """A valid deployment with one to three things broken (or, sometimes, not a mapping at all)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)
    d = draw(valid_deployments())
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["set", "delete", "unknown", "nested", "nested-unknown"]))
        if how == "set":
            d[draw(st.sampled_from(KNOWN_KEYS))] = draw(BAD_VALUES)
        elif how == "delete" and d:
            d.pop(draw(st.sampled_from(sorted(d))))
        elif how == "unknown":
            d[draw(st.text(min_size=1, max_size=10))] = draw(JUNK)
        else:
            section = draw(st.sampled_from(sorted(SECTIONS)))
            sub = d.get(section)
            sub = dict(sub) if isinstance(sub, dict) else {}
            key = draw(st.sampled_from(sorted(SECTIONS[section]))) if how == "nested" else draw(st.text(max_size=10))
            sub[key] = draw(BAD_VALUES)
            d[section] = sub
    return d


def names_a_field(exc: InferenceError) -> str:
    assert isinstance(exc.field, str) and exc.field, f"{type(exc).__name__} without a field: {exc}"
    assert exc.message
    return exc.field


# ---- the deployment loader ---------------------------------------------------------------------


@bounded(60)
@given(valid_deployments())
def test_a_valid_deployment_loads_and_round_trips(raw: dict[str, Any]) -> None:
    dep = deployment_from_dict(raw)
    assert dep.name == raw["name"] and dep.model == raw["model"]
    again = deployment_from_dict(dep.model_dump(mode="json", exclude={"model_path"}))
    assert again == dep


@bounded(20)
@given(st.lists(valid_deployments(), min_size=1, max_size=3))
def test_a_valid_deployments_file_round_trips_through_yaml(folder: Path, raws: list[dict[str, Any]]) -> None:
    names = [n for r in raws for n in (r["name"], *r.get("aliases", ()))]
    deps = [deployment_from_dict(r) for r in raws]
    path = folder / "valid.yaml"
    dumped = [d.model_dump(mode="json", exclude={"model_path"}) for d in deps]
    path.write_text(yaml.safe_dump({"deployments": dumped}))  # allow_unicode: PyYAML writes \x85 raw, reads a space
    if len(set(names)) < len(names):  # a name used twice is an error naming the file and the field
        with pytest.raises(ConfigError) as err:
            load_deployments(path)
        assert err.value.field == "name" and str(path) in err.value.message
    else:
        assert load_deployments(path) == deps


@bounded(120)
@given(mutated_deployments())
@example({"name": "a", "model": "x", "runtime": [1]})  # unhashable runtime: was a TypeError
@example({"name": "a", "model": "a" * 300})  # a name too long for a path: was an OSError
@example({"name": "a", "model": "~nouser-atomr/x"})  # no such user: was a RuntimeError
@example({"name": "a", "model": "openai/x", "rollout": {"ready_timeout_s": math.inf}})  # a timer that overflows
@example(5)
def test_a_broken_deployment_is_a_config_error_naming_the_field(raw: Any) -> None:
    try:
        dep = deployment_from_dict(raw, where="cfg.yaml: deployments[0]")
    except ConfigError as exc:
        names_a_field(exc)
        assert exc.message.startswith("cfg.yaml: deployments[0]")
        return
    assert isinstance(dep, Deployment) and dep.runtime and dep.replicas >= 1
    assert all(math.isfinite(v) for v in (dep.rollout.ready_timeout_s, dep.limits.chunk_max_delay_ms))


@st.composite
def yaml_texts(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["dump", "dump", "mutated-text", "text", "bytes", "fragment"]))
    if kind == "dump":
        doc: Any = {"deployments": draw(st.lists(mutated_deployments(), max_size=3))}
        if draw(st.booleans()):
            doc = draw(st.sampled_from([doc["deployments"][:1] or None, {"deployments": draw(JUNK)}, draw(JUNK)]))
        elif draw(st.booleans()) and doc["deployments"] and isinstance(doc["deployments"][0], dict):
            doc = doc["deployments"][0]  # one deployment, no list
        return yaml.safe_dump(doc, allow_unicode=draw(st.booleans())).encode()
    if kind == "mutated-text":
        text = yaml.safe_dump({"deployments": [draw(valid_deployments())]})
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(text)))
            text = (
                text[:at]
                + draw(st.sampled_from([":", "-", "[", "{", "&a", "*a", "!!", "\t", "\n  ", "'", '"', "#", "%"]))
                + text[at + 1 :]
            )
        return text.encode()
    if kind == "text":
        return draw(st.text(max_size=200)).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    return draw(
        st.sampled_from(
            [
                b"deployments:\n  - {name: a, model: openai/x, version: 2001-13-01}",  # was a ValueError
                b"\xff\xfe\x00deployments: []",  # not UTF-8: was a UnicodeDecodeError
                b"[" * 5000,  # nested too deeply: was a RecursionError
                b"{" * 100 + b"}" * 100,
                b"!!python/object/apply:os.system ['true']",
                b"deployments: !!binary AAAA",
                b"? [a]\n: b",
                b"a: &x [*x]",
                b"--- a\n--- b",
                b"%YAML 9.9\n--- a",
                b"deployments:\n  - name: a\n    model: openai/x\n  - name: a\n    model: openai/y",
                b"model: builtin:no-such-model\nname: a",
                b"",
            ]
        )
    )


@bounded(80)
@given(yaml_texts())
def test_any_yaml_file_loads_or_is_a_config_error_naming_file_and_field(folder: Path, text: bytes) -> None:
    path = folder / "deployments.yaml"
    path.write_bytes(text)
    try:
        deps = load_deployments(path)
    except ConfigError as exc:
        names_a_field(exc)
        assert str(path) in exc.message, exc.message
        return
    assert all(isinstance(d, Deployment) for d in deps)
    names = [n for d in deps for n in d.names]
    assert len(names) == len(set(names))


def test_a_missing_file_names_the_file(folder: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_deployments(folder / "nope.yaml")
    assert err.value.field == "file" and "nope.yaml" in err.value.message


# ---- tenants and http settings -----------------------------------------------------------------


@st.composite
def tenant_entries(draw: st.DrawFn) -> Any:
    entry: dict[str, Any] = {
        "name": draw(st.text(min_size=1, max_size=64)),
        "key_sha256": hash_key(draw(st.text(min_size=1, max_size=20))),
    }
    if draw(st.booleans()):
        entry["models"] = draw(st.lists(NAMES | st.just("*"), max_size=3))
    if draw(st.booleans()):
        entry["priority"] = draw(st.integers(0, 9))
    if draw(st.booleans()):
        entry["max_concurrency"] = draw(st.integers(1, 10_000))
    if draw(st.booleans()):
        entry["weight"] = draw(positive(1000))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from([*entry, "models", "priority", "max_concurrency", "weight", "extra"]))
        entry[key] = draw(BAD_VALUES | st.sampled_from(["A" * 64, "g" * 64, " " + "a" * 64 + " ", "0" * 63]))
    return entry


@bounded(100)
@given(st.one_of(JUNK, st.lists(tenant_entries(), max_size=3), st.lists(JUNK, max_size=2)))
def test_any_tenants_section_is_a_table_or_a_config_error(raw: Any) -> None:
    try:
        table = tenants_from_config(raw, where="node.yaml")
    except ConfigError as exc:
        assert names_a_field(exc).startswith("tenants") and exc.message.startswith("node.yaml: ")
        return
    assert isinstance(table, TenantTable)
    assert len({t.name for t in table.tenants}) == len(table.tenants)
    assert all(re.fullmatch(r"[0-9a-f]{64}", t.key_sha256) for t in table.tenants)


@bounded(50)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=10), st.text(min_size=1, max_size=30)), max_size=4))
def test_each_tenant_is_found_by_its_own_key(pairs: list[tuple[str, str]]) -> None:
    names = [n for n, _ in pairs]
    keys = [k for _, k in pairs]
    raw = [{"name": n, "key_sha256": hash_key(k)} for n, k in pairs]
    if len(set(names)) < len(names):
        with pytest.raises(ConfigError):
            tenants_from_config(raw)
        return
    table = tenants_from_config(raw)
    for name, key in pairs:
        if keys.count(key) == 1:
            tenant = table.authenticate(key)
            assert tenant is not None and tenant.name == name


HTTP_FIELDS = {
    "bind": st.text(max_size=20),
    "port": st.integers(0, 65535),
    "max_body_bytes": st.integers(1024, 2**40),
    "default_max_tokens": st.integers(1, 10**6),
    "request_timeout_s": positive(86_400),
}


@st.composite
def http_sections(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 4)) == 0:
        return draw(JUNK)
    out = {k: draw(v) for k, v in HTTP_FIELDS.items() if draw(st.booleans())}
    for _ in range(draw(st.integers(0, 2))):
        out[draw(st.sampled_from([*HTTP_FIELDS, "tls", ""]))] = draw(BAD_VALUES)
    return out


@bounded(150)
@given(http_sections())
@example({"request_timeout_s": math.inf})  # a deadline of inf: refused
def test_any_http_section_is_settings_or_a_config_error(raw: Any) -> None:
    try:
        out = http_settings_from_config(raw, where="node.yaml")
    except ConfigError as exc:
        assert names_a_field(exc).startswith("http") and exc.message.startswith("node.yaml: ")
        return
    assert out is None if raw is None else isinstance(out, HttpSettings)
    if out is not None:
        assert 0 <= out.port <= 65535 and math.isfinite(out.request_timeout_s) and out.request_timeout_s > 0


# ---- request validation ------------------------------------------------------------------------

NUMBERS = st.one_of(st.integers(), st.floats(allow_nan=True, allow_infinity=True), ODD_NUMBERS)
SAMPLING = st.builds(
    SamplingParams,
    max_tokens=mostly(st.integers(1, 4096), NUMBERS, JUNK),
    temperature=mostly(finite(0, 2), NUMBERS, JUNK),
    top_p=mostly(finite(1e-9, 1), NUMBERS, JUNK),
    top_k=mostly(st.integers(0, 100), NUMBERS, JUNK),
    seed=mostly(st.none() | st.integers(0, 2**64), NUMBERS, JUNK),
    stop=mostly(st.lists(st.text(max_size=5), max_size=10).map(tuple), ODD_STRINGS, JUNK),
    logprobs=mostly(st.booleans()),
)
MESSAGES = st.builds(
    Message, role=mostly(st.sampled_from(ROLES)), content=mostly(st.text(max_size=20), ODD_STRINGS, JUNK)
)
REQUESTS = st.builds(
    InferenceRequest,
    model=mostly(st.sampled_from(["tiny", "gpt"]), ODD_STRINGS, JUNK),
    messages=mostly(st.none() | st.lists(MESSAGES, max_size=3).map(tuple), st.lists(MESSAGES | JUNK, max_size=3), JUNK),
    prompt=mostly(st.none() | st.text(max_size=20), ODD_STRINGS, JUNK),
    params=mostly(SAMPLING),
)


def usable(p: SamplingParams) -> None:
    """What every runner may rely on once a request has validated."""
    assert p.max_tokens is None or (type(p.max_tokens) is int and p.max_tokens >= 1)
    assert type(p.max_new_tokens) is int and p.max_new_tokens >= 1
    assert p.temperature is None or (type(p.temperature) in (int, float) and 0 <= p.temperature <= 2)
    assert p.top_p is None or (type(p.top_p) in (int, float) and 0 < p.top_p <= 1)
    assert p.top_k is None or (type(p.top_k) is int and p.top_k >= 0)
    temperature, top_p, top_k = p.sampling
    assert 0 <= temperature <= 2 and 0 < top_p <= 1 and top_k >= 0
    assert p.seed is None or (type(p.seed) is int and 0 <= p.seed < 2**63)
    assert isinstance(p.stop, tuple | list) and len(p.stop) <= 8
    assert all(isinstance(s, str) and s for s in p.stop)
    assert type(p.logprobs) is bool


@bounded(150)
@given(REQUESTS)
@example(InferenceRequest("m", messages=5))  # type: ignore[arg-type]  # was a TypeError (len of an int)
@example(InferenceRequest("m", prompt="p", params=None))  # type: ignore[arg-type]  # was an AttributeError
@example(InferenceRequest("m", prompt="p", params=SamplingParams(stop=7)))  # type: ignore[arg-type]
@example(InferenceRequest("m", prompt="p", params=SamplingParams(stop={"a": 1})))  # type: ignore[arg-type]
@example(InferenceRequest("m", prompt="p", params=SamplingParams(top_k=True)))
@example(InferenceRequest("m", prompt="p", params=SamplingParams(seed=2**64)))
def test_validate_passes_only_usable_requests_and_names_the_field_otherwise(req: InferenceRequest) -> None:
    try:
        req.validate()
    except InvalidRequestError as exc:
        names_a_field(exc)
        return
    assert isinstance(req.model, str) and req.model
    assert (req.messages is None) != (req.prompt is None)
    if req.messages is not None:
        assert len(req.messages) > 0
        assert all(isinstance(m, Message) and m.role in ROLES for m in req.messages)
        assert all(m.content is None or isinstance(m.content, str | tuple) for m in req.messages)
    else:
        assert isinstance(req.prompt, str)
    usable(req.params)


@bounded(100)
@given(SAMPLING)
def test_sampling_params_validate_or_name_the_field(p: SamplingParams) -> None:
    try:
        p.validate()
    except InvalidRequestError as exc:
        names_a_field(exc)
        return
    usable(p)


# ---- the OpenAI wire parser --------------------------------------------------------------------

CONTENT = mostly(
    st.text(max_size=30)
    | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=10)}), max_size=2),
    st.lists(st.fixed_dictionaries({"type": JUNK | st.just("image_url"), "text": JUNK}), min_size=1, max_size=2),
    JUNK,
)
WIRE_MESSAGE = mostly(
    st.fixed_dictionaries(
        {
            "role": mostly(st.sampled_from(["system", "developer", "user", "assistant"]), st.just("tool"), JUNK),
            "content": CONTENT,
        },
        optional={"name": st.text(max_size=5)},
    )
)
COMMON: dict[str, st.SearchStrategy[Any]] = {
    "max_tokens": mostly(st.integers(1, 10**6), st.integers(-2, 0), NUMBERS, JUNK),
    "temperature": mostly(finite(0, 2), NUMBERS, JUNK),
    "top_p": mostly(finite(1e-9, 1), NUMBERS, JUNK),
    "top_k": mostly(st.integers(0, 100), NUMBERS, JUNK),
    "seed": mostly(st.integers(0, 2**62), st.integers(-1, 2**64), NUMBERS, JUNK),
    "stop": mostly(st.none() | st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=10)),
    "stream": mostly(st.booleans()),
    "stream_options": mostly(st.none() | st.fixed_dictionaries({"include_usage": mostly(st.booleans())})),
    "user": mostly(st.text(max_size=10)),
    "n": mostly(st.sampled_from([1, None]), st.sampled_from([2, [], {}, 0]), JUNK),
    "tools": mostly(st.sampled_from([None, []]), st.just([{"type": "function"}]), JUNK),
    "logit_bias": mostly(st.sampled_from([None, {}]), st.just({"1": 5}), JUNK),
    "presence_penalty": mostly(st.sampled_from([0, 0.0, None]), st.just(1), JUNK),
    "frequency_penalty": mostly(st.just(0), st.just(-1.5), JUNK),
    "echo": mostly(st.just(False), st.just(True), JUNK),
    "best_of": mostly(st.just(1), st.just(3), JUNK),
    "metadata": JUNK,
}
CHAT_BODIES = st.fixed_dictionaries(
    {
        "model": mostly(st.sampled_from(["tiny", "gpt"]), ODD_STRINGS, JUNK),
        "messages": mostly(st.lists(WIRE_MESSAGE, min_size=1, max_size=3), st.just([]), JUNK),
    },
    optional={
        **COMMON,
        "max_completion_tokens": mostly(st.integers(1, 10**6), st.integers(-1, 0), NUMBERS, JUNK),
        "logprobs": mostly(st.booleans()),
        "top_logprobs": mostly(st.integers(0, 20), st.integers(-1, 30), JUNK),
        "response_format": mostly(st.sampled_from([{"type": "text"}, {}]), st.just({"type": "json_object"}), JUNK),
    },
)
COMPLETION_BODIES = st.fixed_dictionaries(
    {
        "model": mostly(st.sampled_from(["tiny", "gpt"]), ODD_STRINGS, JUNK),
        "prompt": mostly(
            st.text(max_size=30) | st.lists(st.text(max_size=10), min_size=1, max_size=1),
            st.lists(st.text(max_size=10), max_size=3),
            JUNK,
        ),
    },
    optional={
        **COMMON,
        "logprobs": mostly(st.none() | st.integers(0, 5), st.integers(-1, 7), JUNK),
        "suffix": mostly(st.none(), st.text(max_size=4)),
    },
)


@st.composite
def dropping(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    body = draw(bodies)
    if body and draw(st.integers(0, 4)) == 0:
        body.pop(draw(st.sampled_from(sorted(body))))
    return body


def encode(body: Any) -> bytes:
    return json.dumps(body, allow_nan=True).encode()  # NaN and Infinity: JSON's extension, sent by some clients


@st.composite
def wire_bytes(draw: st.DrawFn, bodies: st.SearchStrategy[dict[str, Any]]) -> bytes:
    kind = draw(st.sampled_from(["body", "body", "body", "junk", "bytes", "mutated"]))
    if kind == "body":
        return encode(draw(dropping(bodies)))
    if kind == "junk":
        return encode(draw(JUNK))
    if kind == "bytes":
        return draw(st.binary(max_size=100))
    raw = bytearray(encode(draw(bodies)))
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        raw[at : at + 1] = draw(st.binary(min_size=0, max_size=2))
    return bytes(raw)


def check_wire(parse: Callable[[bytes, int], tuple[Any, InferenceRequest]], raw: bytes, required: set[str]) -> None:
    try:
        body, req = parse(raw, 128)
        req.validate()  # what the HTTP front does next
    except InferenceError as exc:
        field = names_a_field(exc)
        assert 400 <= exc.http_status < 500, exc
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            return
        if isinstance(obj, dict) and field == "body":  # an object: only a JSON detail Python lets by
            assert "not valid JSON" in exc.message, exc.message
        elif isinstance(obj, dict):  # the parameter named is one the body has, or one it lacks and needs
            root = re.split(r"[.\[]", field)[0]
            assert root in obj or root in required or root in ("max_tokens",), (field, exc.message)
        return
    assert req.model == body.model and isinstance(req.model, str) and req.model
    assert req.stream is body.stream
    usable(req.params)


@bounded(150)
@given(wire_bytes(CHAT_BODIES))
@example(b'{"model": "t", "messages": [5]}')  # named 'body', not 'messages[0]'
@example(b'{"model": "t", "messages": [{"role": "user", "content": "a"}], "stream_options": 5}')
@example(b'{"model": "t", "messages": [{"role": "user", "content": "a"}], "seed": 100000000000000000000000}')
@example(b"\xff\xfe")
@example(b"[" * 100_000)
def test_chat_bodies_parse_or_name_the_parameter(raw: bytes) -> None:
    check_wire(parse_chat, raw, {"model", "messages"})


@bounded(100)
@given(wire_bytes(COMPLETION_BODIES))
@example(b'{"model": "t", "prompt": ["a", "b"]}')
@example(b'{"model": "t", "prompt": "a", "logprobs": 9}')
def test_completion_bodies_parse_or_name_the_parameter(raw: bytes) -> None:
    check_wire(parse_completion, raw, {"model", "prompt"})


@bounded(60)
@given(
    st.fixed_dictionaries(
        {
            "model": st.text(min_size=1, max_size=10),
            "messages": st.lists(
                st.fixed_dictionaries(
                    {
                        "role": st.sampled_from(["system", "developer", "user", "assistant"]),
                        "content": st.text(max_size=20),
                    }
                ),
                min_size=1,
                max_size=3,
            ),
        },
        optional={
            "max_tokens": st.integers(1, 4096),
            "temperature": finite(0, 2),
            "stop": st.lists(st.text(min_size=1, max_size=4), max_size=4),
        },
    )
)
def test_a_valid_chat_body_becomes_the_same_request(body: dict[str, Any]) -> None:
    _, req = parse_chat(encode(body), 128)
    req.validate()
    assert req.model == body["model"] and req.messages is not None
    assert [m.content for m in req.messages] == [m["content"] for m in body["messages"]]
    assert [m.role for m in req.messages] == [
        "system" if m["role"] == "developer" else m["role"] for m in body["messages"]
    ]
    assert req.params.max_tokens == body.get("max_tokens")  # unset stays unset
    assert req.params.max_new_tokens == body.get("max_tokens", 128)
    assert req.wire == body and not req.extra
    assert tuple(req.params.stop) == tuple(body.get("stop", ()))
