"""Local engines through the whole system: the same tiny model on ORT GenAI, vLLM and mistral.rs.

Real nodes in their own processes, real engines. Engines that are not installed are skipped with
the reason (`pip install 'atomr[vllm]'` / `'atomr[mistralrs]'`); ORT GenAI always runs.
- one YAML file, one line changed (`runtime:`), moves the model between engines; greedy answers
  agree with each other and with each engine called directly; vLLM streams per-token logprobs;
- a runner host placed on GPU id 1 sees CUDA_VISIBLE_DEVICES=1 and no process above it loaded
  torch or an engine;
- a deployment whose model folder is broken ends `failed` with the engine's own message while
  another deployment on the same node keeps answering.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from atomr.client import Client
from atomr.core.errors import InferenceError
from atomr.models import builtin_model_dir
from tests.conftest import Node, require_engine

MODEL = builtin_model_dir("tiny-llama")
ENGINE_MODULES = {"ort": "onnxruntime_genai", "vllm": "vllm", "mistralrs": "mistralrs"}
ENGINE_EXTRAS = {"ort": "ort", "vllm": "vllm-cpu", "mistralrs": "mistralrs"}
CHAT = [{"role": "user", "content": "What is an actor?"}]
COMPLETION = "The actor model"
MAX_TOKENS = 24

YAML = """\
deployments:
  - name: tiny
    model: builtin:tiny-llama
    runtime: ort
    limits: {max_inflight_per_replica: 8}
