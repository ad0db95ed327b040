"""Built-in models shipped inside the atomr package.

A model reference ``builtin:<name>`` (for example ``builtin:tiny-llama``) names the folder
``atomr/models/<name>``. Each such folder holds ``hf/`` (the Hugging Face checkpoint and tokenizer,
for engines that load HF folders: vLLM, mistral.rs, transformers), ``onnx/`` (the ONNX Runtime
GenAI export, used by the ORT runner) and ``MANIFEST.json`` (sha256 of every file).
``tiny-llama`` is made offline and reproducibly by ``scripts/make_tiny_model.py``; it lets every
local code path be exercised with no download and no GPU.

This module only does path look-ups: importing it loads no engine.
"""

from __future__ import annotations

from pathlib import Path

BUILTIN_PREFIX = "builtin:"

_MODELS_DIR = Path(__file__).resolve().parent


def builtin_model_dir(name: str) -> Path:
    """Folder of the built-in model `name` (with or without the ``builtin:`` prefix)."""
    name = name.removeprefix(BUILTIN_PREFIX)
    if not name or "/" in name or "\\" in name or name.startswith(".") or name.startswith("_"):
        raise FileNotFoundError(f"no built-in model named {name!r}; available: {_available()}")
    folder = _MODELS_DIR / name
    if not folder.is_dir():
        raise FileNotFoundError(f"no built-in model named {name!r}; available: {_available()}")
    return folder


def list_builtin_models() -> list[str]:
    """Names of the built-in models shipped with this install, sorted."""
    return sorted(
        p.name
        for p in _MODELS_DIR.iterdir()
        if p.is_dir() and not p.name.startswith((".", "_")) and (p / "MANIFEST.json").is_file()
    )


def _available() -> str:
    return ", ".join(list_builtin_models()) or "none"
