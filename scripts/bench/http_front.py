"""Benchmark: what atomr's HTTP front adds in front of a zero-delay OpenAI-compatible backend.

Paths to the same backend (`fake_openai_backend.py`, its own process), measured in the same run,
interleaved in rounds (medians over rounds; this machine is shared and noisy):
- direct: the load generator posts to the backend itself;
- atomr: the load generator posts to a head node's HTTP front, whose deployment "gpt" is the
  `openai` remote runner pointed at the backend on its lean transport (served inside the front's
  own process: HTTP front -> the runner's aiohttp call -> backend, and back; see
  atomr/http/inline.py);
- atomr-sdk: the same front and node, deployment "gpt-sdk": the runner on the official SDK's
  transport (`engine.transport: sdk`);
- bare: `bare_proxy.py --kind relay`, a raw ASGI app on the same server stack that relays the
  request's and the answer's bytes with aiohttp: the floor of any Python pass-through proxy;
- bare-sdk: `bare_proxy.py --kind sdk`, the same app making the runner's SDK call instead;
- SDK alone: what one call of the official openai SDK (the runner's SDK transport) adds over the
  direct path, in a loop in this process.
Reported: p50 / p99 latency at concurrency 1 and what each path adds, requests/s at concurrency
64, and the total time of a 20-chunk stream with what each adds. With ``--litellm-venv PATH``,
LiteLLM's proxy (`litellm_proxy.py`, its own venv) on the same backend is one more path.

    python scripts/bench/http_front.py [--rounds 3] [--requests 400] [--litellm-venv .bench-venvs/litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from http_load import LoadResult, run_load  # noqa: E402
from litellm_proxy import LiteLLMProxy  # noqa: E402

from atomr.node.process import NodeProcess  # noqa: E402

CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 16}
STREAM = {**CHAT, "stream": True}


def start_script(script: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    """A server script of this folder in its own process (it prints "port N"), and its port."""
    cmd = [sys.executable, str(HERE / script), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.split()[1])


def start_backend(chunks: int = 20, delay_s: float = 0.0) -> tuple[subprocess.Popen[str], int]:
    """The fake backend in its own process, and its port."""
    return start_script("fake_openai_backend.py", "--chunks", str(chunks), "--delay-s", str(delay_s))


def stop_backend(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(10)


def start_node(
    backend_port: int,
    folder: Path,
    limits: dict[str, object] | None = None,
    replicas: int = 1,
    engine: dict[str, object] | None = None,
    sdk_twin: bool = False,
    workers: int = 1,
    config: dict[str, object] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> tuple[NodeProcess, int]:
    """A head node with an HTTP front of `workers` processes and deployment "gpt": the `openai`
    runner on the backend (with `sdk_twin`, "gpt-sdk" too: the same on the SDK transport).
    `config`: more sections of its config; `cwd` and `env`: where and how the node runs."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "key").write_text("sk-bench")
    cfg = folder / "front.yaml"
    twins: list[tuple[str, dict[str, object]]] = [("gpt", {})] + (
        [("gpt-sdk", {"transport": "sdk"})] if sdk_twin else []
    )
    engine = {"api_base": f"http://127.0.0.1:{backend_port}/v1", "api_key_file": str(folder / "key"), **(engine or {})}
    cfg.write_text(
        yaml.safe_dump(
            {
                "http": {"port": 0, "workers": workers},
                "node": {"log_level": "warning"},
                "deployments": [
                    {
                        "name": name,
                        "model": "openai/fake",
                        "replicas": replicas,
                        "engine": {**engine, **extra},
                        "limits": limits or {"max_inflight_per_replica": 256, "max_queue": 4096},
                    }
                    for name, extra in twins
                ],
                **(config or {}),
            }
        )
    )
    node = NodeProcess([], config=cfg, cwd=cwd, env=env)
    match = re.search(r"http front on http://[^:]+:(\d+)", node.output())
    assert match, node.output()
    return node, int(match.group(1))


def measure(port: int, body: dict[str, object], n: int, concurrency: int, model: str | None = None) -> LoadResult:
    """`n` requests of `body` (its model replaced by `model` when given) at `concurrency`."""
    sent = body if model is None else {**body, "model": model}
    result = asyncio.run(run_load("127.0.0.1", port, "/v1/chat/completions", json.dumps(sent).encode(), n, concurrency))
    if result.errors:
        raise SystemExit(f"{result.errors} requests failed against port {port}")
    return result


