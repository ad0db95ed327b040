"""GPU check for a machine with NVIDIA GPUs: drivers, device pinning, and atomr's GPU engines.

1. Lists the GPUs `nvidia-smi` sees.
2. When torch is installed: for each GPU id, a child process started with
   CUDA_VISIBLE_DEVICES=<id> must see exactly one device, the one nvidia-smi names for that id
   (what a runner host relies on when it pins its replica's GPUs).
3. For vLLM and TensorRT-LLM, each when importable: in a child process pinned to the first GPU,
   loads the built-in tiny model through atomr's runner (`runner_class(runtime)(Deployment(...))`),
   streams one greedy chat request and prints the text, load time, time to first chunk and
   tokens/s, then unloads. One child per engine, so the two never share GPU memory, each with a
   time limit (--timeout, default 110 s).
4. With --node: atomr's own pinning path. Starts a real head node (`python -m atomr.node --role
   head --gpus IDS`, IDS from nvidia-smi; without a GPU listed, this process's
   CUDA_VISIBLE_DEVICES, for a dry run with fake ids), deploys the built-in tiny model on ONNX
   Runtime GenAI's CPU build with `gpus_per_replica: 1`, and prints the replica's GPU ids, the
   CUDA_VISIBLE_DEVICES its runner host reports from its own environment (set there after the
   fork, before the engine is imported: /proc/PID/environ, the environment the process was
   started with, holds the node's value instead; that is printed too), and what torch sees in a
   child started with the runner host's /proc environment plus that CUDA_VISIBLE_DEVICES: one
   device, the one nvidia-smi names for the replica's GPU id. The ORT runner itself runs on the
   CPU: this step proves placement and pinning, not GPU inference. Then one chat request through
   atomr.Client (its text is printed), undeploy; the node is stopped with SIGTERM and no process
   of it (the runner host included) may be left. Needs atomr's requirements and the `ort` extra.

What is not installed is skipped and said so; the exit status is 1 when something that is
present fails, else 0. This parent process imports neither torch nor an engine (--node imports
atomr's client, no engine). An engine check should take well under its limit on a current GPU
(not measured: written on a machine without a GPU, the vLLM child ran through on vLLM's CPU
build; the GPU machine it ran on had neither vLLM nor TensorRT-LLM); with every limit reached
the whole run still ends before 5 minutes, plus --node's limits (--timeout for the node's start
and for the deploy, 60 s for the request). Steps 1, 2 and 4 passed on one NVIDIA H200 (torch
2.11+cu130, ORT GenAI 0.18's CPU build) in 15 s in all.

    python scripts/gpu_check.py [--engines vllm,tensorrt] [--timeout 110] [--max-tokens 48] [--node]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# runtime -> (the package it needs, engine options for the tiny model on one GPU)
ENGINES: dict[str, tuple[str, dict[str, Any]]] = {
    "vllm": ("vllm", {"enforce_eager": True, "gpu_memory_utilization": 0.3}),
    "tensorrt": (
        "tensorrt_llm",
        {"kv_cache_free_gpu_memory_fraction": 0.3, "max_batch_size": 8, "max_num_tokens": 1024, "max_seq_len": 256},
    ),
}
QUESTION = "What is an actor?"
PIN_TIMEOUT_S = 60  # the pinning children run side by side; with two engines at 110 s, under 5 min in all
RESULT_PREFIX = "GPU-CHECK-RESULT "


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def list_gpus() -> list[tuple[str, str]]:
    """(index, name) of every GPU nvidia-smi lists; empty without a driver."""
    if shutil.which("nvidia-smi") is None:
        print("nvidia-smi: not found (no NVIDIA driver on this machine)")
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"nvidia-smi: failed: {exc}")
        return []
    gpus = []
    for line in out.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) >= 2:
            gpus.append((fields[0], fields[1]))
            print(f"GPU {fields[0]}: {', '.join(fields[1:])}")
    if not gpus:
        print("nvidia-smi: no GPU listed")
    return gpus


PIN_PROBE = (
    "import json, torch; n = torch.cuda.device_count(); "
    "print(json.dumps({'count': n, 'name': torch.cuda.get_device_name(0) if n else None}))"
)


def check_pinning(gpus: list[tuple[str, str]]) -> bool:
    """Each GPU id alone in a child's CUDA_VISIBLE_DEVICES: one device, the right one. True if fine.

    The children run side by side (each imports torch, a few seconds).
    """
    if importlib.util.find_spec("torch") is None:
        print("pinning: skipped (torch is not installed)")
        return True
    if not gpus:
        print("pinning: skipped (no GPU listed)")
        return True
    children = [
        subprocess.Popen(
            [sys.executable, "-c", PIN_PROBE],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(CUDA_VISIBLE_DEVICES=index),
        )
        for index, _ in gpus
    ]
    ok = True
    for (index, name), child in zip(gpus, children, strict=True):
        try:
            out, err = child.communicate(timeout=PIN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            print(f"pinning GPU {index}: FAILED (torch gave no answer within {PIN_TIMEOUT_S} s)")
            ok = False
            continue
        try:
            seen = json.loads(out.strip().splitlines()[-1]) if child.returncode == 0 else None
        except (ValueError, IndexError):
            seen = None
        if seen is None:
            print(f"pinning GPU {index}: FAILED (exit {child.returncode}): {err.strip()[-500:]}")
            ok = False
            continue
        good = seen["count"] == 1 and seen["name"] == name
        ok = ok and good
        verdict = "ok" if good else f"FAILED (expected 1 device, {name!r})"
        print(
            f"pinning GPU {index}: CUDA_VISIBLE_DEVICES={index} -> torch sees {seen['count']} device(s), "
            f"{seen['name']!r}: {verdict}"
        )
    return ok


def check_engine(runtime: str, gpu: str, timeout: float, max_tokens: int) -> bool | None:
    """Run one engine's check in a child pinned to `gpu`. None when skipped, else whether it passed."""
    package, _ = ENGINES[runtime]
    if importlib.util.find_spec(package) is None:
        print(f"{runtime}: skipped ({package} is not installed)")
        return None
    started = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--engine-child", runtime, "--max-tokens", str(max_tokens)]
    # Its own session, so that a timeout ends the engine's helper processes too (vLLM starts some).
    child = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(CUDA_VISIBLE_DEVICES=gpu),
        start_new_session=True,
    )
    try:
        stdout, stderr = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        print(f"{runtime}: FAILED (no answer within {timeout:.0f} s)")
        return False
    results = [line[len(RESULT_PREFIX) :] for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if child.returncode != 0 or not results:
        tail = (stderr.strip() or stdout.strip())[-1500:]
        print(f"{runtime}: FAILED (exit {child.returncode} after {time.perf_counter() - started:.0f} s)\n{tail}")
        return False
    r = json.loads(results[-1])
    print(
        f"{runtime}: ok on GPU {gpu}: load {r['load_s']:.1f} s, first chunk {1000 * r['first_chunk_s']:.0f} ms, "
        f"{r['tokens']} tokens in {r['generate_s']:.3f} s = {r['tokens_per_s']:.0f} tokens/s, "
        f"finish {r['finish_reason']}, prompt {r['prompt_tokens']} tokens\n  text: {r['text']!r}"
    )
    return True


async def engine_child(runtime: str, max_tokens: int) -> dict[str, Any]:
    """Load the tiny model through atomr's runner here, stream one greedy chat, unload."""
    from atomr.runners.catalog import runner_class

    from atomr.core.deployment import Deployment
    from atomr.core.types import InferenceRequest, Message, SamplingParams
    from atomr.models import builtin_model_dir

    deployment = Deployment(
        name="gpu-check",
        model="builtin:tiny-llama",
        runtime=runtime,
        model_path=builtin_model_dir("tiny-llama"),
        gpus_per_replica=1,
        engine=ENGINES[runtime][1],
    )
    runner = runner_class(runtime)(deployment)
    started = time.perf_counter()
    await runner.load()
    load_s = time.perf_counter() - started
    request = InferenceRequest(
        model="gpu-check", messages=(Message("user", QUESTION),), params=SamplingParams(max_tokens=max_tokens)
    )
    request.validate()
    text, tokens, first, last = "", 0, None, None
    started = time.perf_counter()
    try:
        async for chunk in runner.generate(request):
            first = first if first is not None else time.perf_counter() - started
            text += chunk.text
            tokens += chunk.token_count
            last = chunk
        generate_s = time.perf_counter() - started
    finally:
        await runner.unload()
    if last is None or last.finish_reason is None or last.usage is None:
        raise RuntimeError("the stream ended without a final chunk")
    return {
        "load_s": load_s,
        "first_chunk_s": first or 0.0,
        "generate_s": generate_s,
        "tokens": tokens,
        "tokens_per_s": tokens / generate_s if generate_s > 0 else 0.0,
        "text": text,
        "finish_reason": last.finish_reason,
        "prompt_tokens": last.usage.prompt_tokens,
    }


NODE_NAME = "gpu-check-node"
NODE_DEPLOYMENT: dict[str, Any] = {
    "name": NODE_NAME,
    "model": "builtin:tiny-llama",
    "runtime": "ort",
    "gpus_per_replica": 1,
}


def start_environ(pid: int) -> dict[str, str]:
    """The environment `pid` was started with (/proc/PID/environ; later changes in it are not seen)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {k: v for k, _, v in pairs}


def check_node(gpus: list[tuple[str, str]], timeout: float, max_tokens: int) -> bool | None:
    """A real head node, a 1-GPU deployment, its runner host's pinning, one chat. None when skipped."""
    missing = [
        m for m in ("thespian", "structlog", "pydantic", "onnxruntime_genai") if importlib.util.find_spec(m) is None
    ]
    if missing:
        print(f"node: skipped ({', '.join(missing)} not installed: pip install -e '.[ort]')")
        return None
    names = dict(gpus)
    ids = list(names)
    if not ids:
        env = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        ids = [g.strip() for g in env.split(",") if g.strip()]
        if not ids:
            print("node: skipped (no GPU listed; set CUDA_VISIBLE_DEVICES=0 for a dry run with a fake id)")
            return None
        print(f"node: no GPU listed: a dry run with the fake GPU ids {','.join(ids)} (torch is not checked)")
    if str(REPO) not in sys.path:  # `python scripts/gpu_check.py` puts scripts/ first, not the checkout
        sys.path.insert(0, str(REPO))
    from atomr.client import Client
    from atomr.cluster.system import system_processes
    from atomr.node.process import NodeProcess

    started = time.perf_counter()
    try:  # a node that does not become ready is stopped by NodeProcess, its output in the error
        node = NodeProcess(["--role", "head", "--gpus", ",".join(ids)], env=child_env(), cwd=REPO, timeout=timeout)
    except RuntimeError as exc:
        print(f"node: FAILED: {exc}")
        return False
    ok = True
    runner_pid = 0
    try:
        print(
            f"node: head at {node.address} with --gpus {','.join(ids)} ready in {time.perf_counter() - started:.1f} s"
        )
        with Client(node.address) as client:
            started = time.perf_counter()
            (info,) = client.deploy(dict(NODE_DEPLOYMENT), timeout=timeout)
            try:
                print(
                    f"node: deployed {info.name} ({info.runtime}, gpus_per_replica 1): {info.state} "
                    f"in {time.perf_counter() - started:.1f} s"
                )
                (replica,) = info.replicas
                runner_pid = replica.pid
                gpu = replica.gpu_ids[0] if replica.gpu_ids else None
                visible = replica.visible_devices
                pinned = info.state == "ready" and len(replica.gpu_ids) == 1 and visible == gpu
                ok = ok and pinned
                print(
                    f"node: runner host PID {replica.pid} on node {replica.node_id}: GPU ids {replica.gpu_ids}, "
                    f"CUDA_VISIBLE_DEVICES={visible} (its own environment): {'ok' if pinned else 'FAILED'}"
                )
                environ = start_environ(replica.pid)
                print(
                    "node: runner host's /proc environ (as started, the node's; pinned after): CUDA_VISIBLE_DEVICES="
                    f"{environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}"
                )
                if gpu is not None and visible is not None and gpu in names:
                    ok = probe_runner_env(environ, visible, names[gpu]) and ok
                result = client.generate(
                    NODE_NAME, [{"role": "user", "content": QUESTION}], max_tokens=max_tokens, timeout=60
                )
                answered = bool(result.text)
                ok = ok and answered
                print(
                    f"node: chat {QUESTION!r} -> {result.usage.completion_tokens} tokens, "
                    f"finish {result.finish_reason}: {'ok' if answered else 'FAILED (empty answer)'}\n"
                    f"  text: {result.text!r}"
                )
            finally:
                client.undeploy(NODE_NAME)
    except Exception as exc:  # noqa: BLE001 - reported, then the node is still stopped
        print(f"node: FAILED: {type(exc).__name__}: {exc}")
        ok = False
    finally:
        forced = node.stop()
        left = [p.pid for p in system_processes(node.port)]
        runner_alive = bool(runner_pid) and psutil_alive(runner_pid)
        clean = not forced and not left and not runner_alive
        ok = ok and clean
        print(
            f"node: stopped; processes ended by force: {forced or 'none'}, still running: {left or 'none'}, "
            f"runner host {runner_pid} {'ALIVE' if runner_alive else 'gone'}: {'ok' if clean else 'FAILED'}"
        )
        if not ok:
            print(f"node log (last 3000 characters):\n{node.output()[-3000:]}")
        node.log_path.unlink(missing_ok=True)
    return ok


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def probe_runner_env(environ: dict[str, str], visible: str, expected: str) -> bool:
    """torch in a child with the runner host's start environment plus its CUDA_VISIBLE_DEVICES."""
    if importlib.util.find_spec("torch") is None:
        print("node: torch check skipped (torch is not installed)")
        return True
    env = dict(environ)
    env["CUDA_VISIBLE_DEVICES"] = visible
    try:
        done = subprocess.run(
            [sys.executable, "-c", PIN_PROBE], capture_output=True, text=True, env=env, timeout=PIN_TIMEOUT_S
        )
        seen = json.loads(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError) as exc:
        print(f"node: torch in the runner host's environment: FAILED ({type(exc).__name__}: {exc})")
        return False
    good = seen["count"] == 1 and seen["name"] == expected
    verdict = "ok" if good else f"FAILED (expected 1 device, {expected!r})"
    print(
        f"node: torch in the runner host's environment (CUDA_VISIBLE_DEVICES={visible}) sees "
        f"{seen['count']} device(s), {seen['name']!r}: {verdict}"
    )
    return good


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check GPUs, CUDA_VISIBLE_DEVICES pinning and atomr's GPU engines (vLLM, TensorRT-LLM) "
        "on the built-in tiny model. Exit 1 when something present fails."
    )
    parser.add_argument(
        "--engines", default="vllm,tensorrt", help="comma-separated runtimes to try (default: vllm,tensorrt)"
    )
    parser.add_argument("--timeout", type=float, default=110.0, help="seconds allowed per engine (default 110)")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens to generate (default 48)")
    parser.add_argument(
        "--node",
        action="store_true",
        help="also start a head node, deploy the tiny model with 1 GPU and check its runner host's pinning",
    )
    parser.add_argument("--engine-child", metavar="RUNTIME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.engine_child:  # the child: one engine, in this process
        result = asyncio.run(engine_child(args.engine_child, args.max_tokens))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0

    runtimes = [r.strip() for r in args.engines.split(",") if r.strip()]
    unknown = [r for r in runtimes if r not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; choose from {', '.join(ENGINES)}")
    print(f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')}")
    gpus = list_gpus()
    failed = not check_pinning(gpus)
    skipped: list[str] = []
    for runtime in runtimes:
        if not gpus:
            print(f"{runtime}: skipped (no GPU)")
            skipped.append(runtime)
            continue
        outcome = check_engine(runtime, gpus[0][0], args.timeout, args.max_tokens)
        if outcome is None:
            skipped.append(runtime)
        failed = failed or outcome is False
    if args.node:
        outcome = check_node(gpus, args.timeout, args.max_tokens)
        if outcome is None:
            skipped.append("node")
        failed = failed or outcome is False
    print(f"skipped: {', '.join(skipped) or 'nothing'}; result: {'FAILED' if failed else 'ok'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
