"""A remote-only install, as users install: the built wheel (not editable) with only the `remote`
extras in a fresh virtual environment serves a remote deployment end to end, and torch, vLLM and
ONNX Runtime are neither installed nor loaded."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, Node, node_env
from tests.fakes.openai_server import FakeOpenAI

KEY = "sk-remote-only"
# Nothing of the source tree on the path: the wheel is what runs (node_env() puts the repo first).
WHEEL_ENV = node_env(PYTHONPATH="")
HEAVY = ("torch", "vllm", "onnxruntime", "onnxruntime_genai", "onnxruntime-genai", "tensorrt_llm", "mistralrs")

CLIENT = """
import json, sys
from atomr import Client
with Client(sys.argv[1]) as c:
    r = c.generate("gpt", "Hello", max_tokens=16)
    chunks = [x.text for x in c.stream("gpt", prompt="Once upon a time", max_tokens=4)]
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {names})
import atomr.runners.remote.openai.runner
print(json.dumps({{"text": r.text, "chunks": chunks, "loaded": loaded, "atomr": atomr.__file__}}))
"""


@pytest.fixture(scope="module")
def remote_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("remote-venv")
    dist = where / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(REPO)],
        check=True,
        timeout=600,
        env=WHEEL_ENV,
        capture_output=True,
    )
    (wheel,) = dist.glob("atomr-*.whl")
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    py = where / "venv" / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"{wheel}[remote]"],
        check=True,
        timeout=900,
        env=WHEEL_ENV,
        capture_output=True,
    )
    return py


def test_remote_only_install_serves_without_engines(remote_venv: Path, tmp_path: Path) -> None:
    listed = subprocess.run(
        [str(remote_venv), "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,  # not the source tree, whose egg-info pip would list instead
    ).stdout
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(listed)}
    assert not installed & {h.replace("_", "-") for h in HEAVY}, installed & set(HEAVY)
    assert {"openai", "anthropic", "google-genai", "litellm", "atomr"} <= installed

    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    with FakeOpenAI(api_key=KEY) as fake:
        cfg = tmp_path / "remote.yaml"
        engine = {"api_base": fake.url + "/v1", "api_key_file": str(key_file)}
        cfg.write_text(yaml.safe_dump({"deployments": [{"name": "gpt", "model": "openai/gpt-fake", "engine": engine}]}))
        node = Node(
            config=cfg, python=str(remote_venv), cwd=tmp_path, env={"PYTHONPATH": ""}
        )  # nothing of the source tree on sys.path
        try:
            script = CLIENT.format(names=repr(set(HEAVY)))
            out = subprocess.run(
                [str(remote_venv), "-c", script, node.address],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
                env=WHEEL_ENV,
                cwd=tmp_path,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            assert result["text"] == fake.reply_text
            assert "".join(result["chunks"])
            assert result["loaded"] == []
            assert not result["atomr"].startswith(str(REPO)), result["atomr"]  # the installed wheel
        finally:
            assert node.stop() == []
