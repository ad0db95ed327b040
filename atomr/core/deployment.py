"""The Deployment value object and the YAML loader that validates it.

A deployment says what to serve (model reference, runtime, version), how much of it (replicas,
GPUs per replica), where (placement) and within which limits. The runtime is inferred from the
model reference when omitted. Every validation error names the file, the field and the problem.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atomr.core.errors import ConfigError
from atomr.core.runner import KNOWN_RUNTIMES, LOCAL_RUNTIMES

BUILTIN_PREFIX = "builtin:"
PROVIDER_PREFIXES = {
    "openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "google": "gemini",
    "litellm": "litellm",
}
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$")


class Limits(BaseModel):
    """Per-deployment admission and streaming limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_inflight_per_replica: int = Field(32, ge=1, le=4096)
    max_queue: int = Field(256, ge=0, le=100_000)
    max_queue_per_tenant: int | None = Field(None, ge=0, le=100_000)  # one tenant's share of max_queue
    chunk_max_tokens: int = Field(16, ge=1, le=4096)
    chunk_max_delay_ms: float = Field(20.0, ge=0.0, le=10_000.0)
    request_timeout_s: float = Field(300.0, gt=0.0)


class Supervision(BaseModel):
    """What to do when a replica dies or fails to load (restart with backoff, then isolate)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    restart: bool = True
    backoff_initial_s: float = Field(0.1, ge=0.0, le=600.0)
    backoff_max_s: float = Field(10.0, ge=0.0, le=3600.0)
    max_restarts: int = Field(5, ge=0, le=10_000)  # restart intensity: at most this many...
    window_s: float = Field(60.0, gt=0.0)  # ...within this many seconds, else isolate

    def backoff(self, attempt: int) -> float:
        """Delay before restart number `attempt` (1-based): doubling from the initial delay."""
        return float(min(self.backoff_max_s, self.backoff_initial_s * (2 ** max(0, attempt - 1))))


class RateLimits(BaseModel):
    """Requests and tokens per minute, shared by every deployment that names the same `key`.

    A deployment may have several (a list): e.g. its provider key's limits, shared with the other
    deployments on that key, and a cap of its own; a request must fit every one of them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    key: str | None = None  # e.g. one provider API key; default: the deployment's name
    window_s: float = Field(60.0, gt=0.0)  # the "minute" (shorter windows help tests and bursts)


class Rollout(BaseModel):
    """How a new version replaces the serving one (deploying the same name with a new version)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    canary_share: float = Field(0.0, ge=0.0, le=1.0)  # share of new requests the new version gets first...
    canary_s: float = Field(0.0, ge=0.0, le=3600.0)  # ...for this long, before all traffic moves
    # the new replicas must be ready within this, else roll back (bounded: it becomes an actor timer)
    ready_timeout_s: float = Field(600.0, gt=0.0, le=86_400.0)


class Cost(BaseModel):
    """What a deployment's tokens cost, in USD per million (0 for local engines unless told)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: float = Field(0.0, ge=0.0, le=1_000_000.0)  # USD per 1M prompt tokens
    completion: float = Field(0.0, ge=0.0, le=1_000_000.0)  # USD per 1M completion tokens

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of a request that used these tokens."""
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000


class Placement(BaseModel):
    """Where replicas may run: a node role and/or required node capabilities."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    role: str | None = Field(None, pattern=r"^(head|gpu|cpu)$")
    require: dict[str, Any] = Field(default_factory=dict)


RateBudget = tuple[str, int | None, int | None, float]  # (key, rpm, tpm, window_s)


