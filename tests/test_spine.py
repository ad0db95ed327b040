"""End to end through real processes: a node on the shipped config answers exactly what ORT GenAI
answers when called directly; many requests overlap inside one replica; bad input gets structured
errors naming the problem."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from atomr.runners.local.ort.runner import ort_greedy_reference

from atomr.client import Client
from atomr.core.errors import (
    ConfigError,
    ContextLengthError,
    InferenceError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
)
from atomr.core.types import InferenceRequest, Message, SamplingParams
from atomr.models import builtin_model_dir
from tests.conftest import Node

MODEL_DIR = builtin_model_dir("tiny-llama")
COMPLETION_PROMPTS = ["The actor", "A message is", "Once upon a time", "The weather today"]
CHATS = [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "What is an actor?"}],
]


def write_config(path: Path, **deployment: object) -> Path:
    base: dict[str, object] = {"name": "tiny2", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}}
    base.update(deployment)
    path.write_text(yaml.safe_dump({"deployments": [base]}))
    return path


def test_generate_and_stream_equal_ort_called_directly(local_node: Node) -> None:
    with Client(local_node.address) as client:
        for prompt in COMPLETION_PROMPTS:
            want = ort_greedy_reference(MODEL_DIR, prompt, 48)
            assert want, "the reference produced no text"
            got = client.generate("tiny", prompt=prompt, max_tokens=48)
            assert got.text == want
            assert got.usage.completion_tokens > 0 and got.usage.prompt_tokens > 0
            assert got.finish_reason in ("stop", "length") and got.deployment == "tiny"
            chunks = list(client.stream("tiny", prompt=prompt, max_tokens=48))
            assert "".join(c.text for c in chunks) == want
            assert chunks[-1].finish_reason == got.finish_reason
            assert chunks[-1].usage == got.usage
        for messages in CHATS:
            want = ort_greedy_reference(MODEL_DIR, messages, 48)
            assert client.generate("tiny", messages, max_tokens=48).text == want
            assert "".join(c.text for c in client.stream("default", messages, max_tokens=48)) == want


def test_stop_sequences_logprobs_and_sampling_through_the_actor_path(local_node: Node) -> None:
    with Client(local_node.address) as client:
        full = client.generate("tiny", prompt="The actor", max_tokens=48).text
        words = full.split()
        assert len(words) > 3
        stop = " " + words[2]
        cut = client.generate("tiny", prompt="The actor", max_tokens=48, stop=[stop])
        assert cut.finish_reason == "stop" and cut.text == full[: full.index(stop)]
        lp = client.generate("tiny", prompt="The actor", max_tokens=16, logprobs=True)
        assert lp.logprobs is not None and len(lp.logprobs) == lp.usage.completion_tokens
        assert all(x.logprob <= 0.0 for x in lp.logprobs)
        assert lp.confidence is not None and lp.confidence["min_logprob"] <= lp.confidence["mean_logprob"]
        a = client.generate("tiny", prompt="The", max_tokens=24, temperature=1.0, seed=7)
        b = client.generate("tiny", prompt="The", max_tokens=24, temperature=1.0, seed=7)
        assert a.text == b.text
        assert client.generate("tiny", prompt="The actor", max_tokens=3).finish_reason == "length"


def test_64_concurrent_requests_overlap_inside_each_of_two_replicas(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "two.yaml",
        replicas=2,
        limits={"max_inflight_per_replica": 32},
        engine={"intra_op_threads": 1, "max_batch_size": 32},
    )
    node = Node(config=cfg)
    try:
        with Client(node.address) as client:
            prompt, n_tokens = "Once upon a time", 64
            want = ort_greedy_reference(MODEL_DIR, prompt, n_tokens)
            # One request alone, several times: the cost of serving requests one by one.
            alone = statistics.median(
                _timed(lambda: client.generate("tiny2", prompt=prompt, max_tokens=n_tokens)) for _ in range(9)
            )
            spans: dict[str, list[tuple[float, float]]] = {}  # replica -> (first chunk, final) times
            lock = threading.Lock()

            def one(_: int) -> str:
                it = client.stream("tiny2", prompt=prompt, max_tokens=n_tokens)
                first = next(it)
                t1 = time.perf_counter()
                text = first.text + "".join(c.text for c in it)
                with lock:
                    spans.setdefault(it.replica, []).append((t1, time.perf_counter()))
                return text

            walls = []
            with ThreadPoolExecutor(64) as pool:
                list(pool.map(one, range(64)))  # warm-up round
                for _ in range(3):
                    spans.clear()
                    start = time.perf_counter()
                    texts = list(pool.map(one, range(64)))
                    walls.append(time.perf_counter() - start)
            wall = statistics.median(walls)
            assert texts == [want] * 64
            assert len(spans) == 2 and sum(len(v) for v in spans.values()) == 64
            # Served one by one, each replica would need ~32 x the time of one request alone.
            serial = 32 * alone
            assert wall < serial, (wall, serial)
            # Inside each replica, several requests were streaming at the same moment.
            for replica, intervals in spans.items():
                assert _max_overlap(intervals) >= 4, (replica, _max_overlap(intervals))
            print(
                f"alone {alone * 1e3:.1f} ms; 64 concurrent: wall {wall * 1e3:.0f} ms vs {serial * 1e3:.0f} ms "
                f"serial; overlap per replica {[_max_overlap(v) for v in spans.values()]}"
            )
    finally:
        assert node.stop() == []


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


def _timed(fn: object) -> float:
    t = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t


def test_bad_requests_get_structured_errors(local_node: Node) -> None:
    with Client(local_node.address) as client:
        with pytest.raises(NotFoundError) as nf:
            client.generate("no-such-model", "hi")
        assert nf.value.field == "model" and "no-such-model" in nf.value.message
        with pytest.raises(InvalidRequestError) as bad:
            client.generate("tiny", "hi", max_tokens=0)
        assert bad.value.field == "max_tokens"
        with pytest.raises(InvalidRequestError) as unknown:
            client.generate("tiny", "hi", colour="red")
        assert unknown.value.field == "colour"
        # The gateway validates too (other entry points skip the client's checks).
        raw = InferenceRequest(model="tiny", messages=(Message("wizard", "hi"),), params=SamplingParams(top_p=5.0))
        with pytest.raises(InvalidRequestError) as gw:
            client.generate_request(raw)
        assert gw.value.field == "messages[0].role"
        with pytest.raises(ContextLengthError) as ctx:
            client.generate("tiny", prompt="word " * 400, max_tokens=8)
        assert ctx.value.field in ("prompt", "messages") and ctx.value.http_status == 400
        # The node still answers after all of that.
        assert client.generate("tiny", prompt="The actor", max_tokens=4).text


def test_deploy_errors_name_the_problem_and_the_node_keeps_serving(local_node: Node, tmp_path: Path) -> None:
    with Client(local_node.address) as client:
        with pytest.raises(ConfigError) as missing:
            client.deploy({"name": "ghost", "model": str(tmp_path / "nowhere"), "runtime": "ort"})
        assert missing.value.field == "model" and "not found" in missing.value.message
        with pytest.raises(ConfigError) as runtime:
            client.deploy({"name": "x", "model": "builtin:tiny-llama", "runtime": "quantum"})
        assert runtime.value.field == "runtime"
        # a runtime no node has installed is refused up front, saying what to install
        assert "ort" in client.status()["nodes"][0].runtimes
        if "tensorrt" not in client.status()["nodes"][0].runtimes:
            with pytest.raises(ConfigError) as absent:
                client.deploy({"name": "trt", "model": "builtin:tiny-llama", "runtime": "tensorrt"})
            assert absent.value.field == "runtime" and "pip install 'atomr[tensorrt]'" in absent.value.message
        broken = tmp_path / "broken"
        broken.mkdir()
        (broken / "genai_config.json").write_text('{"model": {"type": "llama"}}')
        with pytest.raises(InternalError) as load:
            client.deploy({"name": "broken", "model": str(broken), "runtime": "ort"}, timeout=60)
        assert "broken" in load.value.message or "load" in load.value.message
        listed = {d.name: d for d in client.list_deployments()}
        assert listed["tiny"].state == "ready"
        assert listed["broken"].state == "failed" and listed["broken"].error == load.value.message
        assert client.generate("tiny", prompt="The actor", max_tokens=4).text
        assert client.undeploy("broken").state == "failed"
        assert [d.name for d in client.list_deployments()] == ["tiny"]


def test_a_full_queue_answers_overloaded_and_loses_nothing(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "small.yaml", limits={"max_inflight_per_replica": 1, "max_queue": 2})
    node = Node(config=cfg)
    try:
        with Client(node.address) as client:
            reqs = [client.make_request("tiny2", prompt="Once upon a time", max_tokens=120) for _ in range(12)]
            results = client.generate_many(reqs)
            over = [r for r in results if isinstance(r, OverloadedError)]
            done = [r for r in results if not isinstance(r, InferenceError)]
            assert len(over) + len(done) == 12
            assert len(done) >= 3 and len(over) >= 1
            assert all(o.retry_after and o.retry_after > 0 and o.http_status == 503 for o in over)
            assert len({d.text for d in done}) == 1
    finally:
        assert node.stop() == []


def test_the_node_process_keeps_no_exited_child(local_node: Node) -> None:
    """Thespian starts its admin through a child that exits at once: the node collects it."""
    import psutil

    children = psutil.Process(local_node.proc.pid).children()
    assert [c.pid for c in children if c.status() == psutil.STATUS_ZOMBIE] == []
