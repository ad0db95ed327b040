"""Tenants: who may call which models, with what priority and how many requests at once.

A tenant is defined in the node config (``tenants:``) with the SHA-256 of its API key, never the
key itself. A presented key is hashed and compared against every tenant's hash with
`hmac.compare_digest`, so the time taken does not depend on how much of a hash matched or on
which tenant matched. Keys should be long random tokens (``atomr-key`` makes one), which is why a
plain hash, not a slow password hash, is enough here.

.. code-block:: yaml

    tenants:
      - name: team-a
        key_sha256: 9f86d081...      # atomr-key prints a new key and this line
        models: [tiny, gpt]          # or ["*"]
        priority: 1                  # higher classes are served first (fair scheduling)
        max_concurrency: 16          # requests in flight at once
        weight: 1.0                  # share within its priority class
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from atomr.core.errors import AuthError, ConfigError, PermissionDeniedError, quote
from atomr.core.keys import ApiKey

KEY_PREFIX = "atomr-"


class Tenant(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    key_sha256: str
    models: tuple[str, ...] = ("*",)
    priority: int = Field(default=0, ge=0, le=9)
    max_concurrency: int = Field(default=64, ge=1)
    weight: float = Field(default=1.0, gt=0)
    # Set on the tenant a runtime key stands for (`TenantTable.set_runtime_keys`): the key's id
    key_id: str | None = None

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        v = v.strip().lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("must be the 64-character hex SHA-256 of the API key")
        return v

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> tuple[str, str]:
    """A fresh API key and its SHA-256 (what goes in the config)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, hash_key(key)


class TenantTable:
    """Looks up the tenant of an API key: the config's tenants and the keys made at runtime
    (`atomr.core.keys`). Open (no authentication, loopback use) when it has neither and runtime
    keys are off."""

    def __init__(self, tenants: list[Tenant], runtime_keys: bool = False) -> None:
        names = [t.name for t in tenants]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"tenant names must be unique; repeated: {', '.join(sorted(dup))}", field="tenants")
        self.tenants = list(tenants)
        self._digests = [bytes.fromhex(t.key_sha256) for t in tenants]
        self.runtime_keys = runtime_keys  # keys made at runtime are in use (an admin key is set)
        self._runtime: dict[bytes, tuple[ApiKey, Tenant]] = {}

    @property
    def open(self) -> bool:
        return not self.tenants and not self.runtime_keys

    def set_runtime_keys(self, keys: Iterable[ApiKey]) -> None:
        """The keys made at runtime, as the key keeper last published them (revoked ones dropped)."""
        by_name = {t.name: t for t in self.tenants}
        table: dict[bytes, tuple[ApiKey, Tenant]] = {}
        for k in keys:
            if k.revoked_at is not None:
                continue
            base = by_name.get(k.tenant)
            models = k.models if base is None or "*" in base.models else _narrowed(base.models, k.models)
            tenant = Tenant(
                name=k.tenant,
                key_sha256=k.key_sha256,
                models=models,  # (empty: the tenant may use none of the key's models)
                priority=base.priority if base is not None else 0,
                max_concurrency=base.max_concurrency if base is not None else 1 << 30,
                weight=base.weight if base is not None else 1.0,
                key_id=k.id,
            )
            table[bytes.fromhex(k.key_sha256)] = (k, tenant)
        self._runtime = table

    def authenticate(self, key: str | None) -> Tenant | None:
        """The tenant whose key this is; None for an open table; AuthError when no tenant matches."""
        if self.open:
            return None
        if not key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        digest = hashlib.sha256(key.encode()).digest()
        # A dict lookup by the key's SHA-256: what a caller could learn from its timing is how
        # the digest of a key it chose compares with stored digests, which says nothing of keys.
        made = self._runtime.get(digest)
        if made is not None:
            if made[0].expires_at is not None and time.time() >= made[0].expires_at:
                raise AuthError(f"API key {made[0].id} has expired")
            return made[1]
        found: Tenant | None = None
        for tenant, expected in zip(self.tenants, self._digests, strict=True):
            if hmac.compare_digest(digest, expected):  # every tenant is compared, match or not
                found = tenant
        if found is None:
            raise AuthError("invalid API key")
        return found

    def authorize(self, tenant: Tenant | None, model: str) -> None:
        if tenant is not None and not tenant.allows(model):
            who = f"key {tenant.key_id}" if tenant.key_id else f"tenant {tenant.name!r}"
            raise PermissionDeniedError(f"{who} may not use model {quote(model)}", field="model")


def _narrowed(tenant_models: tuple[str, ...], key_models: tuple[str, ...]) -> tuple[str, ...]:
    """What a key may use of what its tenant may."""
    if "*" in key_models:
        return tenant_models
    return tuple(m for m in key_models if m in tenant_models)


def tenants_from_config(raw: Any, where: str = "config") -> TenantTable:
    """The ``tenants:`` list of a node config (None or missing: an open table)."""
    if raw is None:
        return TenantTable([])
    if not isinstance(raw, list):
        raise ConfigError(f"{where}: tenants: must be a list", field="tenants")
    out = []
    for i, entry in enumerate(raw):
        try:
            out.append(Tenant.model_validate(entry))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            field = f"tenants[{i}].{loc}" if loc else f"tenants[{i}]"
            raise ConfigError(f"{where}: {field}: {err['msg']}", field=field) from None
    try:
        return TenantTable(out)
    except ConfigError as exc:  # repeated names: the message names the file too
        raise ConfigError(f"{where}: {exc.message}", field=exc.field) from None
