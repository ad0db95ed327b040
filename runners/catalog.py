"""The table of runtimes, and what atomr derives from it.

Adding a runtime is one new package (`spec.py` and its runner) and one line in `RUNTIMES`. The
order of `RUNTIMES` is the order in which model folders are recognised (an ORT export before a
TensorRT engine before a Hugging Face checkpoint).
"""

from __future__ import annotations

from pathlib import Path

from atomr.runners.local.mistralrs.spec import SPEC as MISTRALRS
from atomr.runners.local.ort.spec import EMBEDDING_SPEC as ORT_EMBED
from atomr.runners.local.ort.spec import SPEC as ORT
from atomr.runners.local.tensorrt.spec import SPEC as TENSORRT
from atomr.runners.local.vllm.spec import SPEC as VLLM
from atomr.runners.remote.anthropic.spec import SPEC as ANTHROPIC
from atomr.runners.remote.gemini.spec import SPEC as GEMINI
from atomr.runners.remote.litellm.spec import SPEC as LITELLM
from atomr.runners.remote.openai.spec import SPEC as OPENAI
from atomr.runners.spec import RuntimeSpec

from atomr.core.deployment import BUILTIN_PREFIX, Deployment, Placement
from atomr.core.errors import ConfigError
from atomr.core.runner import ModelRunner

RUNTIMES: tuple[RuntimeSpec, ...] = (ORT, ORT_EMBED, TENSORRT, VLLM, MISTRALRS, OPENAI, ANTHROPIC, GEMINI, LITELLM)

BY_NAME: dict[str, RuntimeSpec] = {spec.name: spec for spec in RUNTIMES}
BY_PREFIX: dict[str, RuntimeSpec] = {prefix: spec for spec in RUNTIMES for prefix in spec.prefixes}


def spec_of(runtime: str) -> RuntimeSpec:
    """The spec of `runtime`; a ConfigError (field `runtime`) lists the known ones."""
    spec = BY_NAME.get(runtime)
    if spec is None:
        raise ConfigError(
            f"runtime {runtime!r} has no runner in this version; available: {', '.join(sorted(BY_NAME))}",
            field="runtime",
        )
    return spec


def runner_class(runtime: str) -> type[ModelRunner]:
    """Import and return the runner class for `runtime` (imports its engine)."""
    return spec_of(runtime).runner_class()


def installed_runtimes() -> list[str]:
    """Runtimes whose package is installed in this Python, found without importing any engine."""
    return sorted(spec.name for spec in RUNTIMES if spec.installed())


def install_hint(runtime: str) -> str:
    """How to install what `runtime` needs, for error messages."""
    spec = BY_NAME.get(runtime)
    return spec.install_hint() if spec else f"the {runtime} runtime is not known to this version of atomr"


def is_local(runtime: str) -> bool:
    """Whether `runtime` runs an engine on a node (rather than calling a remote API)."""
    spec = BY_NAME.get(runtime)
    return spec is not None and spec.local


def serves_in_gateway(dep: Deployment) -> bool:
    """Whether gateways serving HTTP also run `dep`'s runner themselves (see `atomr.http.inline`).

    Default: on for remote runtimes without placement constraints.
    """
    if dep.serve_in_gateway is not None:
        return dep.serve_in_gateway
    return not is_local(dep.runtime) and dep.placement == Placement()


def _provider(model: str) -> RuntimeSpec | None:
    prefix, sep, _ = model.partition("/")
    return BY_PREFIX.get(prefix) if sep else None


def infer_runtime(model: str, path: Path | None = None) -> str:
    """Runtime from a model reference: provider prefix, built-in model, or folder contents.

    A built-in model is served by the built-in runtime that recognises its folder (`path`), else
    by the first built-in runtime (`ort`, whose built-in models also hold an `hf/` checkpoint for
    the other local engines). Raises ValueError (the config loader names the field) when nothing
    matches.
    """
    if model.startswith(BUILTIN_PREFIX):
        builtins = [spec for spec in RUNTIMES if spec.builtin]
        own = [s for s in builtins if path is not None and s.recognise is not None and s.recognise(path)]
        return (own or builtins)[0].name
    provider = _provider(model)
    if provider is not None and (path is None or not path.exists()):
        return provider.name
    folder = path if path is not None else Path(model)
    try:
        for spec in RUNTIMES:
            if spec.recognise is not None and spec.recognise(folder):
                return spec.name
    except (OSError, ValueError) as exc:  # a name too long for a path, a NUL byte, no permission
        raise ValueError(f"model: cannot look into {model!r}: {getattr(exc, 'strerror', None) or exc}") from None
    raise ValueError(
        f"model: cannot infer the runtime of {model!r}; name one with 'runtime:' "
        f"or use a provider prefix ({', '.join(sorted(BY_PREFIX))}/...)"
    )


def resolve_model_path(model: str, runtime: str | None, base_dir: Path) -> Path | None:
    """Folder of a local model reference, relative paths against the YAML file's folder."""
    if runtime is not None and not is_local(runtime):
        return None
    if model.startswith(BUILTIN_PREFIX):
        from atomr.models import builtin_model_dir

        return builtin_model_dir(model[len(BUILTIN_PREFIX) :])
    p = Path(model).expanduser()
    if not p.is_absolute():
        p = base_dir / p
    if runtime is None and _provider(model) is not None and not p.exists():
        return None
    return p


def check_model_files(dep: Deployment) -> None:
    """Fail early, naming the field, when a local model's files are missing."""
    if not is_local(dep.runtime) or dep.model_path is None:
        return
    if not dep.model_path.exists():
        raise ConfigError(f"model files not found at {dep.model_path}", field="model")
    problem = spec_of(dep.runtime).model_files(dep.model_path)
    if problem is not None:
        raise ConfigError(problem, field="model")
