"""The Deployment value object.

A deployment says what to serve (model reference, runtime, version), how much of it (replicas,
GPUs per replica), where (placement) and within which limits. It is a pure value: which runtimes
exist, how a runtime is inferred from a model reference and where a local model's files are is
the runtime catalog's business (`atomr.runners.catalog`), and reading YAML is `atomr.config`'s,
which builds deployments from user input (`deployment_from_dict`, `load_deployments`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from atomr.core.errors import ConfigError

BUILTIN_PREFIX = "builtin:"
_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,62}$")


class Limits(BaseModel):
    """Per-deployment admission and streaming limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_inflight_per_replica: int = Field(32, ge=1, le=4096)
    max_queue: int = Field(256, ge=0, le=100_000)
    max_queue_per_tenant: int | None = Field(None, ge=0, le=100_000)  # one tenant's share of max_queue
    # False: every chunk the runner makes is sent as it came (a client sees the upstream's chunking)
    coalesce: bool = True
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
    # USD per 1M prompt tokens read from the provider's prompt cache (None: the prompt price)
    cached_prompt: float | None = Field(None, ge=0.0, le=1_000_000.0)

    def usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of a request that used these tokens."""
        return (prompt_tokens * self.prompt + completion_tokens * self.completion) / 1_000_000

    def nanos(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> int:
        """The price in nano-dollars (what spend and budgets count): `cached_tokens` of the
        prompt's at the cached price. A price per million tokens is 1,000 times a token's nanos."""
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cached_price = self.prompt if self.cached_prompt is None else self.cached_prompt
        per_million = (prompt_tokens - cached) * self.prompt + cached * cached_price
        return round((per_million + completion_tokens * self.completion) * 1000)


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
    # The runtime's name (`atomr.runners.catalog`); `atomr.config` infers it from the model reference.
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
    # for that front's requests (no hop to a replica process; see atomr.http.inline). None: the
    # default, on for remote runtimes without placement constraints (`catalog.serves_in_gateway`).
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
    def _check(self) -> Deployment:
        if not self.runtime:
            raise ValueError("runtime: no runtime named (atomr.config.deployment_from_dict infers it from the model)")
        keys = [key for key, *_ in self.rate_budgets]
        if len(set(keys)) != len(keys):
            raise ValueError(f"rate_limits: each limit needs its own key (the default key is the name), got {keys}")
        return self

    @property
    def rate_budgets(self) -> tuple[RateBudget, ...]:
        """(key, rpm, tpm, window_s) of each limit that limits something; key defaults to the name."""
        return tuple((r.key or self.name, r.rpm, r.tpm, r.window_s) for r in self.rate_limits if r.rpm or r.tpm)

    @property
    def names(self) -> tuple[str, ...]:
        """Every name clients may use for this deployment."""
        return (self.name, *self.aliases)


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
