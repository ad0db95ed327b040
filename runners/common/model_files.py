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


def hf_model_dir(deployment: Deployment) -> Path:
    """The Hugging Face checkpoint folder (holding ``config.json``): the model folder or its ``hf/``."""
    root = model_root(deployment)
    for candidate in (root, root / "hf"):
        if (candidate / "config.json").is_file():
            return candidate
    raise NotFoundError(f"no Hugging Face checkpoint at {root} (no config.json there or in hf/)", field="model")
