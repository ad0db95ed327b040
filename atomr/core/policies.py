"""Routing policies and confidence cascades: the `routes:` and `cascades:` sections of a config.

A *route* is a model name that clients call and that stands for several deployments, chosen per
request by a policy (`fixed`, `weighted`, `cheapest`, `fastest`, `quality`). A *cascade* is a
model name whose requests go to a cheap tier first and move to the next tier when the answer's
token-logprob confidence is below the tier's threshold (or the tier fails).

Pure values and their validation: errors name the file, the entry and the field, like the
deployment loader (`cfg.yaml: routes[0].policy: Input should be 'fixed', ...`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from atomr.core.deployment import _NAME, Deployment
from atomr.core.errors import ConfigError

POLICIES = ("fixed", "weighted", "cheapest", "fastest", "quality")
RULES = ("mean", "min", "mean_and_min")
_FIELD_PATH = re.compile(r"[A-Za-z_][\w.\[\]]*")
PolicyName = Literal["fixed", "weighted", "cheapest", "fastest", "quality"]
RuleName = Literal["mean", "min", "mean_and_min"]


def _check_name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return v


class RouteTarget(BaseModel):
    """One deployment a route may send to (`weight` counts for the `weighted` policy only)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: str
    weight: float = Field(1.0, gt=0.0, le=1_000_000.0)