class Deployment(BaseModel):
    """One model served by one or more replicas. Immutable; a new version is a new value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    model: str
    runtime: str = ""
    version: str = "1"
    replicas: int = Field(1, ge=1, le=256)
    gpus_per_replica: int = Field(0, ge=0, le=64)
    aliases: tuple[str, ...] = ()
    # Deployments that take a request, in order, when this one fails it retryably before its first
    # chunk (rate limited, overloaded, unavailable, open circuit, crashed) or has no live replica.
    fallbacks: tuple[str, ...] = ()
    placement: Placement = Placement()
    limits: Limits = Limits()
    supervision: Supervision = Supervision()
    rate_limits: tuple[RateLimits, ...] = ()  # one mapping or a list of them in YAML
    rollout: Rollout = Rollout()
    # What routing policies and cascades weigh: price per token, and a quality tier (higher: better).
    cost: Cost = Cost()
    quality: int = Field(0, ge=0, le=1000)
    engine: dict[str, Any] = Field(default_factory=dict)
    # A remote-API deployment is also served inside the process of each gateway that serves HTTP,
    # for that front's requests (no hop to a replica process; see atomr.http.inline). Default:
    # on for remote runtimes without placement constraints.
    serve_in_gateway: bool | None = None
    # Resolved folder of a local model (None for remote APIs); set by the loader.
    model_path: Path | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        if v is None:
            return ()
        return (v,) if isinstance(v, Mapping | RateLimits) else v

    @field_validator("model")
    @classmethod
    def _check_model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model")
        return v

    @model_validator(mode="after")
    def _infer_runtime(self) -> Deployment:
        if not self.runtime:
            object.__setattr__(self, "runtime", infer_runtime(self.model, self.model_path))
        if self.runtime not in KNOWN_RUNTIMES:
            raise ValueError(f"runtime: unknown runtime {self.runtime!r}; known: {', '.join(sorted(KNOWN_RUNTIMES))}")
        keys = [key for key, *_ in self.rate_budgets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"rate_limits: each limit needs its own key (the default key is the name), got {keys}")
        if self.serve_in_gateway and self.is_local:
            raise ValueError(
                f"serve_in_gateway: only remote-API runtimes can be served in the gateway, not {self.runtime!r}"
            )
        return self

    @property
    def in_gateway(self) -> bool:
        """Whether gateways serving HTTP also run this deployment's runner themselves."""
        if self.serve_in_gateway is not None:
            return self.serve_in_gateway
        return not self.is_local and self.placement == Placement()

    @property
    def is_local(self) -> bool:
        return self.runtime in LOCAL_RUNTIMES

    @property
    def rate_budgets(self) -> tuple[RateBudget, ...]:
        """(key, rpm, tpm, window_s) of each limit that limits something; key defaults to the name."""
        return tuple((r.key or self.name, r.rpm, r.tpm, r.window_s) for r in self.rate_limits if r.rpm or r.tpm)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name clients may use for this deployment."""
        return (self.name, *self.aliases)


def infer_runtime(model: str, path: Path | None = None) -> str:
    """Runtime from a model reference: provider prefix, built-in model, or folder contents."""
    if model.startswith(BUILTIN_PREFIX):
        return "ort"
    prefix, sep, _ = model.partition("/")
    if sep and prefix in PROVIDER_PREFIXES and (path is None or not path.exists()):
        return PROVIDER_PREFIXES[prefix]
    folder = path if path is not None else Path(model)
    try:
        if (folder / "genai_config.json").is_file():
            return "ort"
        if is_trt_engine_dir(folder):
            return "tensorrt"
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            return "vllm"
    except (OSError, ValueError) as exc:  # a name too long for a path, a NUL byte, no permission
        raise ValueError(f"model: cannot look into {model!r}: {getattr(exc, 'strerror', None) or exc}") from None
    raise ValueError(
        f"model: cannot infer the runtime of {model!r}; name one with 'runtime:' "
        f"or use a provider prefix ({', '.join(sorted(PROVIDER_PREFIXES))}/...)"
    )


def is_trt_engine_dir(folder: Path) -> bool:
    """Whether `folder` holds a built TensorRT-LLM engine (rather than a Hugging Face checkpoint)."""
    if any(folder.glob("*.engine")):
        return True
    try:
        return "build_config" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def resolve_model_path(model: str, runtime: str | None, base_dir: Path) -> Path | None:
    """Folder of a local model reference, relative paths against the YAML file's folder."""
    if runtime is not None and runtime not in LOCAL_RUNTIMES:
        return None
    if model.startswith(BUILTIN_PREFIX):
        from atomr.models import builtin_model_dir

        return builtin_model_dir(model[len(BUILTIN_PREFIX) :])
    prefix, sep, _ = model.partition("/")
    p = Path(model).expanduser()
    if not p.is_absolute():
        p = base_dir / p
    if runtime is None and sep and prefix in PROVIDER_PREFIXES and not p.exists():
        return None
    return p


