"""Supervision with real processes: a replica killed with SIGKILL under load is answered for and
comes back; a replica that keeps failing at load is isolated and its fallback serves; one whose
model files are missing (or that runs out of memory) at load is isolated at once, with no restart;
replicas are placed one per GPU across joined nodes; a whole node killed under load is noticed and
its replicas move to the other node, or, with no room left, the deployment is degraded until a new
node joins."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import yaml
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.actors.coordinator import is_permanent
from atomr.client import Client
from atomr.cluster.system import system_processes
from atomr.core.errors import InferenceError, InternalError, NotFoundError, RunnerCrashedError, as_error_info
from atomr.models import builtin_model_dir
from tests.conftest import Node
from tests.fakes.openai_server import FakeOpenAI

MODEL = builtin_model_dir("tiny-llama")
PROMPT = "Once upon a time"


def config(path: Path, *deployments: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({"deployments": list(deployments)}))
    return path


def tiny(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}, **fields}


def replicas(client: Client, name: str) -> list[Any]:
    return next(d for d in client.status()["deployments"] if d.name == name).replicas


def isolated_replica(client: Client, name: str) -> Any:
    """The one replica of deployment `name`, which must be degraded with that replica isolated."""
    dep = next(d for d in client.list_deployments() if d.name == name)
    assert dep.state == "degraded"
    (replica,) = dep.replicas
    assert replica.state == "isolated"
    return replica


def wait_for(predicate: Any, timeout: float, step: float = 0.05) -> float:
    """Seconds until predicate() is true; fails after `timeout`."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, "condition not reached in time"
        time.sleep(step)
    return time.monotonic() - start


