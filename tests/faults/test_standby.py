"""Fault: the primary head killed whole, with a standby head following it (``--standby``).

A primary with an HTTP front, a cpu member node that knows both heads (``--join P,S``) and serves
a deployment, and a standby that follows the primary's state. Under mixed load (Client threads
and HTTP callers) every process of the primary is killed at once.

What must hold: the standby takes over (term 2), the member re-points to it and its replicas are
adopted (same processes: no engine load), a Client given both addresses and the standby's HTTP
front serve; every request ends once, with the expected text or a structured error. Then the old
primary, started again on its old state, finds the standby leading and follows it instead of
leading (its address does not answer; the leader lists it as its standby): a head with an older
term never acts as head. A rate-limited deployment on a fake provider is never over its limit
across the take-over (the provider counts the calls): the standby counts what it followed, and what the
old leader may have granted after its last snapshot as a full window spent.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import psutil
import pytest
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.cli import status_main
from atomr.client import Client
from atomr.cluster.head_state import HeadState
from atomr.cluster.system import free_port
from atomr.config import deployment_from_dict
from atomr.core.errors import RateLimitedError, UnavailableError
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI
from tests.faults.harness import MODEL, PROMPT, Load, deployment, tiny, wait_until, write_config
from tests.faults.test_head_restart import kill_head
from tests.multihost import Hosts

MAX_TOKENS = 24
PROVIDER_KEY = "sk-provider-" + "s" * 32
FAILOVER = {"failover_after_s": 2}


def synced(state: Path, name: str) -> bool:
    """Whether the standby's state file holds deployment `name` (it has followed the primary)."""
    s = HeadState(state)
    try:
        return any(d.name == name for d, _ in s.load().deployments)
    finally:
        s.close()


def test_the_standby_takes_over_and_the_old_primary_follows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p_port, s_port, p_http, s_http = free_port(), free_port(), free_port(), free_port()
    p_state, s_state = tmp_path / "p-state", tmp_path / "s-state"
    p_cfg = write_config(tmp_path / "p.yaml", http={"port": p_http, "request_timeout_s": 20}, node=FAILOVER)
    s_cfg = write_config(tmp_path / "s.yaml", http={"port": s_http, "request_timeout_s": 20}, node=FAILOVER)
    heads = f"127.0.0.1:{p_port},127.0.0.1:{s_port}"
    want = ort_greedy_reference(MODEL, PROMPT, MAX_TOKENS)
    nodes: list[Node] = []
    try:
        primary = Node(config=p_cfg, state_dir=p_state, port=p_port)
        nodes.append(primary)
        nodes.append(Node("--role", "cpu", "--join", heads, config=write_config(tmp_path / "m.yaml", node=FAILOVER)))
        standby = Node("--standby", primary.address, config=s_cfg, state_dir=s_state, port=s_port)
        nodes.append(standby)
        with Client(heads) as client:
            wait_until(lambda: len(client.status()["nodes"]) == 2, 60, "the member node joined")
            client.deploy(deployment_from_dict(tiny("far", replicas=2, placement={"role": "cpu"})))
            hosts = {r.pid: psutil.Process(r.pid).create_time() for r in deployment(client, "far").replicas}
            wait_until(lambda: synced(s_state, "far"), 30, "the standby followed the deployment")
            head = client.status()["head"]
            assert head["term"] == 1 and [s["address"] for s in head["standbys"]] == [f"127.0.0.1:{s_port}"]
            # short deadlines: requests in flight when the head dies may end at theirs
            load = Load(client, "far", PROMPT, want, MAX_TOKENS, kinds=("stream", "unary"), workers=4, timeout=6)
            try:
                assert load.first_chunk.wait(30)
                load.wait_for(8)
                killed = time.time()
                kill_head(primary)
                nodes.remove(primary)
                wait_until(lambda: standby.output().count("\nready\n") >= 2, 60, "the standby leads")
                led = time.time()
                print(f"the standby led {led - killed:.1f} s after the kill")
                load.wait_for(8, started_after=led)  # the same Client moved to the new head
            finally:
                load.stop()
        print(load.check({"unavailable", "timeout", "runner_crashed"}, before=led))
        assert "taking over, term 2" in standby.output()
        with Client(heads) as client:  # the primary does not answer: the standby does
            assert (client.host, client.port) == ("127.0.0.1", s_port)
            wait_until(lambda: deployment(client, "far").state == "ready", 30, "far served by the new leader")
            info = deployment(client, "far")
            assert {r.pid: psutil.Process(r.pid).create_time() for r in info.replicas} == hosts  # adopted
            assert client.generate("far", prompt=PROMPT, max_tokens=MAX_TOKENS).text == want
            assert client.status()["head"]["term"] == 2
            body = {"model": "far", "prompt": PROMPT, "max_tokens": MAX_TOKENS}
            answer = httpx.post(f"http://127.0.0.1:{s_http}/v1/completions", json=body, timeout=30)
            assert answer.status_code == 200 and answer.json()["choices"][0]["text"] == want
            # the old primary comes back on its old state: the standby it knew leads, so it follows
            old = Node(config=p_cfg, state_dir=p_state, port=p_port)
            nodes.append(old)
            assert f"standby of 127.0.0.1:{s_port}" in old.output()
            wait_until(lambda: len(client.status()["head"]["standbys"]) == 1, 30, "the old primary follows")
            client.deploy(deployment_from_dict(tiny("later")))
            wait_until(lambda: synced(p_state, "later"), 30, "the old primary followed the new deployment")
        capsys.readouterr()
        assert status_main(["--address", heads]) == 0
        shown = capsys.readouterr().out
        assert f"head: 127.0.0.1:{s_port} leads, term 2; standby: 127.0.0.1:{p_port} (last sync" in shown, shown
        with pytest.raises(UnavailableError):  # nothing answers at the old primary's address
            Client(f"127.0.0.1:{p_port}")
    finally:
        left = [pid for node in reversed(nodes) for pid in node.stop()]  # every node stopped, then checked
        assert left == []


