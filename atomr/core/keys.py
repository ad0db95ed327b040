"""API keys managed at runtime, their budgets' periods, and what a request's tokens cost.

A key made at runtime (``atomr-keys create``, ``POST /admin/keys``) belongs to a tenant and may
narrow what the tenant's YAML entry allows: its own models, requests and tokens per minute,
requests in flight, a money budget per period, an expiry. Only the SHA-256 of its secret is kept
(`atomr.core.tenants.hash_key`); the secret is shown once, when the key is made or rotated.

Money is counted in integer nano-dollars (1e-9 USD), so that budgets and the sums of the spend
log add up exactly however many requests they hold: a price of ``2.5`` USD per million tokens is
2,500 nano-dollars a token.

Budget periods: ``total`` (never resets), ``day``, ``week`` (from Monday) and ``month``, in UTC
calendar terms, or a fixed length such as ``30s``, ``15m``, ``12h`` or ``7d`` counted from the
key's creation.
"""

from __future__ import annotations

import calendar
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from atomr.core.errors import InvalidRequestError

NANOS_PER_USD = 1_000_000_000
CALENDAR_PERIODS = ("total", "day", "week", "month")
_LENGTH = re.compile(r"^([1-9][0-9]{0,6})(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
KEY_ID_PREFIX = "key_"


def usd_to_nanos(usd: float) -> int:
    return round(usd * NANOS_PER_USD)


def nanos_to_usd(nanos: int) -> float:
    return nanos / NANOS_PER_USD


def check_period(period: str) -> str:
    """`period` when it names a budget period; ValueError saying what is accepted otherwise."""
    if period in CALENDAR_PERIODS or _LENGTH.match(period):
        return period
    raise ValueError("must be total, day, week, month or a length such as 30s, 15m, 12h, 7d")


def period_bounds(period: str, now: float, origin: float) -> tuple[float, float | None]:
    """The start of the budget period that holds `now`, and when it ends (None: never).
    `origin`: when the key was made (where fixed-length periods are counted from)."""
    if period == "total":
        return origin, None
    m = _LENGTH.match(period)
    if m is not None:
        length = int(m.group(1)) * _UNIT_S[m.group(2)]
        start = origin + ((now - origin) // length) * length if now >= origin else origin
        return start, start + length
    t = datetime.fromtimestamp(now, UTC)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        begin, end = day, day + timedelta(days=1)
    elif period == "week":
        begin = day - timedelta(days=day.weekday())
        end = begin + timedelta(days=7)
    else:  # month
        begin = day.replace(day=1)
        end = begin + timedelta(days=calendar.monthrange(begin.year, begin.month)[1])
    return begin.timestamp(), end.timestamp()


class KeyRequest(BaseModel):
    """What making a key takes (the admin API's body, the CLI's options), checked field by field."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant: str = Field(min_length=1, max_length=64)
    models: tuple[str, ...] = ("*",)
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    max_parallel: int | None = Field(default=None, ge=1)
    budget_usd: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    period: str = "total"
    expires_at: float | None = Field(default=None, gt=0, allow_inf_nan=False)  # Unix time
    metadata: dict[str, str] = Field(default_factory=dict)

    @field_validator("period")
    @classmethod
    def _period(cls, v: str) -> str:
        return check_period(v)

    @field_validator("models")
    @classmethod
    def _models(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or any(not m for m in v):
            raise ValueError('must name at least one model (or "*")')
        return v


def parse_key_request(raw: Any) -> KeyRequest:
    """`raw` (a mapping) as a KeyRequest; InvalidRequestError naming the field otherwise."""
    if not isinstance(raw, dict):
        raise InvalidRequestError("must be a JSON object", field="body")
    try:
        return KeyRequest.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "body"
        raise InvalidRequestError(f"{loc}: {err['msg']}", field=loc) from None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored and as every gateway holds it (no secret: its hash)."""

    id: str
    tenant: str
    key_sha256: str
    created_at: float
    models: tuple[str, ...] = ("*",)
    rpm: int | None = None
    tpm: int | None = None
    max_parallel: int | None = None
    budget_nanos: int | None = None
    period: str = "total"
    expires_at: float | None = None
    revoked_at: float | None = None
    metadata: tuple[tuple[str, str], ...] = ()

    @staticmethod
    def made(request: KeyRequest, key_sha256: str, now: float) -> ApiKey:
        budget = usd_to_nanos(request.budget_usd) if request.budget_usd is not None else None
        return ApiKey(
            id=KEY_ID_PREFIX + secrets.token_hex(8),
            tenant=request.tenant,
            key_sha256=key_sha256,
            created_at=now,
            models=tuple(request.models),
            rpm=request.rpm,
            tpm=request.tpm,
            max_parallel=request.max_parallel,
            budget_nanos=budget,
            period=request.period,
            expires_at=request.expires_at,
            metadata=tuple(sorted(request.metadata.items())),
        )

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models

    def usable(self, now: float | None = None) -> bool:
        """Neither revoked nor expired."""
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or (now if now is not None else time.time()) < self.expires_at

    @property
    def admits_centrally(self) -> bool:
        """Whether its requests ask the key keeper first (a budget or a cap on requests in flight)."""
        return self.budget_nanos is not None or self.max_parallel is not None

    def bounds(self, now: float) -> tuple[float, float | None]:
        """Its current budget period: start and end (None: never ends)."""
        return period_bounds(self.period, now, self.created_at)

    def public(self) -> dict[str, Any]:
        """What the admin API shows of it (never the hash)."""
        return {
            "id": self.id,
            "tenant": self.tenant,
            "models": list(self.models),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_parallel": self.max_parallel,
            "budget_usd": nanos_to_usd(self.budget_nanos) if self.budget_nanos is not None else None,
            "period": self.period,
            "expires_at": self.expires_at,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
            "metadata": dict(self.metadata),
        }