def check_model_files(dep: Deployment) -> None:
    """Fail early, naming the field, when a local model's files are missing."""
    if not dep.is_local or dep.model_path is None:
        return
    path = dep.model_path
    if not path.exists():
        raise ConfigError(f"model files not found at {path}", field="model")
    if dep.runtime == "ort":
        folder = path / "onnx" if (path / "onnx" / "genai_config.json").is_file() else path
        if not (folder / "genai_config.json").is_file():
            raise ConfigError(f"{path} holds no genai_config.json (not an ORT GenAI model)", field="model")
    elif not any((folder / "config.json").is_file() for folder in (path, path / "hf")):
        raise ConfigError(
            f"{path} holds no config.json (not a Hugging Face checkpoint or engine folder for {dep.runtime})",
            field="model",
        )


def deployment_from_dict(
    raw: Mapping[str, Any], *, base_dir: Path | None = None, where: str = "deployment"
) -> Deployment:
    """Validate one deployment mapping; errors name `where`, the field and the problem."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping of fields, got {type(raw).__name__}", field="deployment")
    data = dict(raw)
    base = base_dir or Path.cwd()
    model = data.get("model")
    runtime = data.get("runtime")
    runtime = runtime if isinstance(runtime, str) and runtime else None  # anything else: pydantic names it below
    try:
        if isinstance(model, str) and "model_path" not in data:
            data["model_path"] = resolve_model_path(model, runtime, base)
    except FileNotFoundError as exc:
        raise ConfigError(f"{where}.model: {exc}", field="model") from None
    except (OSError, RuntimeError, ValueError) as exc:  # a path too long, a NUL byte, '~user' with no such user
        problem = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"{where}.model: not a usable path: {problem}", field="model") from None
    try:
        dep = Deployment.model_validate(data)
    except ValidationError as exc:
        raise _config_error(where, exc) from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}", field="deployment") from None
    try:
        check_model_files(dep)
    except ConfigError as exc:
        raise ConfigError(f"{where}.{exc.field}: {exc.message}", field=exc.field) from None
    except OSError as exc:
        raise ConfigError(f"{where}.model: cannot read the model files: {exc.strerror or exc}", field="model") from None
    return dep


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


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; syntax errors name the file, line and column."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}", field="file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: {exc.reason} at byte {exc.start}", field="file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: invalid YAML{at}: {problem}", field="file") from None
    except (ValueError, OverflowError) as exc:  # a value YAML's constructors refuse, e.g. the date 2001-13-01
        raise ConfigError(f"{p}: invalid YAML: {exc}", field="file") from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply", field="file") from None


def shared_limit_clash(dep: Deployment, others: Iterable[Deployment]) -> ConfigError | None:
    """An error when `dep` and another deployment share a rate-limit key with different limits.

    Deployments naming the same `rate_limits.key` draw on one budget (one provider key's RPM/TPM),
    so they must state the same numbers; otherwise whichever asked last would set the budget.
    """
    mine = {key: rest for key, *rest in dep.rate_budgets}
    for other in others:
        if other.name == dep.name:
            continue
        for key, *theirs in other.rate_budgets:
            if key in mine and mine[key] != theirs:
                rpm, tpm, window_s = theirs
                return ConfigError(
                    f"rate_limits: key {key!r} is shared with deployment {other.name!r}, whose limits differ "
                    f"(rpm {rpm}, tpm {tpm}, window_s {window_s}); a shared key needs the same limits",
                    field="rate_limits.key",
                )
    return None


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
