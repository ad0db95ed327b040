"""The CLI scripts against a running node: deploy, list, status, chat, undeploy; undeploy lets
in-flight requests finish and then the runner processes exit; bad input prints a clear error;
status shows where each node and replica runs, node health, restarts and isolated replicas."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from atomr.client import Client
from atomr.cluster.system import system_processes
from atomr.core.errors import InferenceError
from atomr.models import builtin_model_dir
from tests.conftest import REPO, Node, node_env

SCRIPTS = REPO / "scripts"


def cli(node: Node, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / f"atomr-{name}"), "--address", node.address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=node_env(),
        stdin=subprocess.DEVNULL,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def empty_node() -> Node:
    node = Node()
    yield node
    assert node.stop() == []


def test_help_is_there() -> None:
    for name in ("deploy", "undeploy", "list", "status", "chat"):
        out = subprocess.run(
            [sys.executable, str(SCRIPTS / f"atomr-{name}"), "--help"], capture_output=True, text=True, env=node_env()
        )
        assert out.returncode == 0 and "usage:" in out.stdout


def test_deploy_list_chat_undeploy_drains_in_flight_requests(empty_node: Node, tmp_path: Path) -> None:
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(
        "deployments:\n"
        "  - name: cli-tiny\n"
        "    model: builtin:tiny-llama\n"
        "    replicas: 2\n"
        "    limits: {max_inflight_per_replica: 4}\n"
        "    engine: {intra_op_threads: 1, max_batch_size: 4}\n"
    )
    out = cli(empty_node, "deploy", str(cfg))
    assert "cli-tiny" in out.stdout and "2/2 replicas ready" in out.stdout
    listed = json.loads(cli(empty_node, "list", "--json").stdout)
    assert [d["name"] for d in listed] == ["cli-tiny"] and listed[0]["state"] == "ready"
    status = json.loads(cli(empty_node, "status", "--json").stdout)
    pids = [r["pid"] for d in status["deployments"] for r in d["replicas"]]
    assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
    assert cli(empty_node, "chat", "cli-tiny", "Hello").stdout.strip()

    # Keep the replicas busy, then undeploy while requests are streaming and queued.
    results: list[object] = []
    first_chunk = threading.Event()
    with Client(empty_node.address) as client:

        def stream_one() -> None:
            try:
                text = ""
                for chunk in client.stream("cli-tiny", prompt="Once upon a time", max_tokens=200):
                    first_chunk.set()
                    text += chunk.text
                results.append(text)
            except InferenceError as exc:
                results.append(exc)

        threads = [threading.Thread(target=stream_one) for _ in range(24)]
        for t in threads:
            t.start()
        assert first_chunk.wait(30)
        out = cli(empty_node, "undeploy", "cli-tiny")
        assert "undeployed cli-tiny" in out.stdout
        for t in threads:
            t.join(60)
    assert len(results) == 24
    assert all(isinstance(r, str) and r for r in results), [r for r in results if not isinstance(r, str)]
    assert len(set(results)) == 1  # greedy: every in-flight request finished with the full answer
    deadline = time.time() + 10
    while time.time() < deadline and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.05)
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
    assert json.loads(cli(empty_node, "list", "--json").stdout) == []
    # A model that is gone is not found.
    gone = cli(empty_node, "chat", "cli-tiny", "Hello", check=False)
    assert gone.returncode == 1 and "not_found" in gone.stderr


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("deployments:\n  - name: a\n    model: [oops\n", "invalid YAML at line"),
        ("deployments:\n  - {name: a, model: builtin:tiny-llama, runtime: quantum}\n", "unknown runtime 'quantum'"),
        ("deployments:\n  - {name: a, model: ./no/such/dir, runtime: ort}\n", "model files not found"),
        ("deployments:\n  - {name: a, model: builtin:tiny-llama, replicas: -2}\n", "replicas"),
    ],
)
def test_deploy_rejects_bad_files_with_a_clear_message(
    empty_node: Node, tmp_path: Path, content: str, words: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    out = cli(empty_node, "deploy", str(bad), check=False)
    assert out.returncode == 1
    assert words in out.stderr and "bad.yaml" in out.stderr
    assert "Traceback" not in out.stderr


def test_undeploy_of_an_unknown_name_is_not_found(empty_node: Node) -> None:
    out = cli(empty_node, "undeploy", "nothing-here", check=False)
    assert out.returncode == 1 and "not_found" in out.stderr and "nothing-here" in out.stderr


def test_no_node_is_a_clear_error() -> None:
    from atomr.cluster.system import free_port

    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "atomr-list"), "--address", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        env=node_env(),
        timeout=60,
    )
    assert proc.returncode == 1 and "no atomr node is listening" in proc.stderr


def test_deploying_a_new_version_shows_the_switch_and_then_serves_it(empty_node: Node, tmp_path: Path) -> None:
    cfg = tmp_path / "swap.yaml"
    text = "deployments:\n  - {name: cli-swap, model: builtin:tiny-llama, version: '1'}\n"
    cfg.write_text(text)
    assert "v1" in cli(empty_node, "deploy", str(cfg)).stdout
    # a canary phase keeps the switch visible long enough to be seen (the tiny model starts in ~0.2 s)
    cfg.write_text(text.replace("version: '1'", "version: '2', rollout: {canary_share: 0.5, canary_s: 1.0}"))
    out = cli(empty_node, "deploy", str(cfg))
    assert "cli-swap" in out.stdout and "v2" in out.stdout and "ready" in out.stdout
    assert "[canary: 50% of new requests to version 2]" in out.stderr, out.stderr
    listed = json.loads(cli(empty_node, "list", "--json").stdout)
    assert [(d["name"], d["version"], d["swap"]) for d in listed] == [("cli-swap", "2", None)]
    cli(empty_node, "undeploy", "cli-swap")


def test_status_shows_nodes_and_replicas_with_where_health_restarts_and_isolation(tmp_path: Path) -> None:
    """`atomr-status` names each node (host, port, pid, GPUs, health) and each replica (node, host,
    pid, GPUs, state, restarts, error), as text and as JSON."""
    nofile = tmp_path / "no-graph"
    shutil.copytree(builtin_model_dir("tiny-llama") / "onnx", nofile)
    (nofile / "model.onnx").unlink()  # isolated at load, with no restart
    node = Node("--gpus", "5", "--node-id", "st-head")
    try:
        with Client(node.address) as client:
            tiny = {"model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}}
            client.deploy({"name": "st-gpu", "gpus_per_replica": 1, "supervision": {"backoff_initial_s": 0.05}, **tiny})
            client.deploy({"name": "st-broken", "model": str(nofile), "runtime": "ort", "fallbacks": ["st-gpu"]})
            (victim,) = next(d for d in client.status()["deployments"] if d.name == "st-gpu").replicas
            os.kill(victim.pid, signal.SIGKILL)
            deadline = time.time() + 20
            while True:  # restarted once, ready again in a new process
                (r,) = next(d for d in client.status()["deployments"] if d.name == "st-gpu").replicas
                if r.state == "ready" and r.pid != victim.pid:
                    break
                assert time.time() < deadline, r
                time.sleep(0.05)
        pids = {p.pid for p in system_processes(node.port)}

        text = cli(node, "status").stdout
        lines = text.splitlines()
        (node_line,) = [ln for ln in lines if ln.strip().startswith("st-head")]
        m = re.search(r"st-head\s+head\s+127\.0\.0\.1:(\d+) pid=(\d+) gpus=5 health=ok runtimes=\S*ort", node_line)
        assert m is not None, node_line
        assert int(m.group(1)) == node.port and int(m.group(2)) in pids
        dep_line = next(ln for ln in lines if ln.strip().startswith("st-broken"))
        assert re.search(r"st-broken\s+ort\s+v1\s+degraded\s+0/1 replicas ready", dep_line), dep_line
        gpu_line = next(ln for ln in lines if ln.strip().startswith("st-gpu-"))
        m = re.search(r"ready\s+node=st-head host=127\.0\.0\.1 pid=(\d+) gpus=5 inflight=0 restarts=1$", gpu_line)
        assert m is not None and int(m.group(1)) in pids and int(m.group(1)) != victim.pid, gpu_line
        broken_line = next(ln for ln in lines if ln.strip().startswith("st-broken-"))
        assert re.search(
            r"isolated\s+node=st-head host=127\.0\.0\.1 pid=0 gpus=- .*restarts=0  error: model file", broken_line
        )

        status = json.loads(cli(node, "status", "--json").stdout)
        (n,) = status["nodes"]
        assert (n["node_id"], n["role"], n["host"], n["port"], n["gpu_ids"], n["health"]) == (
            "st-head",
            "head",
            "127.0.0.1",
            node.port,
            ["5"],
            "ok",
        )
        assert n["pid"] in pids and 0 <= n["heartbeat_age_s"] < 2.5
        deps = {d["name"]: d for d in status["deployments"]}
        assert deps["st-broken"]["state"] == "degraded" and deps["st-gpu"]["state"] == "ready"
        (g,) = deps["st-gpu"]["replicas"]
        assert (g["state"], g["node_id"], g["host"], g["gpu_ids"], g["restarts"], g["visible_devices"]) == (
            "ready",
            "st-head",
            "127.0.0.1",
            ["5"],
            1,
            "5",
        )
        (b,) = deps["st-broken"]["replicas"]
        assert b["state"] == "isolated" and b["restarts"] == 0 and "model.onnx" in b["error"]
    finally:
        assert node.stop() == []
