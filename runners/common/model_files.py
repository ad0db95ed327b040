"""Where a local runner finds its model files.

A deployment's model is a folder (absolute, or relative to its YAML file) or a built-in model
(``builtin:tiny-llama``). A built-in model folder holds ``hf/`` (Hugging Face checkpoint, for
vLLM, mistral.rs and TensorRT-LLM) and ``onnx/`` (the ORT GenAI export), so the same ``model:``
line serves every local runtime and only ``runtime:`` changes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from atomr.core.errors import NotFoundError

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment


def model_root(deployment: Deployment) -> Path:
    """The deployment's model folder, before choosing a runtime's subfolder."""
    if deployment.model_path is not None:
        return deployment.model_path
    model = deployment.model
    if model.startswith("builtin:"):
        from atomr.models import builtin_model_dir

        try:
            return builtin_model_dir(model)
        except FileNotFoundError as exc:
            raise NotFoundError(str(exc), field="model") from None
    return Path(model).expanduser()


def hf_folder(path: Path) -> Path | None:
    """The folder holding a Hugging Face ``config.json``: `path` itself or its ``hf/`` (None: neither)."""
    for candidate in (path, path / "hf"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def hf_checkpoint(path: str | Path) -> Path:
    """`hf_folder(path)`, or a NotFoundError naming the model field."""
    p = Path(path)
    folder = hf_folder(p)
    if folder is None:
        raise NotFoundError(f"no Hugging Face checkpoint at {p} (no config.json there or in hf/)", field="model")
    return folder


def hf_model_dir(deployment: Deployment) -> Path:
    """The Hugging Face checkpoint folder (holding ``config.json``): the model folder or its ``hf/``."""
    return hf_checkpoint(model_root(deployment))