def test_a_rate_limit_is_not_exceeded_across_a_take_over(tmp_path: Path) -> None:
    key_file = tmp_path / "provider.key"
    key_file.write_text(PROVIDER_KEY)
    with FakeOpenAI(api_key=PROVIDER_KEY) as fake:
        engine = {"api_base": fake.url + "/v1", "api_key_file": str(key_file), "retry": {"max_attempts": 1}}
        limited = {"name": "limited", "model": "openai/gpt-fake", "engine": engine, "rate_limits": {"rpm": 4}}
        p_port, s_port = free_port(), free_port()
        heads = f"127.0.0.1:{p_port},127.0.0.1:{s_port}"
        primary = Node(config=write_config(tmp_path / "p.yaml", limited, node=FAILOVER), port=p_port)
        standby = Node(
            "--standby", primary.address, config=write_config(tmp_path / "s.yaml", node=FAILOVER), port=s_port
        )
        try:
            with Client(heads) as client:
                for _ in range(3):
                    client.generate("limited", prompt="Hello", max_tokens=4)
            wait_until(lambda: synced(standby.state_dir, "limited"), 30, "the standby followed")
            kill_head(primary)
            wait_until(lambda: standby.output().count("\nready\n") >= 2, 60, "the standby leads")
            with Client(heads) as client:
                asked = [client.make_request("limited", "Hello", max_tokens=4) for _ in range(4)]
                results = client.generate_many(asked)
            # the old leader may have granted more after its last snapshot: the window counts as spent
            assert all(isinstance(r, RateLimitedError) for r in results), results
            assert fake.count("/completions") == 3
        finally:
            left = standby.stop()
            primary.stop()  # the killed primary
            assert left == []


def test_the_standby_takes_over_across_real_addresses(tmp_path: Path) -> None:
    """The same across hosts: head, standby and a cpu node each in a network namespace of its own;
    the client runs on the host of the head it talks to."""
    hosts = Hosts(["head", "standby", "cpu"], tmp_path)
    try:
        cfg = write_config(tmp_path / "h.yaml", node=FAILOVER)
        head = hosts.node("head", config=cfg, state_dir=tmp_path / "h-state")
        standby_address = f"{hosts.addr('standby')}:19500"
        hosts.node("cpu", "--role", "cpu", "--join", f"{head.address},{standby_address}", config=cfg)
        standby = hosts.node("standby", "--standby", head.address, config=cfg, state_dir=tmp_path / "s-state")
        first = hosts.run("head", ["-m", "tests.multihost_client", head.address, "deploy-far"])
        assert first.returncode == 0, first.stderr[-3000:]
        before = json.loads(first.stdout.strip().splitlines()[-1])
        wait_until(lambda: synced(tmp_path / "s-state", "far"), 30, "the standby followed")
        kill_head(head)
        hosts.nodes.remove(head)
        wait_until(lambda: standby.output().count("\nready\n") >= 2, 60, "the standby leads")
        again = hosts.run("standby", ["-m", "tests.multihost_client", standby_address, "check-far"])
        assert again.returncode == 0, again.stderr[-3000:]
        after = json.loads(again.stdout.strip().splitlines()[-1])
        want = ort_greedy_reference(MODEL, PROMPT, 16)
        assert after["hosts"] == before["hosts"] and after["text"] == before["text"] == want  # adopted
        assert after["nodes"] == ["cpu", "standby"]
    finally:
        assert hosts.close() == []


def test_after_a_partition_the_old_head_steps_down(tmp_path: Path) -> None:
    """The standby is cut off from the head (a network partition, not a dead head): it takes over.
    When the network heals, the old head finds its standby leading and steps down to follow it,
    so that only one head acts."""
    hosts = Hosts(["head", "standby"], tmp_path)
    try:
        cfg = write_config(tmp_path / "h.yaml", tiny("base"), node=FAILOVER)
        head = hosts.node("head", config=cfg, state_dir=tmp_path / "h-state")
        standby = hosts.node("standby", "--standby", head.address, config=cfg, state_dir=tmp_path / "s-state")
        wait_until(lambda: synced(tmp_path / "s-state", "base"), 30, "the standby followed")
        hosts.cut("standby")
        wait_until(lambda: "taking over, term 2" in standby.output(), 60, "the cut-off standby takes over")
        wait_until(lambda: standby.output().count("\nready\n") >= 2, 60, "the standby leads")
        assert "steps down" not in head.output()  # cut off, the head cannot know yet
        hosts.heal("standby")
        wait_until(lambda: "this head steps down and follows it" in head.output(), 30, "the old head steps down")
        wait_until(lambda: "standby of" in head.output().split("steps down")[-1], 30, "the old head follows")
        wait_until(lambda: HeadState(tmp_path / "h-state").term() == 2, 30, "the old head took the leader's term")
    finally:
        assert hosts.close() == []