def compare(
    ports: dict[str, int], rounds: int, requests: int, models: dict[str, str] | None = None
) -> dict[str, float]:
    """Each target measured alike, interleaved in rounds; medians over rounds.

    `ports` maps names to HTTP ports and must include "direct" (the backend itself); `models`
    names the model a target is sent where it is not "gpt". Keys of the
    result: "<name> p50", "<name> p99", "<name> stream" (ms, c=1), "<name> req/s" (c=64), and for
    every other name "<name> added p50", "<name> added p99", "<name> added stream" (ms over
    direct, taken within each round).
    """
    rows: dict[str, list[float]] = {}
    model = models or {}

    def add(key: str, value: float) -> None:
        rows.setdefault(key, []).append(value)

    for name, port in ports.items():  # warm-up: connections, the runner's client, caches
        measure(port, CHAT, 100, 4, model.get(name))
        measure(port, STREAM, 20, 1, model.get(name))
    others = [name for name in ports if name != "direct"]
    for _ in range(rounds):
        unary = {name: measure(port, CHAT, requests, 1, model.get(name)) for name, port in ports.items()}
        for name, r in unary.items():
            add(f"{name} p50", r.p50_ms)
            add(f"{name} p99", r.percentile(0.99) * 1000)
        for name in others:
            add(f"{name} added p50", unary[name].p50_ms - unary["direct"].p50_ms)
            add(f"{name} added p99", (unary[name].percentile(0.99) - unary["direct"].percentile(0.99)) * 1000)
        busy = {name: measure(port, CHAT, requests * 4, 64, model.get(name)) for name, port in ports.items()}
        for name, r in busy.items():
            add(f"{name} req/s", r.req_s)
        streams = {
            name: measure(port, STREAM, max(20, requests // 4), 1, model.get(name)) for name, port in ports.items()
        }
        for name, r in streams.items():
            add(f"{name} stream", r.p50_ms)
        for name in others:
            add(f"{name} added stream", streams[name].p50_ms - streams["direct"].p50_ms)
    return {k: statistics.median(v) for k, v in rows.items()}


def sdk_alone_p50(backend_port: int, n: int) -> float:
    """p50 (ms) of sequential chat calls through the openai SDK client the `openai` runner makes."""
    from atomr.runners.remote.openai.runner import OpenAIRunner  # here: the other paths need no SDK

    from atomr.core.deployment import Deployment

    runner = OpenAIRunner(
        Deployment(
            name="gpt",
            model="openai/fake",
            runtime="openai",
            engine={"api_base": f"http://127.0.0.1:{backend_port}/v1", "transport": "sdk"},
        )
    )

    async def calls() -> float:
        await runner.load()
        times: list[float] = []
        try:
            for i in range(n + 20):
                t = time.perf_counter()
                await runner.client.post("/chat/completions", CHAT, None)
                if i >= 20:  # the first calls warm the connection
                    times.append(time.perf_counter() - t)
        finally:
            await runner.unload()
        return statistics.median(times) * 1000

    return asyncio.run(calls())


def run(rounds: int = 3, requests: int = 400, litellm_venv: Path | None = None) -> dict[str, float]:
    """Direct vs the atomr front (vs LiteLLM's proxy when `litellm_venv` is given): `compare`'s medians."""
    backend, backend_port = start_backend()
    bare, bare_port = start_script("bare_proxy.py", "--backend-port", str(backend_port), "--kind", "relay")
    bare_sdk, bare_sdk_port = start_script("bare_proxy.py", "--backend-port", str(backend_port), "--kind", "sdk")
    folder = Path(tempfile.mkdtemp(prefix="atomr-bench-"))
    proxy: LiteLLMProxy | None = None
    node: NodeProcess | None = None
    try:
        node, front_port = start_node(backend_port, folder, sdk_twin=True)
        ports = {
            "direct": backend_port,
            "atomr": front_port,
            "atomr-sdk": front_port,
            "bare": bare_port,
            "bare-sdk": bare_sdk_port,
        }
        if litellm_venv is not None:
            proxy = LiteLLMProxy(litellm_venv, backend_port)
            ports["litellm"] = proxy.port
        med = compare(ports, rounds, requests, {"atomr-sdk": "gpt-sdk"})
        added = []
        for _ in range(rounds):  # interleaved with the direct path, like the others
            direct = measure(backend_port, CHAT, requests, 1).p50_ms
            added.append(sdk_alone_p50(backend_port, requests) - direct)
        med["sdk added p50"] = statistics.median(added)
        return med
    finally:
        if proxy is not None:
            proxy.stop()
        if node is not None:
            node.stop()
        stop_backend(bare)
        stop_backend(bare_sdk)
        stop_backend(backend)


def print_table(med: dict[str, float], rounds: int) -> None:
    names = [
        ("atomr", "atomr front"),
        ("atomr-sdk", "atomr front, SDK transport"),
        ("bare", "bare relay proxy"),
        ("bare-sdk", "bare SDK proxy"),
    ]
    names += [("litellm", "LiteLLM proxy")] if "litellm p50" in med else []
    print(f"\nHTTP front vs direct, zero-delay OpenAI-compatible backend, medians of {rounds} rounds\n")
    print("| measure | direct | " + " | ".join(f"{title} | {title} adds" for _, title in names) + " | target |")
    print("|---|---:|" + "---:|---:|" * len(names) + "---|")
    rows_out = [
        ("p50 latency, c=1 (ms)", "p50", "adds <= 1.5"),
        ("p99 latency, c=1 (ms)", "p99", ""),
        ("20-chunk stream, total (ms)", "stream", "adds <= 4"),
    ]
    for title, key, target in rows_out:
        cells = " | ".join(f"{med[f'{n} {key}']:.2f} | {med[f'{n} added {key}']:.2f}" for n, _ in names)
        print(f"| {title} | {med['direct ' + key]:.2f} | {cells} | {target} |")
    cells = " | ".join(f"{med[f'{n} req/s']:.0f} | {med[f'{n} req/s'] / med['direct req/s']:.2f}x" for n, _ in names)
    print(f"| requests/s, c=64 | {med['direct req/s']:.0f} | {cells} | >= 400 |")
    if "sdk added p50" in med:
        sdk = med["sdk added p50"]
        print(f"\nThe openai SDK call alone (in-process loop) adds {sdk:.2f} ms p50 over the direct path.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument(
        "--litellm-venv", type=Path, default=None, help="also measure LiteLLM's proxy from this venv (made if missing)"
    )
    args = ap.parse_args()
    print_table(run(args.rounds, args.requests, args.litellm_venv), args.rounds)


if __name__ == "__main__":
    main()
