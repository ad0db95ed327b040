"""The `vllm` runtime, described without importing vLLM or torch.

Its `engine:` options are vLLM's own engine arguments, checked by vLLM when a replica loads.
"""

from __future__ import annotations

from pathlib import Path

from atomr.runners.spec import OpenEngineOptions, RuntimeSpec


def _recognise(path: Path) -> bool:
    """A Hugging Face checkpoint: config.json beside safetensors weights."""
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


SPEC = RuntimeSpec(
    name="vllm",
    runner="atomr.runners.local.vllm.runner:VllmRunner",
    local=True,
    package="vllm",
    extra="vllm",
    recognise=_recognise,
    options=OpenEngineOptions,
)
