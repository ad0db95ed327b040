"""Key keeper actor (global name on the head): runtime keys, their budgets, and the spend log.

It owns the keys made at runtime (stored by `atomr.cluster.key_store` in the head's state file),
answers the admin operations on them (`KeysAdmin`, from the HTTP front's ``/admin`` routes and from
`atomr-keys` through a `Client`, both checked against the admin key's hash here, in one place),
and publishes the key table to every gateway that watches it (`WatchKeys`): a key revoked or
rotated is pushed at once, so every gateway process refuses it within a message's time.

Budgets and caps on requests in flight are decided here (`atomr.core.budgets.BudgetLedger`):
gateways ask before a budgeted key's request runs (`Reserve`, batched), and every run of every
request, on any deployment, reports what it cost when it ends (`SpendRecords`, batched by each
coordinator and gateway), which settles its hold, charges the key's period and adds a row to the
spend log.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
import shutil
import tempfile
import time
from datetime import timedelta
from typing import Any

import structlog
from thespian.actors import WakeupMessage

from atomr.actors.messages import (
    METRICS_NAME,
    Address,
    KeysAdmin,
    KeyTable,
    MetricsSnapshot,
    Reply,
    Reserve,
    Reserved,
    SpendRecords,
    SpendTotals,
    StartKeys,
    WatchKeys,
)
from atomr.actors.sidecar import SidecarActor
from atomr.cluster.key_store import KeyStore
from atomr.core.budgets import BudgetLedger
from atomr.core.errors import (
    AuthError,
    InferenceError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    quote,
)
from atomr.core.keys import ApiKey, nanos_to_usd, parse_key_request
from atomr.core.tenants import new_key
from atomr.observability.metrics import KeyMetrics

log = structlog.get_logger("atomr.keys")

TICK_S = 5.0  # holds past their deadline are dropped, and metrics shipped, this often
PRUNE_EVERY_S = 3600.0
MAX_EARLY = 10_000  # messages kept for after StartKeys
OPS = ("create", "list", "show", "revoke", "rotate", "spend")


class KeyKeeper(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store: KeyStore | None = None
        self.keys: dict[str, ApiKey] = {}
        self.ledger = BudgetLedger()
        self.admin_sha256: bytes | None = None
        self.retention_s = 90 * 86400.0
        self.watchers: dict[str, Address] = {}
        self.boot = secrets.token_hex(4)
        self.changes = 0
        self.metrics = KeyMetrics()
        self._own_dir: str | None = None
        self._pruned_at = 0.0
        self._collector: Address = None
        # What came before StartKeys (a keeper started again by a gateway's lookup, before the
        # node starts it): answered once it has its keys, not with an empty table meanwhile
        self._early: list[tuple[Any, Address]] = []

    # ---- start ----

    def receiveMsg_StartKeys(self, msg: StartKeys, sender: Address) -> None:
        try:
            self._start(msg)
        except InferenceError as exc:
            self.send(sender, Reply(False, error=exc.info()))
            return
        self.send(sender, Reply(True))
        early, self._early = self._early, []
        for early_msg, early_sender in early:
            getattr(self, f"receiveMsg_{type(early_msg).__name__}")(early_msg, early_sender)

    def _waits(self, msg: Any, sender: Address) -> bool:
        """Keep `msg` for after StartKeys when it has not come yet."""
        if self.store is None:
            if len(self._early) >= MAX_EARLY:  # never started (no head runs it): keep the newest
                del self._early[0]
            self._early.append((msg, sender))
            return True
        return False

    def _start(self, msg: StartKeys) -> None:
        if self.store is None:
            state_dir = msg.state_dir
            if state_dir is None:
                self._own_dir = state_dir = tempfile.mkdtemp(prefix="atomr-keys-")
            self.store = KeyStore(state_dir)
            self.keys = {k.id: k for k in self.store.keys()}
            for key_id, (start, spent) in self.store.spent().items():
                self.ledger.load(key_id, start, spent)
            self.wakeupAfter(timedelta(seconds=TICK_S), payload="tick")
        self.admin_sha256 = bytes.fromhex(msg.admin_sha256) if msg.admin_sha256 else None
        self.retention_s = msg.retention_days * 86400.0
        self._prune(time.time())
        self._changed()

    # ---- the key table, to every gateway ----

    def receiveMsg_WatchKeys(self, msg: WatchKeys, sender: Address) -> None:
        if self._waits(msg, sender):
            return
        self.watchers[str(sender)] = sender
        if msg.version != self._version:
            self.send(sender, KeyTable(self._version, tuple(self.keys.values())))

    @property
    def _version(self) -> tuple[str, int]:
        return (self.boot, self.changes)

    def _changed(self) -> None:
        self.changes += 1
        table = KeyTable(self._version, tuple(self.keys.values()))
        for watcher in self.watchers.values():
            self.send(watcher, table)
        self._meter(time.time())

    # ---- budgets and spend ----

    def receiveMsg_Reserve(self, msg: Reserve, sender: Address) -> None:
        if self._waits(msg, sender):
            return
        now = time.time()
        granted: list[tuple[str, str]] = []
        refused = []
        for hold in msg.holds:
            key = self.keys.get(hold.key_id)
            if key is None or not key.usable(now):
                invalid = AuthError(f"API key {hold.key_id} is not valid (revoked or expired)")
                refused.append((hold.request_id, hold.deployment, invalid.info()))
                continue
            why = self.ledger.reserve(hold, key, now)
            if why is None:
                granted.append((hold.request_id, hold.deployment))
            else:
                refused.append((hold.request_id, hold.deployment, why))
        self.send(sender, Reserved(granted, refused))

    def receiveMsg_SpendRecords(self, msg: SpendRecords, sender: Address) -> None:
        if self._waits(msg, sender):
            return
        now = time.time()
        charged: dict[str, tuple[float, int]] = {}
        for record in msg.records:
            key = self.keys.get(record.key_id) if record.key_id is not None else None
            acc = self.ledger.settle(record, key, now)
            if acc is not None and record.key_id is not None:
                charged[record.key_id] = (acc.period_start, acc.spent)
        if self.store is not None:
            try:
                self.store.record(msg.records, charged)
            except Exception as exc:  # noqa: BLE001 - the budgets above still count it
                log.error("spend log write failed", records=len(msg.records), error=f"{type(exc).__name__}: {exc}")
        # (the keys' gauges follow on the next tick: a pass over every key per batch would cost
        # more than the batch)

    def receiveMsg_SpendTotals(self, msg: SpendTotals, sender: Address) -> None:
        try:
            store = self._store()
            totals = {g: store.summary(g) for g in ("tenant", "deployment")}
        except InferenceError as exc:
            self.send(sender, Reply(False, error=exc.info()))
            return
        self.send(sender, Reply(True, totals))

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Address) -> None:
        now = time.time()
        dropped = self.ledger.expire(now)
        if dropped:
            log.warning("budget holds dropped past their deadline", holds=dropped)
        if now - self._pruned_at > PRUNE_EVERY_S:
            self._prune(now)
        self._meter(now)
        self.wakeupAfter(timedelta(seconds=TICK_S), payload="tick")

    def _prune(self, now: float) -> None:
        if self.store is not None:
            self._pruned_at = now
            gone = self.store.prune(now - self.retention_s)
            if gone:
                log.info("spend log pruned", rows=gone)

    def _meter(self, now: float) -> None:
        rows = []
        for key in self.keys.values():
            acc = self.ledger.account(key, now)
            budget = nanos_to_usd(key.budget_nanos) if key.budget_nanos is not None else None
            rows.append((key.id, key.tenant, nanos_to_usd(acc.spent), budget))
        self.metrics.keys(rows)
        families = self.metrics.take_snapshot()
        if families is not None:
            if self._collector is None:
                from atomr.actors.metrics_collector import MetricsCollector

                self._collector = self.createActor(MetricsCollector, globalName=METRICS_NAME)
            self.send(self._collector, MetricsSnapshot(self.metrics.source, families))

    # ---- admin operations ----

    def receiveMsg_KeysAdmin(self, msg: KeysAdmin, sender: Address) -> None:
        try:
            self._check_admin(msg.admin_key)
            if msg.op not in OPS:
                raise InvalidRequestError(f"must be one of {', '.join(OPS)}", field="op")
            value = getattr(self, f"_op_{msg.op}")(dict(msg.args or {}))
        except InferenceError as exc:
            self.send(sender, Reply(False, error=exc.info()))
            return
        except Exception as exc:  # noqa: BLE001 - a failed write must still be answered
            log.error("key operation failed", op=msg.op, error=f"{type(exc).__name__}: {exc}")
            self.send(sender, Reply(False, error=InternalError(f"the {msg.op} operation failed").info()))
            return
        self.send(sender, Reply(True, value))

    def _check_admin(self, presented: str | None) -> None:
        if self.admin_sha256 is None:
            raise PermissionDeniedError(
                "the admin API is off: no admin key is set (--admin-key-file, http.admin_key_file or"
                " $ATOMR_ADMIN_KEY_FILE)"
            )
        if not presented:
            raise AuthError("missing admin key: send 'Authorization: Bearer <admin key>'")
        if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), self.admin_sha256):
            raise AuthError("invalid admin key")

    def _store(self) -> KeyStore:
        if self.store is None:
            raise UnavailableError("the key keeper has not started", retry_after=1.0)
        return self.store

    def _key(self, args: dict[str, Any]) -> ApiKey:
        key_id = args.get("id")
        key = self.keys.get(key_id) if isinstance(key_id, str) else None
        if key is None:
            raise NotFoundError(f"no key {quote(key_id)}", field="id")
        return key

    def _describe(self, key: ApiKey, now: float) -> dict[str, Any]:
        acc = self.ledger.account(key, now)
        start, end = key.bounds(now)
        return {
            **key.public(),
            "spent_usd": nanos_to_usd(acc.spent),
            "held_usd": nanos_to_usd(acc.held),
            "inflight": acc.inflight,
            "period_start": start,
            "resets_at": end,
        }

    def _save(self, key: ApiKey) -> None:
        self._store().put_key(key)
        self.keys[key.id] = key
        self._changed()

    def _op_create(self, args: dict[str, Any]) -> dict[str, Any]:
        request = parse_key_request(args)
        secret, digest = new_key()
        now = time.time()
        key = ApiKey.made(request, digest, now)
        self._save(key)
        log.info("key created", key_id=key.id, tenant=key.tenant)
        return {"key": self._describe(key, now), "secret": secret}

    def _op_list(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        now = time.time()
        return [self._describe(k, now) for k in self.keys.values()]

    def _op_show(self, args: dict[str, Any]) -> dict[str, Any]:
        return self._describe(self._key(args), time.time())

    def _op_revoke(self, args: dict[str, Any]) -> dict[str, Any]:
        key = self._key(args)
        now = time.time()
        if key.revoked_at is None:
            key = dataclasses.replace(key, revoked_at=now)
            self._save(key)
            log.info("key revoked", key_id=key.id, tenant=key.tenant)
        return self._describe(key, now)

    def _op_rotate(self, args: dict[str, Any]) -> dict[str, Any]:
        key = self._key(args)
        if key.revoked_at is not None:
            raise InvalidRequestError(f"key {key.id} is revoked", field="id")
        secret, digest = new_key()
        key = dataclasses.replace(key, key_sha256=digest)
        self._save(key)
        log.info("key rotated", key_id=key.id, tenant=key.tenant)
        return {"key": self._describe(key, time.time()), "secret": secret}

    def _op_spend(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        group_by = args.get("group_by", "key")
        since, until, key_id = args.get("since"), args.get("until"), args.get("key")
        for name, value in (("since", since), ("until", until)):
            if value is not None and not isinstance(value, int | float):
                raise InvalidRequestError("must be a Unix time in seconds", field=name)
        if key_id is not None and not isinstance(key_id, str):
            raise InvalidRequestError("must be a key id", field="key")
        return self._store().summary(str(group_by), since, until, key_id)

    def on_exit(self) -> None:
        if self.store is not None:
            self.store.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)
        super().on_exit()
