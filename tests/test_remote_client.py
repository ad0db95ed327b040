"""The Python client and the CLI from a host that runs no node, across real addresses.

Three hosts, each a network namespace with its own address (`tests/multihost.py`): A runs the
head, B a gpu-role node joined to it, C only clients. From C, `atomr.Client` (a light member of
the convention: `atomr.cluster.light_member`) deploys a deployment placed on B, streams from it
and undeploys it; `atomr-status` shows both nodes; a client with another cluster key is refused
at once; and nothing of C's is left once its clients closed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.cluster.keys import new_key_file
from atomr.models import builtin_model_dir
from tests.conftest import REPO, node_env
from tests.faults.harness import RECOVERY_S, http_url, process_gone
from tests.multihost import Hosts

PROMPT = "Once upon a time"


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def start(hosts: Hosts, *args: str) -> subprocess.Popen[str]:
    """A scenario of `tests.remote_client` running on the client host; its output read as it comes."""
    return subprocess.Popen(
        [*hosts.prefix("client"), sys.executable, "-m", "tests.remote_client", *args],
        cwd=REPO,
        env=node_env(ATOMR_CLUSTER_KEY_FILE=str(hosts.key_file)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_client_on_a_host_without_a_node(tmp_path: Path) -> None:
    hosts = Hosts(["head", "gpu", "client"], tmp_path)
    try:
        head = hosts.node("head", "--role", "head")
        # the gpu node binds every address and advertises its own
        hosts.node("gpu", "--role", "gpu", "--gpus", "0", "--join", f"{hosts.addr('head')}:19500", bind="0.0.0.0")
        address = f"{hosts.addr('head')}:19500"
        run = hosts.run("client", ["-m", "tests.remote_client", address, "deploy-stream-undeploy"], timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        seen, children = lines(run.stdout)
        want = ort_greedy_reference(builtin_model_dir("tiny-llama"), PROMPT, 16)
        assert seen["nodes"] == ["gpu", "head"] and seen["placed"] == ["gpu"], seen
        assert seen["text"] == want and seen["whole"] == want, seen
        assert seen["undeployed"] == "far" and "far" not in seen["left"], seen
        assert children["children"] == [], children  # the light member stopped with the last client
        assert hosts.processes("client") == []  # and nothing of C's is left
        status = hosts.run("client", ["scripts/atomr-status", "--address", address])
        assert status.returncode == 0, status.stderr
        nodes = status.stdout.split("deployments:")[0]
        assert " gpu " in nodes and " head " in nodes, status.stdout
        assert f"{hosts.addr('gpu')}:19500" in nodes, status.stdout  # the address it advertises
        assert hosts.processes("client") == []
        # another cluster key: refused at once, naming the address; nothing started
        other = tmp_path / "other.key"
        new_key_file(other)
        refused = hosts.run("client", ["-m", "tests.remote_client", address, "wrong-key", str(other)])
        assert refused.returncode == 0, refused.stderr
        said, children = lines(refused.stdout)
        assert said["kind"] == "auth" and address in said["message"] and said["seconds"] < 5, said
        assert children["children"] == [] and hosts.processes("client") == []
        assert head.proc.poll() is None
    finally:
        assert hosts.close() == []


def test_a_dead_gpu_host_under_load_from_a_client_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """B's whole actor system killed (every process in its namespace, as a host that dies) while
    C loads the deployment on it: the fault suite's invariants hold in C, whose client sees
    structured errors only, and A serves the deployment again within 15 s."""
    monkeypatch.setenv("ATOMR_NODE_TIMEOUT_S", "3")
    hosts = Hosts(["head", "gpu", "client"], tmp_path)
    try:
        front = tmp_path / "head.yaml"  # the HTTP front on the head's address, for the client host
        front.write_text(f"http: {{bind: {hosts.addr('head')}, port: 0, allow_unauthenticated: true}}\n")
        head = hosts.node("head", "--role", "head", config=front)
        hosts.node("gpu", "--role", "gpu", "--join", f"{hosts.addr('head')}:19500")
        flag = tmp_path / "killed"
        address, http = f"{hosts.addr('head')}:19500", http_url(head)
        scenario = start(hosts, address, "node-fault", str(flag), http)
        try:
            assert scenario.stdout is not None
            said = [json.loads(scenario.stdout.readline()) for _ in range(2)]
            assert said == [{"placed": ["gpu"]}, {"loaded": True}], said
            doomed = hosts.processes("gpu")
            for p in doomed:
                p.kill()
            flag.write_text(str(time.time()))
            for p in doomed:
                assert process_gone(p.pid)
            out, err = scenario.communicate(timeout=240)
        finally:
            if scenario.poll() is None:
                scenario.kill()
        assert scenario.returncode == 0, out + err
        result, children = lines(out)
        print(result)
        assert result["recovered_s"] < RECOVERY_S and result["served_again_s"] < RECOVERY_S, result
        assert result["ok"] > 0 and children["children"] == [], (result, children)
        assert hosts.processes("client") == []
    finally:
        assert hosts.close() == []


def test_the_only_gpu_host_dies_and_a_new_one_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The supervision test of a dead node with no spare GPU, across hosts: the deployment is
    degraded with its replica isolated, every request had one end, and a gpu host that joins later
    takes the replica."""
    monkeypatch.setenv("ATOMR_NODE_TIMEOUT_S", "3")
    hosts = Hosts(["head", "gpu-a", "gpu-c", "client"], tmp_path)
    try:
        hosts.node("head", "--role", "head")
        join = f"{hosts.addr('head')}:19500"
        hosts.node("gpu-a", "--role", "gpu", "--gpus", "0", "--join", join)
        scenario = start(hosts, join, "no-spare-gpu", str(tmp_path))
        try:
            assert scenario.stdout is not None
            assert json.loads(scenario.stdout.readline()) == {"streaming": True}
            doomed = hosts.processes("gpu-a")
            for p in doomed:
                p.kill()
            for p in doomed:
                assert process_gone(p.pid)
            (tmp_path / "killed").write_text("1")
            degraded = json.loads(scenario.stdout.readline())
            hosts.node("gpu-c", "--role", "gpu", "--gpus", "7", "--join", join)
            (tmp_path / "joined").write_text("1")
            out, err = scenario.communicate(timeout=240)
        finally:
            if scenario.poll() is None:
                scenario.kill()
        assert scenario.returncode == 0, out + err
        assert "no node can host it" in (degraded["error"] or "") and degraded["restarts"] == 1, degraded
        assert degraded["state"] == "degraded" and degraded["finals"] == [1] * 80, degraded
        assert all(end in (["runner_crashed", True], ["unavailable", False], ["ok", True]) for end in degraded["ends"])
        assert any(end[0] != "ok" for end in degraded["ends"]) and degraded["refused"][0] == "unavailable"
        assert degraded["refused"][1] < 5, degraded
        restored, children = lines(out)
        assert (restored["node"], restored["gpus"], restored["error"], restored["state"]) == (
            "gpu-c",
            ["7"],
            None,
            "ready",
        ), restored
        assert restored["text"] and children["children"] == []
    finally:
        assert hosts.close() == []
