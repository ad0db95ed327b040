"""Smoke test of the benchmark set: `scripts/bench/run_all.py --quick` runs and fills every row of its table.

It checks that the table has every benchmark's rows with numbers (not that the targets are met:
the quick sizes are too small for that). LiteLLM's proxy runs from its own venv, which
``run_all.py`` makes on first use (``.bench-venvs/litellm``); where that venv is absent (a clean
clone, CI) the set runs with ``--no-litellm`` and LiteLLM's cells must say "not measured".
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, node_env

BENCH = REPO / "scripts" / "bench"


def litellm_venv() -> Path | None:
    spec = importlib.util.spec_from_file_location("bench_litellm_proxy", BENCH / "litellm_proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    venv: Path = module.DEFAULT_VENV
    return venv if module.venv_ready(venv) else None


# (benchmark, measure) beginnings of every row the table must have, and whether LiteLLM has a number there
ROWS = [
    ("actor path", "p50 latency at c=1", False),
    ("actor path", "requests/s at c=32", False),
    ("HTTP front", "added p50 latency at c=1", True),
    ("HTTP front", "the floor: a bare Python relay proxy", False),
    ("HTTP front", "atomr on the openai SDK transport", False),
    ("HTTP front", "a bare proxy making the SDK call", False),
    ("HTTP front", "added p99 latency at c=1", True),
    ("HTTP front", "requests/s at c=64", True),
    ("streaming", "20-chunk stream", True),
    ("batching", "tokens/s at c=16", False),
    ("200 in flight", "errors", False),
    ("200 in flight", "wall time, s, front of 1 process", False),
    ("200 in flight", "wall time, s, front of 2 processes", False),
    ("200 in flight", "RSS of all atomr processes", False),
    ("cascade", "cost vs all tier 2", False),
    ("tracing", "p50 at c=1, ms, tracing on", False),
    ("tracing", "requests/s at c=64, tracing on vs off", False),
    ("tracing", "tracing off: its per-request checks", False),
    ("connection limits", "p50 per request, one keep-alive connection", False),
    ("connection limits", "p50 per request on a new connection", False),
]
NUMBER = re.compile(r"[+-]?\d+(\.\d+)?%?")


def test_quick_run_fills_the_table(tmp_path: Path) -> None:
    venv = litellm_venv()
    out = tmp_path / "bench.md"
    proxy_args = ["--litellm-venv", str(venv)] if venv is not None else ["--no-litellm"]
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--quick", "--out", str(out), *proxy_args],
        cwd=REPO,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    table = out.read_text()
    assert table in proc.stdout
    lines = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| benchmark")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    assert len(rows) == len(ROWS), table
    for (bench, measure, has_litellm), cells in zip(ROWS, rows, strict=True):
        assert len(cells) == 8, cells
        name, what, baseline, atomr, litellm, ratio, target, met = cells
        assert name.startswith(bench) and what.startswith(measure), (bench, measure, cells)
        assert NUMBER.fullmatch(atomr.split()[0]), cells
        assert baseline == "-" or NUMBER.search(baseline), cells
        assert ratio == "-" or NUMBER.search(ratio), cells
        if has_litellm and venv is not None:
            assert NUMBER.fullmatch(litellm), cells
        elif has_litellm:
            assert litellm == "not measured", cells
        if target != "-":
            assert met in ("yes", "**no**") or (venv is None and met == "not measured"), cells
    for target in ("<= 1.0 ms", "atomr <= 1.3x the floor", "<= 3 ms", ">= 1000", "<= 1.5 ms", "<= +1.5 ms", "<= 1.8"):
        assert target in table, target
