"""The head's durable desired state (atomr/cluster/head_state.py), how a starting head merges it with
its config (atomr/node/main.py `merge_desired`), and the validated ``node:`` section.

The state file: what is written is read back (from another connection, as another process
would); a file from an older schema is migrated; a newer schema, a file that is not SQLite, a
damaged one and a row this version cannot read are refused naming the file and the problem, and
the file is left byte for byte as it was. A real node refuses to start on such a file (exit 2,
the message on stderr), and refuses a misspelt ``node:`` key.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from atomr.cluster.head_state import MIGRATIONS, SCHEMA_VERSION, STATE_FILE, DesiredState, HeadState
from atomr.cluster.key_store import KeyStore
from atomr.config import deployment_from_dict
from atomr.core.errors import ConfigError
from atomr.core.keys import ApiKey, KeyRequest
from atomr.core.policies import Cascade, CascadeTier, Policies, RoutePolicy
from atomr.core.spend import SpendRecord
from atomr.core.tenants import Tenant, TenantTable, new_key
from atomr.node.main import NodeConfig, merge_desired, read_config
from atomr.node.settings import NodeSettings
from tests.conftest import REPO, node_env

TINY = {"name": "tiny", "model": "builtin:tiny-llama"}


def dep(**fields: object) -> object:
    return deployment_from_dict({**TINY, **fields})


def tenant(name: str) -> Tenant:
    return Tenant(name=name, key_sha256=new_key()[1], models=("tiny",), max_concurrency=3)


def test_what_is_written_is_read_back_by_another_connection(tmp_path: Path) -> None:
    writer = HeadState(tmp_path)
    v1, v2, other = dep(version="1"), dep(version="2"), dep(name="other", aliases=["o"])
    writer.put_deployment(v1)
    writer.put_deployment(other)
    writer.set_switch("tiny", v2)  # a version switch under way
    route = RoutePolicy(name="main", policy="fixed", deployments=("tiny", "other"))
    cascade = Cascade(
        name="cheap", tiers=(CascadeTier(deployment="tiny", threshold=-0.5), CascadeTier(deployment="other"))
    )
    writer.set_policies(Policies(routes=(route,), cascades=(cascade,)))
    writer.set_tenants([tenant("a"), tenant("b")])
    state = HeadState(tmp_path).load()  # as the next head's process reads it
    assert state.deployments == [(v1, v2), (other, None)]
    assert state.policies.routes == (route,) and state.policies.cascades == (cascade,)
    assert state.tenants is not None and [t.name for t in state.tenants] == ["a", "b"]
    writer.put_deployment(v2)  # the switch ended
    writer.remove_deployment("other")
    writer.set_policies(Policies(), remove=["cheap"])
    again = HeadState(tmp_path).load()
    assert again.deployments == [(v2, None)] and again.policies == Policies(routes=(route,))
    assert HeadState(tmp_path / "fresh").load() == DesiredState([], Policies(), None)  # never set: None


def test_an_older_schema_is_migrated(tmp_path: Path) -> None:
    """A file of schema version 1 (before member nodes and rate-limit grants were recorded) keeps
    its rows and gains what the later versions add."""
    path = tmp_path / STATE_FILE
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for statement in MIGRATIONS[1]:
        db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    db.execute("INSERT INTO deployments VALUES ('tiny', ?, NULL, 0)", (dep().model_dump_json(),))  # type: ignore[attr-defined]
    db.commit()
    db.close()
    state = HeadState(tmp_path)
    state.put_node("gpu-1", "gpu")
    state.add_grant("org", 2, 10)
    (version,) = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    loaded = HeadState(tmp_path).load()
    assert int(version) == SCHEMA_VERSION and loaded.deployments == [(dep(), None)] and loaded.nodes == ["gpu-1"]
    assert [(key, r, t) for key, _, r, t in HeadState(tmp_path).grants(60)] == [("org", 2, 10)]


def damaged_files(tmp_path: Path) -> list[tuple[str, Path, str]]:
    """(what, state folder, the problem its refusal names), each folder holding one bad file."""
    cases = []
    newer = tmp_path / "newer"
    HeadState(newer).close()
    db = sqlite3.connect(newer / STATE_FILE)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    cases.append(("newer", newer, f"schema version {SCHEMA_VERSION + 1}"))
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / STATE_FILE).write_bytes(b"\x00this is not a database\xff" * 100)
    cases.append(("garbage", garbage, "not a SQLite database"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    db = sqlite3.connect(foreign / STATE_FILE)
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    cases.append(("another app's", foreign, "not an atomr state file"))
    torn = tmp_path / "torn"
    written = HeadState(torn)
    written.put_deployment(dep())
    written.close()  # the last connection: its log is folded into the file
    data = (torn / STATE_FILE).read_bytes()
    page = 4096  # the first page (the header, the schema) kept: the tables' pages overwritten
    (torn / STATE_FILE).write_bytes(data[:page] + bytes(range(256)) * ((len(data) - page) // 256))
    cases.append(("torn", torn, "damaged"))
    bad_row = tmp_path / "bad-row"
    HeadState(bad_row).put_deployment(dep())
    db = sqlite3.connect(bad_row / STATE_FILE)
    db.execute("""UPDATE deployments SET spec = '{"name": "tiny", "replicaz": 2}'""")
    db.commit()
    db.close()
    cases.append(("unreadable row", bad_row, "deployment 'tiny' cannot be read"))
    return cases


def test_a_damaged_or_newer_file_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    for what, folder, problem in damaged_files(tmp_path):
        before = (folder / STATE_FILE).read_bytes()
        with pytest.raises(ConfigError) as refused:
            HeadState(folder).load()
        msg = refused.value.message
        assert str(folder / STATE_FILE) in msg and problem in msg and refused.value.field == "node.state_dir", (
            what,
            msg,
        )
        assert (folder / STATE_FILE).read_bytes() == before, what


def test_a_node_refuses_to_start_on_a_bad_state_file_or_node_key(tmp_path: Path) -> None:
    _, folder, problem = damaged_files(tmp_path)[0]
    before = (folder / STATE_FILE).read_bytes()
    run = subprocess.run(
        [sys.executable, "-m", "atomr.node", "--state-dir", str(folder), "--port", "1"],
        cwd=REPO,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and str(folder / STATE_FILE) in run.stderr and problem in run.stderr, run.stderr
    assert (folder / STATE_FILE).read_bytes() == before
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("node: {state_dirr: /tmp/x, portt: 5}\n")
    run = subprocess.run(
        [sys.executable, "-m", "atomr.node", "--config", str(cfg)],
        cwd=REPO,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "node.state_dirr: unknown setting" in run.stderr, run.stderr
    assert "node.portt: unknown setting" in run.stderr, run.stderr


def test_the_node_section_is_validated(tmp_path: Path) -> None:
    def config(text: str) -> NodeConfig:
        path = tmp_path / "c.yaml"
        path.write_text(text)
        return read_config(argparse.Namespace(config=str(path), http_port=None))

    for text, field in [
        ("node: {state_dirr: /x}", "node.state_dirr"),
        ("node: {port: 0}", "node.port"),
        ("node: {port: seven}", "node.port"),
        ("node: {log_level: loud}", "node.log_level"),
        ("node: [1, 2]", "node"),
    ]:
        with pytest.raises(ConfigError) as refused:
            config(text)
        assert refused.value.field == field and field in refused.value.message, (text, refused.value.message)
    good = config("node: {port: 19500, bind: 127.0.0.1, log_level: info, state_dir: s, cluster_key_file: k}")
    assert good.settings == NodeSettings(
        port=19500, bind="127.0.0.1", log_level="info", state_dir="s", cluster_key_file="k"
    )


def node_config(
    deployments: list[object], policies: Policies | None = None, tenants: list[Tenant] | None = None
) -> NodeConfig:
    sections = {"deployments"} | ({"tenants"} if tenants is not None else set())
    table = TenantTable(tenants or [])
    return NodeConfig(NodeSettings(), deployments, policies or Policies(), None, table, frozenset(sections))  # type: ignore[arg-type]


def test_the_state_directory_wins_over_the_config_for_what_both_name() -> None:
    v1, v2, v3 = dep(version="1"), dep(version="2"), dep(version="3")
    other, new = dep(name="other"), dep(name="new")
    route = RoutePolicy(name="main", policy="fixed", deployments=("tiny",))
    desired = DesiredState([(v2, v3), (other, None)], Policies(routes=(route,)), [tenant("kept")])
    changed_route = RoutePolicy(name="main", policy="fixed", deployments=("tiny", "other"))
    plan = merge_desired(node_config([v1, new], Policies(routes=(changed_route,))), desired)
    # the recorded deployments first (the switch under way follows its deployment), then the new one
    assert plan.deployments == [v2, v3, other, new]
    assert plan.policies.routes == (route,)
    assert any("version 2" in n and "tiny" in n for n in plan.notes) and any("route main" in n for n in plan.notes)
    assert plan.tenants is not None and [t.name for t in plan.tenants] == ["kept"]  # the config has no tenants:
    fresh = tenant("fresh")
    assert merge_desired(node_config([], tenants=[fresh]), desired).tenants == [fresh]  # it has: the config's
    first_start = merge_desired(node_config([v1, new]), None)
    assert first_start.deployments == [v1, new] and first_start.notes == [] and first_start.tenants is None


def test_a_snapshot_written_by_a_standby_is_the_leaders_state(tmp_path: Path) -> None:
    leader = HeadState(tmp_path / "leader")
    leader.put_deployment(dep(version="2"))
    leader.set_switch("tiny", dep(version="3"))
    leader.set_policies(Policies(routes=(RoutePolicy(name="main", policy="fixed", deployments=("tiny",)),)))
    leader.set_tenants([tenant("a")])
    leader.put_node("gpu-1", "gpu")
    leader.add_grant("org", 2, 10)
    leader.set_term(4)
    leader.set_standbys(["10.0.0.2:19500"])
    leader.close()
    keys = KeyStore(str(tmp_path / "leader"))  # the key keeper's tables, in the same file
    made = ApiKey.made(KeyRequest(tenant="t", budget_usd=1.0), "0" * 64, 5.0)
    keys.put_key(made)
    keys.record([SpendRecord("r1", 6.0, made.id, "t", "tiny", 1, 2, 0, 300, 0.1, "ok")], {made.id: (5.0, 300)})
    keys.close()
    leader = HeadState(tmp_path / "leader")
    standby = HeadState(tmp_path / "standby")
    standby.put_deployment(dep(name="stale"))  # what the standby had is replaced, not merged
    standby.replace_all(leader.snapshot())
    mine, theirs = standby.load(), leader.load()
    assert mine.deployments == theirs.deployments and mine.policies == theirs.policies
    assert mine.tenants == theirs.tenants and mine.nodes == ["gpu-1"] and standby.term() == 4
    assert [(k, r, t) for k, _, r, t in standby.grants(60)] == [("org", 2, 10)]
    assert standby.synced_at() is not None and leader.synced_at() is None
    assert leader.standbys() == ["10.0.0.2:19500"] and standby.standbys() == []
    standby.close()
    taken_over = KeyStore(str(tmp_path / "standby"))  # keys and budgets survive a take-over
    assert taken_over.keys() == [made] and taken_over.spent() == {made.id: (5.0, 300)}
    assert taken_over.summary("key") == []  # the spend log stays with the head that wrote it
    taken_over.close()


def test_a_keys_grants_that_left_its_window_are_dropped(tmp_path: Path) -> None:
    now = [1000.0]
    state = HeadState(tmp_path, clock=lambda: now[0])
    state.add_grant("org", 1, 5, window_s=60)
    state.add_grant("other", 1, 5, window_s=60)
    now[0] += 61
    state.add_grant("org", 2, 7, window_s=60)  # org's first grant left its window: dropped
    assert sorted((k, r, t) for k, _, r, t in state.grants(3600)) == [("org", 2, 7), ("other", 1, 5)]
