"""The answers ``POST /v1/responses`` keeps, for ``previous_response_id`` and ``GET /v1/responses/{id}``.

A bounded store: at most `max_items` responses (the oldest evicted first), each for at most
`max_age_s` seconds. Each entry holds the Response object as it was answered and the conversation
that led to it (input and output as chat messages, instructions aside: they are not carried over
to the next turn). Entries belong to the tenant that made them; another tenant asking finds
nothing. It is a SQLite table: in memory for a front of one process, in a file of the folder the
front's workers share otherwise (`atomr.http.workers`), so that a response made on one worker is
found on any (WAL mode, no fsync: the store is a cache of the process tree, not durable state).
Entries are pickled: the file is written and read only by this node's own processes, in a folder
only its user can open. Used from the front's event loop only.
"""

from __future__ import annotations

import pickle
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atomr.core.messages import Message


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    tenant: str
    response: Mapping[str, Any]  # the Response object, as answered
    conversation: tuple[Message, ...]  # what a response continuing this one follows


class ResponseStore:
    """Stored responses by id, bounded in number and age; `max_items` 0 keeps none; `path`: the
    SQLite file shared with the other workers (None: this process's memory)."""

    def __init__(
        self, max_items: int, max_age_s: float, path: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self.max_items = max_items
        self.max_age_s = max_age_s
        self._clock = clock  # wall time: the workers' clocks must agree
        # made on the actor thread, used on the loop thread only from then on
        self._db = sqlite3.connect(path or ":memory:", isolation_level=None, timeout=5.0, check_same_thread=False)
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=OFF")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses"
            " (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, stored_at REAL NOT NULL, entry BLOB NOT NULL)"
        )
        self._db.execute("CREATE INDEX IF NOT EXISTS responses_by_age ON responses (stored_at)")

    @property
    def enabled(self) -> bool:
        return self.max_items > 0

    def __len__(self) -> int:
        self._expire()
        (n,) = self._db.execute("SELECT count(*) FROM responses").fetchone()
        return int(n)

    def put(self, entry: StoredResponse) -> None:
        if not self.enabled:
            return
        blob = pickle.dumps(entry, protocol=pickle.HIGHEST_PROTOCOL)
        with self._db:  # one transaction: the insert and the evictions it causes
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?)", (entry.id, entry.tenant, self._clock(), blob)
            )
            self._db.execute(
                "DELETE FROM responses WHERE rowid IN"
                " (SELECT rowid FROM responses ORDER BY stored_at DESC, rowid DESC LIMIT -1 OFFSET ?)",
                (self.max_items,),
            )

    def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        """The entry, when it is still kept and belongs to `tenant`."""
        row = self._db.execute(
            "SELECT entry FROM responses WHERE id = ? AND tenant = ? AND stored_at > ?",
            (response_id, tenant, self._clock() - self.max_age_s),
        ).fetchone()
        if row is None:
            return None
        found: StoredResponse = pickle.loads(row[0])
        return found

    def delete(self, response_id: str, tenant: str) -> bool:
        """Whether `tenant`'s entry was there (and is now gone)."""
        if self.get(response_id, tenant) is None:
            return False
        self._db.execute("DELETE FROM responses WHERE id = ? AND tenant = ?", (response_id, tenant))
        return True

    def close(self) -> None:
        self._db.close()

    def _expire(self) -> None:
        self._db.execute("DELETE FROM responses WHERE stored_at <= ?", (self._clock() - self.max_age_s,))
