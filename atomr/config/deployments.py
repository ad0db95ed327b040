"""Deployments from mappings and YAML files: the runtime inferred, local model folders resolved.

`deployment_from_dict` is the one way user input becomes a `Deployment`: the node's config file,
`Client.deploy` and the CLI all go through it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from atomr.config.files import load_yaml
from atomr.core.deployment import Deployment, shared_limit_clash
from atomr.core.errors import ConfigError
from atomr.runners.catalog import BY_NAME, check_model_files, infer_runtime, is_local, resolve_model_path


def deployment_from_dict(
    raw: Mapping[str, Any], *, base_dir: Path | None = None, where: str = "deployment"
) -> Deployment:
    """Validate one deployment mapping; errors name `where`, the field and the problem."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping of fields, got {type(raw).__name__}", field="deployment")
    data = dict(raw)
    model = data.get("model")
    runtime = data.get("runtime")
    runtime = runtime if isinstance(runtime, str) and runtime else None  # anything else: pydantic names it below
    try:
        if isinstance(model, str) and "model_path" not in data:
            data["model_path"] = resolve_model_path(model, runtime, base_dir or Path.cwd())
    except FileNotFoundError as exc:
        raise ConfigError(f"{where}.model: {exc}", field="model") from None
    except (OSError, RuntimeError, ValueError) as exc:  # a path too long, a NUL byte, '~user' with no such user
        problem = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"{where}.model: not a usable path: {problem}", field="model") from None
    try:
        _resolve_runtime(data, runtime)
        dep = Deployment.model_validate(data)
    except ValidationError as exc:
        raise _config_error(where, exc) from None
    except ValueError as exc:
        field, sep, message = str(exc).partition(": ")
        if sep and field in Deployment.model_fields:
            raise ConfigError(f"{where}.{field}: {message}", field=field) from None
        raise ConfigError(f"{where}: {exc}", field="deployment") from None
    try:
        check_model_files(dep)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field}: {exc.message}", field=exc.field) from None
    except OSError as exc:
        raise ConfigError(f"{where}.model: cannot read the model files: {exc.strerror or exc}", field="model") from None
    return dep


def _resolve_runtime(data: dict[str, Any], runtime: str | None) -> None:
    """Infer a missing runtime, check that it is known and that `serve_in_gateway` suits it
    (ValueError "field: problem" otherwise)."""
    model, path = data.get("model"), data.get("model_path")
    if runtime is None and "runtime" in data and data["runtime"] not in (None, ""):
        return  # not a string: pydantic names the field
    if runtime is None:
        if not isinstance(model, str) or not model.strip():
            return  # pydantic names the model field
        runtime = data["runtime"] = infer_runtime(model, path if isinstance(path, Path) else None)
    if runtime not in BY_NAME:
        raise ValueError(f"runtime: unknown runtime {runtime!r}; known: {', '.join(sorted(BY_NAME))}")
    if data.get("serve_in_gateway") is True and is_local(runtime):
        raise ValueError(f"serve_in_gateway: only remote-API runtimes can be served in the gateway, not {runtime!r}")


def _config_error(where: str, exc: ValidationError) -> ConfigError:
    problems = []
    first_field = None
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if not loc and msg.partition(":")[0] in Deployment.model_fields:
            loc, _, msg = msg.partition(": ")
        first_field = first_field or loc or None
        problems.append(f"{where}.{loc}: {msg}" if loc else f"{where}: {msg}")
    return ConfigError("; ".join(problems), field=first_field or "deployment")


def load_deployments(path: str | Path) -> list[Deployment]:
    """Deployments of a YAML file: a `deployments:` list, or one deployment mapping."""
    p = Path(path)
    raw = load_yaml(p)
    if isinstance(raw, Mapping) and "deployments" in raw:
        items = raw["deployments"] or []
        if not isinstance(items, list):
            raise ConfigError(f"{p}: deployments: must be a list", field="deployments")
        where = [f"{p}: deployments[{i}]" for i in range(len(items))]
    elif isinstance(raw, Mapping) and "model" in raw:
        items, where = [raw], [f"{p}: deployment"]
    else:
        raise ConfigError(f"{p}: expected a 'deployments:' list or one deployment with 'model:'", field="deployments")
    deps = [deployment_from_dict(item, base_dir=p.parent, where=w) for item, w in zip(items, where, strict=True)]
    seen: set[str] = set()
    for dep, w in zip(deps, where, strict=True):
        for n in dep.names:
            if n in seen:
                raise ConfigError(f"{w}.name: {n!r} is used twice", field="name")
            seen.add(n)
    for i, (dep, w) in enumerate(zip(deps, where, strict=True)):
        clash = shared_limit_clash(dep, deps[:i])
        if clash is not None:
            raise ConfigError(f"{w}.{clash.message}", field=clash.field)
    return deps