class RoutePolicy(BaseModel):
    """A model name served by several deployments, one chosen per request by `policy`.

    Every policy skips deployments that have no ready replica, whose circuit breaker is open or
    whose queue is full, and falls to the next candidate; the candidates after the chosen one are
    the request's fallbacks (a retryable failure before the first chunk moves it on).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    policy: PolicyName
    deployments: tuple[RouteTarget, ...]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("deployments", mode="before")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        """A target is a deployment name, or a mapping with `deployment` (and `weight`)."""
        if isinstance(v, list | tuple):
            return [{"deployment": t} if isinstance(t, str) else t for t in v]
        return v

    @field_validator("deployments")
    @classmethod
    def _count(cls, v: tuple[RouteTarget, ...]) -> tuple[RouteTarget, ...]:
        if not 1 <= len(v) <= 64:
            raise ValueError(f"must list 1 to 64 deployments, got {len(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> RoutePolicy:
        names = [t.deployment for t in self.deployments]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ValueError(f"deployments[{i}]: {n!r} is listed twice")
        if self.policy != "weighted" and any(t.weight != 1.0 for t in self.deployments):
            raise ValueError("deployments: weights apply to the weighted policy only")
        return self

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.deployment for t in self.deployments)


class CascadeTier(BaseModel):
    """One step of a cascade: a deployment, and when its answer is good enough to keep.

    `rule` says which token-logprob statistic is compared with `threshold` (a log probability,
    so <= 0): `mean` (the answer's mean token logprob), `min` (its least likely token), or
    `mean_and_min` (mean >= `threshold` and min >= `min_threshold`). The last tier has no
    threshold: its answer is always accepted.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    deployment: str
    threshold: float | None = Field(None, le=0.0)
    rule: RuleName = "mean"
    min_threshold: float | None = Field(None, le=0.0)

    @field_validator("threshold", "min_threshold")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite log probability (<= 0)")
        return v

    @model_validator(mode="after")
    def _rule_needs(self) -> CascadeTier:
        if self.rule == "mean_and_min" and self.threshold is not None and self.min_threshold is None:
            raise ValueError("min_threshold: the mean_and_min rule needs min_threshold (the floor for the min)")
        if self.rule != "mean_and_min" and self.min_threshold is not None:
            raise ValueError("min_threshold: applies to the mean_and_min rule only")
        return self


class Cascade(BaseModel):
    """A model name whose requests climb `tiers` until an answer is confident enough."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    tiers: tuple[CascadeTier, ...]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v)

    @field_validator("tiers")
    @classmethod
    def _count(cls, v: tuple[CascadeTier, ...]) -> tuple[CascadeTier, ...]:
        if not 2 <= len(v) <= 8:
            raise ValueError(f"must list 2 to 8 tiers, got {len(v)}")
        return v

    @model_validator(mode="after")
    def _thresholds(self) -> Cascade:
        for i, tier in enumerate(self.tiers[:-1]):
            if tier.threshold is None:
                raise ValueError(f"tiers[{i}].threshold: required on every tier but the last")
        if self.tiers[-1].threshold is not None:
            raise ValueError(f"tiers[{len(self.tiers) - 1}].threshold: the last tier's answer is always accepted")
        return self


class Policies(BaseModel):
    """Every route and cascade of a config, by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    routes: tuple[RoutePolicy, ...] = ()
    cascades: tuple[Cascade, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.routes) + tuple(c.name for c in self.cascades)

    def __bool__(self) -> bool:
        return bool(self.routes or self.cascades)


def policies_from_config(
    raw: Mapping[str, Any], *, where: str = "config", deployments: Iterable[Deployment] | None = None
) -> Policies:
    """The `routes:` and `cascades:` of a parsed config mapping, validated.

    With `deployments` (those of the same file), every name a route or tier uses must be one of
    them (or, for a tier, a route of the same file), and no route or cascade may reuse a name.
    """
    routes = [_entry(RoutePolicy, item, where, f"routes[{i}]") for i, item in enumerate(_section(raw, "routes", where))]
    cascades = [
        _entry(Cascade, item, where, f"cascades[{i}]") for i, item in enumerate(_section(raw, "cascades", where))
    ]
    taken: dict[str, str] = {}
    if deployments is not None:
        taken = {n: "deployment" for d in deployments for n in d.names}
    serving = dict(taken)
    for i, r in enumerate(routes):
        _claim(taken, r.name, where, f"routes[{i}].name", "route")
        for j, t in enumerate(r.deployments):
            if deployments is not None and serving.get(t.deployment) != "deployment":
                raise ConfigError(
                    f"{where}: routes[{i}].deployments[{j}]: no deployment named {t.deployment!r} in this file",
                    field=f"routes[{i}].deployments[{j}]",
                )
    for i, c in enumerate(cascades):
        _claim(taken, c.name, where, f"cascades[{i}].name", "cascade")
        for j, tier in enumerate(c.tiers):
            if deployments is not None and taken.get(tier.deployment) not in ("deployment", "route"):
                raise ConfigError(
                    f"{where}: cascades[{i}].tiers[{j}].deployment: no deployment or route named "
                    f"{tier.deployment!r} in this file",
                    field=f"cascades[{i}].tiers[{j}].deployment",
                )
    return Policies(routes=tuple(routes), cascades=tuple(cascades))


def _section(raw: Mapping[str, Any], key: str, where: str) -> list[Any]:
    items = raw.get(key) or []
    if not isinstance(items, list):
        raise ConfigError(f"{where}: {key}: must be a list", field=key)
    return items


def _entry(model: type[RoutePolicy] | type[Cascade], item: Any, where: str, entry: str) -> Any:
    if not isinstance(item, Mapping):
        raise ConfigError(f"{where}: {entry}: must be a mapping of fields, got {type(item).__name__}", field=entry)
    try:
        return model.model_validate(dict(item))
    except ValidationError as exc:
        raise _config_error(where, entry, exc) from None


def _claim(taken: dict[str, str], name: str, where: str, field: str, kind: str) -> None:
    if name in taken:
        raise ConfigError(f"{where}: {field}: {name!r} is already the name of a {taken[name]}", field=field)
    taken[name] = kind


def _config_error(where: str, entry: str, exc: ValidationError) -> ConfigError:
    """One message naming every problem; a validator's 'field: problem' text is placed under that field."""
    problems = []
    fields = []
    for err in exc.errors():
        loc = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        head, sep, rest = msg.partition(": ")
        if err["type"] == "value_error" and sep and _FIELD_PATH.fullmatch(head):
            loc = f"{loc}.{head}" if loc else head
            msg = rest
        path = f"{entry}.{loc}".replace(".[", "[") if loc else entry
        fields.append(path)
        problems.append(f"{where}: {path}: {msg}")
    return ConfigError("; ".join(problems), field=fields[0] if fields else entry)