"""


def need(runtime: str) -> None:
    require_engine(ENGINE_MODULES[runtime], ENGINE_EXTRAS[runtime])


def direct_reference(runtime: str) -> Callable[[Path, Any, int], str]:
    """Greedy text from the engine called directly (no atomr runner, no actors)."""
    if runtime == "ort":
        from atomr.runners.local.ort.runner import ort_greedy_reference

        return ort_greedy_reference
    from atomr.runners.local.mistralrs.runner import mistralrs_greedy_reference

    return mistralrs_greedy_reference


@pytest.fixture(scope="module")
def node() -> Iterator[Node]:
    n = Node("--role", "head", "--gpus", "0,1")
    yield n
    assert n.stop() == []


def stream_text(client: Client, model: str, **kw: Any) -> tuple[str, list[Any]]:
    chunks = list(client.stream(model, max_tokens=MAX_TOKENS, **kw))
    return "".join(c.text for c in chunks), chunks


@pytest.mark.parametrize("runtime", ["ort", "vllm", "mistralrs"])
def test_one_line_of_yaml_moves_the_model_between_engines(node: Node, tmp_path: Path, runtime: str) -> None:
    need(runtime)
    text = YAML.replace("runtime: ort", f"runtime: {runtime}")
    changed = [(a, b) for a, b in zip(YAML.splitlines(), text.splitlines(), strict=True) if a != b]
    assert len(changed) == (0 if runtime == "ort" else 1)
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    from atomr.runners.local.ort.runner import ort_greedy_reference  # the engines agree on the tiny model

    expected_chat = ort_greedy_reference(MODEL, CHAT, MAX_TOKENS)
    expected_completion = ort_greedy_reference(MODEL, COMPLETION, MAX_TOKENS)
    if runtime != "vllm":  # vLLM called directly is compared in tests/test_vllm_runner.py (a start costs ~15 s)
        reference = direct_reference(runtime)
        assert reference(MODEL, CHAT, MAX_TOKENS) == expected_chat
        assert reference(MODEL, COMPLETION, MAX_TOKENS) == expected_completion
    with Client(node.address) as client:
        (info,) = client.deploy(path)
        try:
            assert info.state == "ready" and info.runtime == runtime
            chat_text, chunks = stream_text(client, "tiny", messages=CHAT)
            assert chat_text == expected_chat
            assert chunks[-1].finish_reason in ("stop", "length")
            completion_text, _ = stream_text(client, "tiny", prompt=COMPLETION)
            assert completion_text == expected_completion
            # per-token logprobs and the confidence summary through the whole path (mistral.rs
            # gives logprobs for chat only; its completion API has none)
            asks = [{"messages": CHAT}] + ([] if runtime == "mistralrs" else [{"prompt": COMPLETION}])
            for ask in asks:
                result = client.generate("tiny", max_tokens=MAX_TOKENS, logprobs=True, **ask)
                assert result.text == (expected_chat if "messages" in ask else expected_completion)
                assert result.logprobs is not None and len(result.logprobs) == result.usage.completion_tokens
                assert all(math.isfinite(lp.logprob) and lp.logprob <= 0 for lp in result.logprobs)
                conf = result.confidence
                assert conf is not None and conf["min_logprob"] <= conf["mean_logprob"] <= 0
        finally:
            client.undeploy("tiny")


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _ancestors_in_node(pid: int, node_pids: set[int]) -> list[psutil.Process]:
    out = []
    p = psutil.Process(pid).parent()
    while p is not None and p.pid in node_pids:
        out.append(p)
        p = p.parent()
    return out


@pytest.mark.parametrize("runtime", ["ort", "vllm"])
def test_runner_host_is_pinned_to_its_gpu_and_its_parents_load_no_engine(node: Node, runtime: str) -> None:
    need(runtime)
    from atomr.cluster.system import system_processes

    name = f"pinned-{runtime}"
    with Client(node.address) as client:
        # a first GPU replica takes GPU 0, so the one under test lands on GPU 1
        (holder,) = client.deploy({"name": "holder", "model": "builtin:tiny-llama", "gpus_per_replica": 1})
        try:
            (info,) = client.deploy(
                {"name": name, "model": "builtin:tiny-llama", "runtime": runtime, "gpus_per_replica": 1}
            )
            try:
                assert [(r.gpu_ids, r.visible_devices) for r in holder.replicas] == [(["0"], "0")]
                (on_one,) = info.replicas
                assert on_one.gpu_ids == ["1"] and on_one.state == "ready" and on_one.visible_devices == "1"
                assert client.generate(name, prompt=COMPLETION, max_tokens=4).text
                # The engine's native library is mapped in the runner host (the check can see it) ...
                engine_lib = "libtorch" if runtime == "vllm" else "onnxruntime"
                assert engine_lib in _maps(on_one.pid)
                # ... and in none of the node's processes above it: they never imported an engine.
                node_pids = {p.pid for p in system_processes(node.port)} | {node.proc.pid}
                parents = _ancestors_in_node(on_one.pid, node_pids)
                assert parents, "the runner host's parent should be a process of the node"
                for parent in parents:
                    maps = _maps(parent.pid)
                    assert "libtorch" not in maps and "onnxruntime" not in maps, parent.cmdline()
            finally:
                client.undeploy(name)
        finally:
            client.undeploy("holder")


def test_broken_model_fails_with_the_engine_message_and_others_keep_serving(node: Node, tmp_path: Path) -> None:
    # Every file is there (atomr's own file check passes) but the graph is not ONNX: the engine
    # itself fails, and its message must reach the caller.
    broken = tmp_path / "broken-model"
    shutil.copytree(MODEL / "onnx", broken)
    (broken / "model.onnx").write_bytes(b"not an onnx graph" * 64)
    with Client(node.address) as client:
        (good,) = client.deploy({"name": "good", "model": "builtin:tiny-llama"})
        try:
            assert good.state == "ready"
            with pytest.raises(InferenceError) as failed:
                client.deploy({"name": "broken", "model": str(broken), "runtime": "ort"})
            assert "ORT GenAI could not load" in failed.value.message and "Protobuf" in failed.value.message
            status = {d.name: d for d in client.status()["deployments"]}
            assert "good" in status and status["good"].state == "ready"
            assert status["broken"].state == "failed" and "ORT GenAI could not load" in (status["broken"].error or "")
            assert status["broken"].replicas == []
            assert client.generate("good", prompt=COMPLETION, max_tokens=8).text
            assert node.proc.poll() is None
            # a failed deployment stays visible until it is undeployed (or deployed again)
            assert client.undeploy("broken").state == "failed"
            assert "broken" not in {d.name for d in client.status()["deployments"]}
        finally:
            client.undeploy("good")


def test_a_broken_deployment_in_the_head_config_leaves_the_node_serving_the_others(tmp_path: Path) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "genai_config.json").write_text("not json at all")
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text(
        "deployments:\n"
        f"  - {{name: broken, model: {broken}, runtime: ort, supervision: {{max_restarts: 1}}}}\n"
        "  - {name: good, model: builtin:tiny-llama}\n"
    )
    node = Node(config=cfg)
    try:
        assert "deploy of broken failed" in node.output()
        with Client(node.address) as client:
            status = {d.name: d for d in client.status()["deployments"]}
            assert status["broken"].state == "failed" and "genai_config.json" in (status["broken"].error or "")
            assert status["good"].state == "ready"
            assert client.generate("good", prompt=COMPLETION, max_tokens=8).text
    finally:
        assert node.stop() == []
