"""The head's durable desired state: deployments (with a version switch in progress), routes and
cascades, tenants (and, kept by `atomr.cluster.key_store`, runtime keys and spend). One SQLite
file in WAL mode under the node's state directory.

Written before a change is acknowledged: the deployment manager writes deployments and tenants,
the registry routes and cascades, each from its own process through its own connection (SQLite
serialises the writers; ``synchronous=FULL``, so an acknowledged change survives a power cut).
Read by the node process when the head starts, which applies it again through the usual paths
(`atomr.node.main.start_head`), so a restarted head with the same state directory comes back with
the same cluster, deployments added at runtime included.

Rows hold the pydantic models' JSON, so the file stays readable and is not tied to Python classes.
One schema, numbered (`SCHEMA_VERSION`, in the ``meta`` table); an older file is migrated in
place (`MIGRATIONS`), a newer one, a file that is not SQLite, or one that fails SQLite's check is
refused with an error naming the file and the problem, and nothing in it is changed.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, ErrorInfo, InternalError
from atomr.core.policies import Cascade, Policies, RoutePolicy
from atomr.core.tenants import Tenant

M = TypeVar("M", Deployment, RoutePolicy, Cascade, Tenant)

STATE_FILE = "head.sqlite"
SCHEMA_VERSION = 4
SQLITE_MAGIC = b"SQLite format 3\x00"

# version -> the statements that bring a file of the version before it up to it
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE deployments (name TEXT PRIMARY KEY, spec TEXT NOT NULL, switch_to TEXT, updated REAL NOT NULL)",
        "CREATE TABLE policies (name TEXT PRIMARY KEY, kind TEXT NOT NULL, spec TEXT NOT NULL)",
        "CREATE TABLE tenants (position INTEGER PRIMARY KEY, spec TEXT NOT NULL)",
    ],
    # the member nodes that joined: a head started again waits for them to rejoin (their replicas
    # outlive it) before it brings deployments back
    2: ["CREATE TABLE nodes (node_id TEXT PRIMARY KEY, role TEXT NOT NULL, seen REAL NOT NULL)"],
    # every rate-limit grant (wall time), written before the lease is given: a head started again
    # counts what the last one granted within the window, so no limit is exceeded across it
    3: [
        "CREATE TABLE grants (key TEXT NOT NULL, at REAL NOT NULL, requests INTEGER NOT NULL, tokens INTEGER NOT NULL)",
        "CREATE INDEX grants_by_time ON grants (at)",
    ],
    # keys made at runtime, what each spent in its budget's current period, and the spend log
    # (one row per request a deployment ran; `atomr.cluster.key_store`)
    4: [
        "CREATE TABLE api_keys (id TEXT PRIMARY KEY, spec TEXT NOT NULL)",
        "CREATE TABLE key_spend (key_id TEXT PRIMARY KEY, period_start REAL NOT NULL, spent_nanos INTEGER NOT NULL)",
        "CREATE TABLE spend (request_id TEXT NOT NULL, at REAL NOT NULL, key_id TEXT, tenant TEXT NOT NULL,"
        " deployment TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,"
        " cached_tokens INTEGER NOT NULL, cost_nanos INTEGER NOT NULL, latency_ms REAL NOT NULL,"
        " outcome TEXT NOT NULL)",
        "CREATE INDEX spend_by_time ON spend (at)",
    ],
}


def default_state_dir(node_id: str) -> Path:
    """Where a node keeps its state unless told otherwise: under the user's data directory."""
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "atomr" / node_id


@dataclass(frozen=True)
class DesiredState:
    """What a state file holds: each deployment with the version it was switching to, if any."""

    deployments: list[tuple[Deployment, Deployment | None]]
    policies: Policies
    tenants: list[Tenant] | None  # None: never set
    nodes: list[str] = dataclasses.field(default_factory=list)  # member nodes last known in the cluster


@dataclass(frozen=True)
class Snapshot:
    """A head's state as its standbys receive it."""

    desired: DesiredState
    grants: list[tuple[str, float, int, int]]  # (key, seconds ago, requests, tokens)
    term: int
    # runtime keys (id, JSON) and each one's spend in its budget period (`atomr.cluster.key_store`);
    # the spend log itself stays with the head that wrote it
    keys: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    key_spend: list[tuple[str, float, int]] = dataclasses.field(default_factory=list)