class Tracker:
    """Streams requests in threads and records, per request, chunks seen and its one outcome."""

    def __init__(self, client: Client, model: str, n: int, max_tokens: int) -> None:
        self.client, self.model, self.max_tokens = client, model, max_tokens
        self.chunks = [0] * n
        self.outcome: list[Any] = [None] * n
        self.finals = [0] * n
        self.streaming = threading.Semaphore(0)
        self.pool = ThreadPoolExecutor(n)
        self.futures = [self.pool.submit(self._one, i) for i in range(n)]

    def _one(self, i: int) -> None:
        text = ""
        try:
            for chunk in self.client.stream(self.model, prompt=PROMPT, max_tokens=self.max_tokens):
                if self.chunks[i] == 0:
                    self.streaming.release()
                self.chunks[i] += 1
                text += chunk.text
            self.outcome[i] = text
        except InferenceError as exc:
            self.outcome[i] = exc
        self.finals[i] += 1

    def wait(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for f in self.futures:
            try:
                f.result(max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                stuck = [(i, self.chunks[i]) for i, o in enumerate(self.outcome) if o is None]
                raise AssertionError(f"requests without a final answer (index, chunks seen): {stuck}") from None
        self.pool.shutdown()


def test_sigkill_of_a_runner_host_under_load(tmp_path: Path) -> None:
    cfg = config(
        tmp_path / "k.yaml",
        tiny("k", replicas=2, limits={"max_inflight_per_replica": 8}, supervision={"backoff_initial_s": 0.05}),
    )
    node = Node(config=cfg)
    try:
        want = ort_greedy_reference(MODEL, PROMPT, 200)
        with Client(node.address) as client:
            victim = replicas(client, "k")[0]
            track = Tracker(client, "k", 100, 200)
            for _ in range(5):  # a few requests are streaming: kill one replica now
                assert track.streaming.acquire(timeout=60)
            os.kill(victim.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            back = wait_for(
                lambda: any(
                    r.replica_id == victim.replica_id and r.state == "ready" and r.pid != victim.pid
                    for r in replicas(client, "k")
                ),
                timeout=10,
            )
            assert time.monotonic() - killed_at < 2.0, back
            track.wait(60)
            assert track.finals == [1] * 100  # exactly one final answer each
            for chunks, outcome in zip(track.chunks, track.outcome, strict=True):
                if isinstance(outcome, InferenceError):
                    assert isinstance(outcome, RunnerCrashedError) and chunks > 0, (chunks, outcome)
                else:
                    assert outcome == want  # complete, and no chunk twice
            crashed = sum(isinstance(o, InferenceError) for o in track.outcome)
            assert crashed < 100
            restarted = next(r for r in replicas(client, "k") if r.replica_id == victim.replica_id)
            assert restarted.restarts == 1
            assert not psutil.pid_exists(victim.pid) or _zombie(victim.pid)
    finally:
        assert node.stop() == []


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_replica_failing_at_load_is_isolated_and_the_fallback_serves(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(MODEL / "onnx", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph" * 64)
    cfg = config(
        tmp_path / "f.yaml",
        tiny("good"),
        {
            "name": "flaky",
            "model": str(broken),
            "runtime": "ort",
            "fallbacks": ["good"],
            "supervision": {"max_restarts": 2, "window_s": 60, "backoff_initial_s": 0.05},
        },
    )
    node = Node(config=cfg)
    try:
        with Client(node.address) as client:
            replica = isolated_replica(client, "flaky")
            assert replica.restarts == 2
            assert "2 restarts within 60 s" in (replica.error or "") and "Protobuf" in (replica.error or "")
            result = client.generate("flaky", prompt=PROMPT, max_tokens=16)
            assert result.deployment == "good"
            assert result.text == ort_greedy_reference(MODEL, PROMPT, 16)
    finally:
        assert node.stop() == []


def _gpu_cluster(tmp_path: Path) -> tuple[Node, Node, Node]:
    head = Node("--role", "head")
    join = ("--join", head.address)
    a = Node("--role", "gpu", "--gpus", "0,1", "--node-id", "gpu-a", *join)
    b = Node("--role", "gpu", "--gpus", "2,3", "--node-id", "gpu-b", *join)
    with Client(head.address) as client:
        wait_for(lambda: {n.node_id for n in client.status()["nodes"]} >= {"gpu-a", "gpu-b"}, timeout=30)
    return head, a, b


def test_replicas_land_one_per_gpu_across_joined_nodes(tmp_path: Path) -> None:
    head, a, b = _gpu_cluster(tmp_path)
    try:
        with Client(head.address) as client:
            client.deploy(tiny("gpu-tiny", replicas=4, gpus_per_replica=1, placement={"role": "gpu"}))
            placed = replicas(client, "gpu-tiny")
            assert sorted((r.node_id, tuple(r.gpu_ids)) for r in placed) == [
                ("gpu-a", ("0",)),
                ("gpu-a", ("1",)),
                ("gpu-b", ("2",)),
                ("gpu-b", ("3",)),
            ]
            node_pids = {
                "gpu-a": {p.pid for p in system_processes(a.port)},
                "gpu-b": {p.pid for p in system_processes(b.port)},
            }
            for r in placed:
                assert r.state == "ready" and r.visible_devices == r.gpu_ids[0]
                assert r.pid in node_pids[r.node_id]  # the runner host runs on its own node
            assert len({r.pid for r in placed}) == 4
            assert client.generate("gpu-tiny", prompt=PROMPT, max_tokens=8).text
            # No GPU left: a fifth GPU replica is refused with a clear reason; a CPU one goes anywhere.
            try:
                client.deploy(tiny("one-more", gpus_per_replica=1, placement={"role": "gpu"}))
                raise AssertionError("deploy should have failed")
            except InferenceError as exc:
                assert exc.field == "gpus_per_replica" and "not enough free GPUs" in exc.message
            (cpu,) = client.deploy(tiny("cpu-tiny"))
            assert cpu.state == "ready" and cpu.replicas[0].gpu_ids == []
            assert client.generate("cpu-tiny", prompt=PROMPT, max_tokens=8).text
            # A remote API needs no GPU: its replicas run on GPU nodes whose GPUs are all taken.
            (tmp_path / "key").write_text("sk-any-node")
            with FakeOpenAI(api_key="sk-any-node") as fake:
                engine = {"api_base": fake.url + "/v1", "api_key_file": str(tmp_path / "key")}
                api = {"name": "api", "model": "openai/gpt-fake", "engine": engine, "replicas": 2}
                (placed_api,) = client.deploy({**api, "placement": {"role": "gpu"}})
                assert placed_api.state == "ready"
                assert {r.node_id for r in placed_api.replicas} <= {"gpu-a", "gpu-b"}
                assert all(r.gpu_ids == [] for r in placed_api.replicas)
                assert client.generate("api", "Hello", max_tokens=4).text == fake.served[-1].text
                client.undeploy("api")
    finally:
        for n in (b, a, head):
            assert n.stop() == []


def test_a_dead_node_is_noticed_and_its_replicas_move(tmp_path: Path) -> None:
    head, a, b = _gpu_cluster(tmp_path)
    try:
        want = ort_greedy_reference(MODEL, PROMPT, 200)
        with Client(head.address) as client:
            client.deploy(tiny("moving", replicas=2, gpus_per_replica=1, placement={"role": "gpu"}))
            assert sorted(r.node_id for r in replicas(client, "moving")) == ["gpu-a", "gpu-b"]
            track = Tracker(client, "moving", 40, 200)
            assert track.streaming.acquire(timeout=60)
            # The whole of node b dies at once, as a host would.
            doomed = [*system_processes(b.port), psutil.Process(b.proc.pid)]
            for p in doomed:
                p.kill()
            died = time.monotonic()
            noticed = wait_for(lambda: "gpu-b" not in {n.node_id for n in client.status()["nodes"]}, timeout=15)
            assert time.monotonic() - died < 10, noticed
            wait_for(
                lambda: [(r.node_id, r.state) for r in replicas(client, "moving")].count(("gpu-a", "ready")) == 2,
                timeout=20,
            )
            moved = replicas(client, "moving")
            assert sorted(tuple(r.gpu_ids) for r in moved) == [("0",), ("1",)]
            track.wait()
            assert track.finals == [1] * 40
            for chunks, outcome in zip(track.chunks, track.outcome, strict=True):
                if isinstance(outcome, InferenceError):
                    assert isinstance(outcome, RunnerCrashedError) and chunks > 0
                else:
                    assert outcome == want
            assert client.generate("moving", prompt=PROMPT, max_tokens=8).text
    finally:
        for n in (b, a, head):
            n.stop()


def test_a_missing_model_file_isolates_at_once_without_restarts(tmp_path: Path) -> None:
    # The deploy check looks at genai_config.json only: a folder without model.onnx passes it and
    # fails at load; another loses model.onnx.data (named inside the graph) after it served.
    nofile, gone = tmp_path / "no-graph", tmp_path / "gone-later"
    shutil.copytree(MODEL / "onnx", nofile)
    (nofile / "model.onnx").unlink()
    shutil.copytree(MODEL / "onnx", gone)
    generous = {"max_restarts": 50, "window_s": 60, "backoff_initial_s": 0.05}
    cfg = config(
        tmp_path / "m.yaml",
        {"name": "gone", "model": str(gone), "runtime": "ort", "supervision": generous},
        {"name": "nofile", "model": str(nofile), "runtime": "ort", "fallbacks": ["gone"], "supervision": generous},
    )
    node = Node(config=cfg)
    try:
        with Client(node.address) as client:
            replica = isolated_replica(client, "nofile")
            assert replica.restarts == 0
            assert "model file missing" in (replica.error or "") and "model.onnx" in (replica.error or "")
            assert client.generate("nofile", prompt=PROMPT, max_tokens=4).deployment == "gone"

            (victim,) = replicas(client, "gone")
            assert victim.state == "ready"
            (gone / "model.onnx.data").unlink()
            os.kill(victim.pid, signal.SIGKILL)  # its restart loads again, and finds the file gone
            wait_for(lambda: replicas(client, "gone")[0].state == "isolated", timeout=20)
            (after,) = replicas(client, "gone")
            assert after.restarts == 1  # the restart after the kill, and no more
            assert "a model file is missing" in (after.error or "") and "model.onnx.data" in (after.error or "")
            assert next(d for d in client.list_deployments() if d.name == "gone").state == "degraded"
            try:
                client.generate("gone", prompt=PROMPT, max_tokens=4)
                raise AssertionError("a deployment with no live replica should refuse")
            except InferenceError as exc:
                assert exc.kind == "unavailable" and "no live replica" in exc.message
    finally:
        assert node.stop() == []


def test_out_of_memory_at_load_is_permanent() -> None:
    """Out of memory is recognised by type (a real MemoryError, as pybind11 raises for bad_alloc)
    even with an empty message, and by the wording of engines that raise a plain RuntimeError."""
    try:
        bytearray(1 << 62)  # more than any machine has: a real MemoryError
        raise AssertionError("allocation should have failed")
    except MemoryError as exc:
        info = as_error_info(exc)
    assert info.kind == "internal" and info.details == {"out_of_memory": True} and is_permanent(info)
    assert is_permanent(as_error_info(MemoryError()))
    onnx_cuda = "CUDA failure 2: out of memory ; GPU=0 ; hostname=h ; file=cuda_allocator.cc"
    arena = "Failed to allocate memory for requested buffer of size 8589934592"
    for text in (onnx_cuda, arena):
        assert is_permanent(as_error_info(RuntimeError(text)))
        assert is_permanent(InternalError(f"ORT GenAI could not load m: {text}").info())  # as ort.py wraps it

    class OutOfMemoryError(RuntimeError):  # torch.cuda.OutOfMemoryError's name, without torch
        pass

    assert is_permanent(as_error_info(OutOfMemoryError("CUDA error")))
    # What a restart may fix stays retryable; a corrupt graph is restarted too (it could be mid-copy).
    assert not is_permanent(as_error_info(RuntimeError("Protobuf parsing failed")))
    assert not is_permanent(as_error_info(ConnectionResetError("peer reset")))
    assert is_permanent(NotFoundError("model file missing: x/model.onnx").info())


def test_a_dead_node_with_no_spare_gpu_degrades_and_a_new_node_restores(tmp_path: Path) -> None:
    head = Node("--role", "head")
    a: Node | None = None
    c: Node | None = None
    try:
        a = Node("--role", "gpu", "--gpus", "0", "--node-id", "gpu-a", "--join", head.address)
        with Client(head.address) as client:
            wait_for(lambda: "gpu-a" in {n.node_id for n in client.status()["nodes"]}, timeout=30)
            client.deploy(
                tiny("alone", gpus_per_replica=1, placement={"role": "gpu"}, supervision={"backoff_initial_s": 0.05})
            )
            track = Tracker(client, "alone", 80, 200)
            assert track.streaming.acquire(timeout=60)
            doomed = [*system_processes(a.port), psutil.Process(a.proc.pid)]
            for p in doomed:
                p.kill()
            wait_for(lambda: "gpu-a" not in {n.node_id for n in client.status()["nodes"]}, timeout=15)
            wait_for(lambda: replicas(client, "alone")[0].state == "isolated", timeout=10)
            (r,) = replicas(client, "alone")
            assert "no node can host it" in (r.error or "") and r.restarts == 1
            assert next(d for d in client.list_deployments() if d.name == "alone").state == "degraded"
            track.wait(30)
            assert track.finals == [1] * 80
            want = ort_greedy_reference(MODEL, PROMPT, 200)
            for chunks, outcome in zip(track.chunks, track.outcome, strict=True):
                if isinstance(outcome, InferenceError):  # crashed while streaming, else had no replica
                    assert (outcome.kind, chunks > 0) in {("runner_crashed", True), ("unavailable", False)}
                else:
                    assert outcome == want  # finished before the node died
            assert any(isinstance(o, InferenceError) for o in track.outcome)
            t0 = time.monotonic()
            try:
                client.generate("alone", prompt=PROMPT, max_tokens=4)
                raise AssertionError("a deployment with no live replica should refuse")
            except InferenceError as exc:  # at once, retryable, saying why
                assert exc.kind == "unavailable" and exc.retry_after and "no live replica" in exc.message
            assert time.monotonic() - t0 < 5
            # A new GPU node joins: the replica is placed there and the deployment serves again.
            c = Node("--role", "gpu", "--gpus", "7", "--node-id", "gpu-c", "--join", head.address)
            wait_for(lambda: replicas(client, "alone")[0].state == "ready", timeout=30)
            (r,) = replicas(client, "alone")
            assert (r.node_id, r.gpu_ids, r.error) == ("gpu-c", ["7"], None)
            assert r.pid in {p.pid for p in system_processes(c.port)}
            assert next(d for d in client.list_deployments() if d.name == "alone").state == "ready"
            assert client.generate("alone", prompt=PROMPT, max_tokens=8).text
    finally:
        for n in (c, a, head):
            if n is not None:
                assert n.stop() == []
