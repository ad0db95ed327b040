"""The runtime catalog: one table, every runner reachable from it, options checked in one place."""

from __future__ import annotations

import configparser

import pytest
from atomr.runners.catalog import BY_NAME, RUNTIMES, install_hint, serves_in_gateway, spec_of
from atomr.runners.local.ort.spec import OrtOptions
from atomr.runners.spec import parse_engine_options

from atomr.config import deployment_from_dict
from atomr.core.errors import ConfigError
from atomr.core.runner import ModelRunner
from tests.conftest import REPO


def test_each_runtime_has_one_spec_and_its_runner_class_is_reachable() -> None:
    assert len(BY_NAME) == len(RUNTIMES)
    prefixes = [p for spec in RUNTIMES for p in spec.prefixes]
    assert len(prefixes) == len(set(prefixes))
    for spec in RUNTIMES:
        cls = spec.runner_class()  # imports the runner module, never its engine
        assert issubclass(cls, ModelRunner), spec.name
        assert f"{cls.__module__}:{cls.__name__}" == spec.runner
        assert spec.options.model_config.get("extra") in ("forbid", "allow")


def test_every_spec_names_an_extra_that_setup_cfg_defines() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    extras = set(cfg["options.extras_require"])
    for spec in RUNTIMES:
        assert spec.extra in extras, spec.name
        assert f"atomr[{spec.extra}]" in install_hint(spec.name)


def test_an_unknown_runtime_is_refused_naming_the_field_and_the_known_ones() -> None:
    with pytest.raises(ConfigError) as info:
        spec_of("nope")
    assert info.value.field == "runtime" and "ort" in info.value.message
    with pytest.raises(ConfigError) as info:
        deployment_from_dict({"name": "x", "model": "m", "runtime": "nope"}, where="d")
    assert info.value.field == "runtime" and info.value.message.startswith("d.runtime: unknown runtime 'nope'")


def test_engine_options_name_the_bad_or_unknown_option() -> None:
    assert parse_engine_options("ort", {}, OrtOptions) == OrtOptions()
    for engine, field in (
        ({"scheduler": "fast"}, "engine.scheduler"),
        ({"max_batch_size": True}, "engine.max_batch_size"),
        ({"max_wait_ms": "5"}, "engine.max_wait_ms"),
        ({"speed": 1}, "engine.speed"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_engine_options("ort", engine, OrtOptions)
        assert info.value.field == field, engine
    with pytest.raises(
        ConfigError, match=r"engine\.speed is not an engine option of the ort runtime; known: intra_op_threads"
    ):
        parse_engine_options("ort", {"speed": 1}, OrtOptions)


def test_serving_in_the_gateway_defaults_to_remote_runtimes_without_placement() -> None:
    remote = deployment_from_dict({"name": "g", "model": "openai/gpt-x"})
    assert serves_in_gateway(remote)
    assert not serves_in_gateway(remote.model_copy(update={"serve_in_gateway": False}))
    placed = deployment_from_dict({"name": "g", "model": "openai/gpt-x", "placement": {"role": "gpu"}})
    assert not serves_in_gateway(placed)
    assert not serves_in_gateway(deployment_from_dict({"name": "t", "model": "builtin:tiny-llama"}))
    with pytest.raises(ConfigError) as info:
        deployment_from_dict({"name": "t", "model": "builtin:tiny-llama", "serve_in_gateway": True})
    assert info.value.field == "serve_in_gateway"