class HeadState:
    """The state file in `state_dir` (made if missing). Raises ConfigError (field
    ``node.state_dir``) when the file cannot be used."""

    def __init__(self, state_dir: str | Path, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(state_dir).expanduser() / STATE_FILE
        self._clock = clock
        self._check_file()
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10.0, check_same_thread=False)
            self._open()
        except sqlite3.DatabaseError as exc:
            raise self._refused(f"not a usable SQLite database: {exc}") from None
        except OSError as exc:
            raise self._refused(f"cannot open: {exc.strerror or exc}") from None

    # ---- opening ----

    def _refused(self, problem: str) -> ConfigError:
        return ConfigError(f"state file {self.path}: {problem}; nothing was changed", field="node.state_dir")

    def _check_file(self) -> None:
        """Refuse, before SQLite touches it, a file that is not a SQLite database."""
        try:
            with self.path.open("rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._refused(f"cannot read: {exc.strerror or exc}") from None
        if head and head != SQLITE_MAGIC:
            raise self._refused("not a SQLite database (corrupt, or another file)")

    def _open(self) -> None:
        db = self._db
        db.execute("PRAGMA busy_timeout = 10000")
        if self.path.stat().st_size:
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise self._refused(f"damaged: {check}")
        version = self._version()
        if version > SCHEMA_VERSION:
            raise self._refused(
                f"written by a newer atomr (schema version {version}; this one reads up to {SCHEMA_VERSION})"
            )
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        if version < SCHEMA_VERSION:
            with db:
                db.execute("BEGIN IMMEDIATE")
                version = self._version()  # another process may have migrated it meanwhile
                db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
                for v in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[v]:
                        db.execute(statement)
                self._put_meta("schema_version", str(SCHEMA_VERSION))

    def _version(self) -> int:
        """The file's schema version (0: a new, empty file)."""
        has_meta = self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
        if not has_meta:
            if self._db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise self._refused("not an atomr state file (no meta table)")
            return 0
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not str(row[0]).isdigit():
            raise self._refused("no schema version in its meta table")
        return int(row[0])

    def close(self) -> None:
        self._db.close()

    @property
    def db(self) -> sqlite3.Connection:
        """The file's connection, for the stores that keep their own tables in it (`key_store`)."""
        return self._db

    # ---- writes (each one transaction, durable when it returns) ----

    def put_deployment(self, dep: Deployment) -> None:
        """`dep` is deployed (a new one, or the version a switch ended on)."""
        with self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO deployments VALUES (?, ?, NULL, ?)",
                (dep.name, dep.model_dump_json(), self._clock()),
            )

    def set_switch(self, name: str, to: Deployment | None) -> None:
        """`name` is switching to version `to` (None: no switch in progress any more)."""
        with self._db:
            self._db.execute(
                "UPDATE deployments SET switch_to = ?, updated = ? WHERE name = ?",
                (None if to is None else to.model_dump_json(), self._clock(), name),
            )

    def remove_deployment(self, name: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM deployments WHERE name = ?", (name,))

    def set_policies(self, policies: Policies, remove: list[str] | tuple[str, ...] = ()) -> None:
        """Routes and cascades added or replaced by name; `remove`: names dropped."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for name in remove:
                self._db.execute("DELETE FROM policies WHERE name = ?", (name,))
            self._put_policies(policies)

    def _put_policies(self, policies: Policies) -> None:
        for kind, items in (("route", policies.routes), ("cascade", policies.cascades)):
            rows = [(p.name, kind, p.model_dump_json()) for p in items]
            self._db.executemany("INSERT OR REPLACE INTO policies VALUES (?, ?, ?)", rows)

    def _put_tenants(self, tenants: list[Tenant]) -> None:
        self._db.execute("DELETE FROM tenants")
        self._db.executemany(
            "INSERT INTO tenants VALUES (?, ?)", [(i, t.model_dump_json()) for i, t in enumerate(tenants)]
        )
        self._put_meta("tenants_set", "1")

    def _put_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def put_node(self, node_id: str, role: str) -> None:
        """A member node joined (or rejoined)."""
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)", (node_id, role, self._clock()))

    def remove_node(self, node_id: str) -> None:
        """A member node was lost: a head started again does not wait for it."""
        with self._db:
            self._db.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))

    def add_grant(self, key: str, requests: int, tokens: int, window_s: float | None = None) -> None:
        """A rate-limit budget granted this much now (given-back parts are not recorded: after a
        restart they count as spent until the window passes, which never exceeds the limit).
        With `window_s`, the key's grants that have left its window are dropped (one row per lease
        would otherwise pile up)."""
        now = self._clock()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if window_s is not None:
                self._db.execute("DELETE FROM grants WHERE key = ? AND at < ?", (key, now - window_s))
            self._db.execute("INSERT INTO grants VALUES (?, ?, ?, ?)", (key, now, requests, tokens))

    def grants(self, within_s: float) -> list[tuple[str, float, int, int]]:
        """(key, seconds ago, requests, tokens) of the grants of the last `within_s` seconds."""
        now = self._clock()
        rows = self._db.execute(
            "SELECT key, at, requests, tokens FROM grants WHERE at >= ? ORDER BY at", (now - within_s,)
        ).fetchall()
        return [(key, max(0.0, now - at), r, t) for key, at, r, t in rows]

    # ---- the head's term and its standbys ----

    def term(self) -> int:
        """The term of the head that wrote this state: 1 for a first head, one more at each take-over."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'term'").fetchone()
        return int(row[0]) if row is not None else 1

    def set_term(self, term: int) -> None:
        with self._db:
            self._put_meta("term", str(term))

    def standbys(self) -> list[str]:
        """HOST:PORT of the standby heads that followed this head (a head started again asks them
        first whether one leads now)."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'standbys'").fetchone()
        return [a for a in (row[0] if row else "").split(",") if a]

    def set_standbys(self, addresses: list[str]) -> None:
        with self._db:
            self._put_meta("standbys", ",".join(sorted(addresses)))

    def replace_all(self, snapshot: Snapshot) -> None:
        """A standby head writes what its leader holds (one transaction), and when it heard it."""
        with self._db:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            for table in ("deployments", "policies", "nodes", "grants", "api_keys", "key_spend"):  # tenants: below
                db.execute(f"DELETE FROM {table}")
            now = self._clock()
            for dep, switch in snapshot.desired.deployments:
                to = None if switch is None else switch.model_dump_json()
                db.execute("INSERT INTO deployments VALUES (?, ?, ?, ?)", (dep.name, dep.model_dump_json(), to, now))
            self._put_policies(snapshot.desired.policies)
            if snapshot.desired.tenants is not None:
                self._put_tenants(snapshot.desired.tenants)
            else:  # the leader never set any
                db.execute("DELETE FROM tenants")
                db.execute("DELETE FROM meta WHERE key = 'tenants_set'")
            db.executemany("INSERT INTO nodes VALUES (?, 'cpu', ?)", [(n, now) for n in snapshot.desired.nodes])
            db.executemany(
                "INSERT INTO grants VALUES (?, ?, ?, ?)", [(k, now - ago, r, t) for k, ago, r, t in snapshot.grants]
            )
            db.executemany("INSERT INTO api_keys VALUES (?, ?)", snapshot.keys)
            db.executemany("INSERT INTO key_spend VALUES (?, ?, ?)", snapshot.key_spend)
            self._put_meta("term", str(snapshot.term))
            self._put_meta("synced_at", str(now))

    def synced_at(self) -> float | None:
        """When a standby last wrote its leader's state (wall time), if ever."""
        row = self._db.execute("SELECT value FROM meta WHERE key = 'synced_at'").fetchone()
        return float(row[0]) if row is not None else None

    def snapshot(self, window_s: float = 86400.0) -> Snapshot:
        """What a standby needs to take over: the desired state, recent grants, the term."""
        keys = self._db.execute("SELECT id, spec FROM api_keys ORDER BY id").fetchall()
        spend = self._db.execute("SELECT key_id, period_start, spent_nanos FROM key_spend").fetchall()
        return Snapshot(self.load(), self.grants(window_s), self.term(), keys, spend)

    def set_tenants(self, tenants: list[Tenant]) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._put_tenants(tenants)

    # ---- reads ----

    def load(self) -> DesiredState:
        """Everything the file holds; a row this version cannot read is refused naming it."""
        deployments = []
        for name, spec, switch in self._db.execute("SELECT name, spec, switch_to FROM deployments ORDER BY rowid"):
            dep = self._model(Deployment, spec, f"deployment {name!r}")
            to = None if switch is None else self._model(Deployment, switch, f"the version switch of {name!r}")
            deployments.append((dep, to))
        routes, cascades = [], []
        for name, kind, spec in self._db.execute("SELECT name, kind, spec FROM policies ORDER BY rowid"):
            if kind == "route":
                routes.append(self._model(RoutePolicy, spec, f"route {name!r}"))
            else:
                cascades.append(self._model(Cascade, spec, f"cascade {name!r}"))
        tenants: list[Tenant] | None = None
        if self._db.execute("SELECT 1 FROM meta WHERE key = 'tenants_set'").fetchone():
            rows = self._db.execute("SELECT spec FROM tenants ORDER BY position").fetchall()
            tenants = [self._model(Tenant, spec, "a tenant") for (spec,) in rows]
        nodes = [node_id for (node_id,) in self._db.execute("SELECT node_id FROM nodes ORDER BY node_id")]
        return DesiredState(deployments, Policies(routes=tuple(routes), cascades=tuple(cascades)), tenants, nodes)

    def _model(self, cls: type[M], spec: str, what: str) -> M:
        try:
            return cls.model_validate_json(spec)
        except ValueError as exc:
            first = str(exc).splitlines()[0]
            raise self._refused(f"{what} cannot be read: {first}") from None


def record(state: HeadState | None, change: Callable[[HeadState], None]) -> InternalError | None:
    """Write `change` to `state` (nothing to do without one); the error to answer the change with
    when it could not be recorded (it must then not be carried out)."""
    if state is None:
        return None
    try:
        change(state)
    except (sqlite3.Error, OSError) as exc:
        return InternalError(f"the change could not be recorded in {state.path}: {exc}", field="node.state_dir")
    return None


def open_state(state_dir: str) -> tuple[HeadState | None, ErrorInfo | None]:
    """The state of `state_dir` for an actor that records changes, or the error to answer with."""
    try:
        return HeadState(state_dir), None
    except ConfigError as exc:
        return None, exc.info()
