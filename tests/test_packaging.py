"""The package's shape: every package ships, the layers hold, and cheap imports stay cheap.

The wheel itself is checked by scripts/check_wheel.sh (a node from a fresh venv with [ort]
answers) and tests/test_remote_only_install.py (the [remote] wheel imports no engine).
"""

from __future__ import annotations

import configparser
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

ENGINES = ("torch", "vllm", "onnxruntime", "onnxruntime_genai", "mistralrs", "tensorrt_llm")


def _setup_cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    return cfg


def _loaded_after(code: str) -> set[str]:
    """Top-level modules a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_every_package_folder_is_listed_in_setup_cfg() -> None:
    listed = set(_setup_cfg()["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "atomr").rglob("__init__.py")}
    found |= {".".join(("atomr", *p.parent.relative_to(REPO).parts)) for p in (REPO / "runners").rglob("__init__.py")}
    assert found == listed, {"not listed": sorted(found - listed), "no such folder": sorted(listed - found)}


def test_import_atomr_and_core_load_no_thespian_and_no_client() -> None:
    loaded = _loaded_after("import atomr, atomr.core, atomr.core.routing, atomr.core.cascade")
    assert "thespian" not in loaded
    assert "starlette" not in loaded and "yaml" not in loaded
    assert not loaded & set(ENGINES)
    assert "atomr.client" not in _loaded_after("import atomr, sys; assert 'atomr.client' not in sys.modules")


def test_every_runner_module_and_the_catalog_load_no_thespian() -> None:
    modules = sorted(
        "atomr.runners." + ".".join(p.relative_to(REPO / "runners").with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "runners").rglob("*.py")
    )
    loaded = _loaded_after("\n".join(f"import {m}" for m in modules))
    assert "thespian" not in loaded
    assert not loaded & set(ENGINES) - {"onnxruntime"}, loaded & set(ENGINES)


def test_the_catalog_and_config_import_no_sdk_and_no_engine() -> None:
    loaded = _loaded_after("import atomr.runners.catalog, atomr.config")
    assert not loaded & {*ENGINES, "openai", "anthropic", "google", "litellm", "thespian"}


def test_breaking_a_layer_fails_the_layers_contract(tmp_path: Path) -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    tree = tmp_path / "tree"
    shutil.copytree(REPO / "atomr", tree / "atomr", ignore=shutil.ignore_patterns("__pycache__", "models"))
    shutil.copytree(REPO / "runners", tree / "atomr" / "runners", ignore=shutil.ignore_patterns("__pycache__"))
    run = [lint, str(REPO / "setup.cfg")]
    env = {"PYTHONPATH": str(tree), "PATH": str(Path(sys.executable).parent)}
    kept = subprocess.run(run, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    (tree / "atomr" / "core" / "leak.py").write_text("from atomr.actors.messages import WorkItem\n")
    broken = subprocess.run(run, cwd=tree, env=env, capture_output=True, text=True, timeout=300)
    assert broken.returncode != 0
    assert "atomr.core is not allowed to import atomr.actors" in broken.stdout
    assert "atomr.core.leak -> atomr.actors.messages" in broken.stdout
    assert "atomr.core is not allowed" not in kept.stdout  # the break is what the contract caught
