"""Runtime keys, what each spent in its budget's period, and the spend log, in the head's state file.

Three tables of the head's SQLite file (`atomr.cluster.head_state`, schema version 4):
``api_keys`` (each key as JSON, its secret's hash only), ``key_spend`` (a key's spend in its
current budget period, so a budget survives a restart of the head and outlives the log's
retention) and ``spend`` (one row per run of a request on a deployment). A batch of spend rows and
the budgets it charges are written in one transaction.

Key changes are written with ``synchronous=FULL`` (the state file's setting): a key revoked is
revoked after a power cut too. The spend log's batches are many and small, so they are written
with ``synchronous=NORMAL`` on a connection of their own: WAL mode keeps them through a crash of
the process, and a power cut may lose the last batches (less than a second of spend).
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable
from typing import Any

from atomr.cluster.head_state import HeadState
from atomr.core.errors import InvalidRequestError
from atomr.core.keys import ApiKey, nanos_to_usd
from atomr.core.spend import SpendRecord

GROUPS = ("key", "tenant", "deployment", "day", "outcome")
_GROUP_SQL = {
    "key": "coalesce(key_id, '')",
    "tenant": "tenant",
    "deployment": "deployment",
    "day": "date(at, 'unixepoch')",
    "outcome": "outcome",
}


class KeyStore:
    """The key and spend tables of the state file in `state_dir`."""

    def __init__(self, state_dir: str) -> None:
        self._state = HeadState(state_dir)  # made or migrated to the current schema
        self._db = self._state.db
        self._log = sqlite3.connect(self._state.path, isolation_level=None, timeout=10.0, check_same_thread=False)
        self._log.execute("PRAGMA busy_timeout = 10000")
        self._log.execute("PRAGMA synchronous = NORMAL")

    def close(self) -> None:
        self._log.close()
        self._state.close()

    # ---- keys ----

    def keys(self) -> list[ApiKey]:
        rows = self._db.execute("SELECT spec FROM api_keys ORDER BY id").fetchall()
        return [_key_from_json(spec) for (spec,) in rows]

    def put_key(self, key: ApiKey) -> None:
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO api_keys VALUES (?, ?)", (key.id, _key_to_json(key)))

    def spent(self) -> dict[str, tuple[float, int]]:
        """Each key's budget period start and what it spent in it (nano-dollars)."""
        rows = self._db.execute("SELECT key_id, period_start, spent_nanos FROM key_spend").fetchall()
        return {k: (start, nanos) for k, start, nanos in rows}

    # ---- spend ----

    def record(self, records: Iterable[SpendRecord], charged: dict[str, tuple[float, int]]) -> None:
        """Spend rows, and the budget periods they charged (key -> period start, spent in it)."""
        rows = [
            (
                r.request_id,
                r.at,
                r.key_id,
                r.tenant,
                r.deployment,
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.cost_nanos,
                round(r.latency_s * 1000, 3),
                r.outcome,
            )
            for r in records
        ]
        with self._log:
            self._log.execute("BEGIN IMMEDIATE")
            self._log.executemany("INSERT INTO spend VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._log.executemany(
                "INSERT OR REPLACE INTO key_spend VALUES (?, ?, ?)",
                [(k, start, nanos) for k, (start, nanos) in charged.items()],
            )

    def prune(self, before: float) -> int:
        """Drop spend rows older than `before` (wall time); returns how many."""
        with self._log:
            cur = self._log.execute("DELETE FROM spend WHERE at < ?", (before,))
        return cur.rowcount

    def summary(
        self, group_by: str, since: float | None = None, until: float | None = None, key_id: str | None = None
    ) -> list[dict[str, Any]]:
        """Requests, tokens and cost summed by `group_by` (one of `GROUPS`), newest rows included."""
        if group_by not in GROUPS:
            raise InvalidRequestError(f"must be one of {', '.join(GROUPS)}", field="group_by")
        where, args = [], []
        for clause, value in (("at >= ?", since), ("at < ?", until), ("key_id = ?", key_id)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = (
            f"SELECT {_GROUP_SQL[group_by]} AS g, count(*), sum(prompt_tokens), sum(completion_tokens),"
            f" sum(cached_tokens), sum(cost_nanos) FROM spend"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " GROUP BY g ORDER BY g"
        )
        return [
            {
                group_by: g,
                "requests": n,
                "prompt_tokens": p,
                "completion_tokens": c,
                "cached_tokens": cached,
                "cost_usd": nanos_to_usd(cost),
            }
            for g, n, p, c, cached, cost in self._log.execute(sql, args).fetchall()
        ]


def _key_to_json(key: ApiKey) -> str:
    return json.dumps(dataclasses.asdict(key), separators=(",", ":"))


def _key_from_json(text: str) -> ApiKey:
    raw = json.loads(text)
    raw["models"] = tuple(raw["models"])
    raw["metadata"] = tuple(tuple(kv) for kv in raw["metadata"])
    return ApiKey(**raw)
