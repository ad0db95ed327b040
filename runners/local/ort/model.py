"""ORT GenAI models: finding the model folder, loading it (`open_model`) and tokenising prompts
(`prompt_ids`: chat template, BOS), plus the small conversions every scheduler needs (a 31-bit
seed, top_k, a token's logprob).

`onnxruntime_genai` is imported by `open_model`, never when this module is imported.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from atomr.runners.common.model_files import model_root
from atomr.runners.common.structured import TAGGED_CALL
from atomr.runners.local.ort.spec import ort_folder

from atomr.core.errors import InternalError, InvalidRequestError, NotFoundError
from atomr.core.messages import Tool
from atomr.core.types import Message

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment


def _import_og() -> Any:
    try:
        import onnxruntime_genai as og
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise InternalError(f"the ort runtime needs onnxruntime-genai (pip install onnxruntime-genai): {exc}") from None
    return og


def ort_model_dir(path: str | Path) -> Path:
    """The folder holding `genai_config.json`: `path` itself or its `onnx/` subfolder."""
    p = Path(path)
    folder = ort_folder(p)
    if folder is not None:
        return folder
    raise NotFoundError(f"no ORT GenAI model at {p} (no genai_config.json there or in onnx/)", field="model")


def resolve_model_dir(deployment: Deployment) -> Path:
    return ort_model_dir(model_root(deployment))


@dataclass(slots=True)
class OrtModel:
    """What `load` made: the ORT objects and the facts every request needs."""

    og: Any
    model: Any
    tokenizer: Any
    folder: Path
    context_length: int
    bos_id: int | None
    eos_ids: frozenset[int]
    pad_id: int
    vocab_size: int
    tagged_calls: bool = False  # the chat template writes tool calls as <tool_call>{"name": "...


def _chat_template_text(folder: Path) -> str:
    """The model's chat template as its files give it (empty when there is none)."""
    texts = []
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        texts.append(jinja.read_text(errors="replace"))
    try:
        cfg = json.loads((folder / "tokenizer_config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    if isinstance(cfg.get("chat_template"), str):
        texts.append(cfg["chat_template"])
    return "\n".join(texts)


def open_model(folder: Path, intra_op_threads: int, engine_batch: int | None = None) -> OrtModel:
    og = _import_og()
    try:
        raw = json.loads((folder / "genai_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise InternalError(f"cannot read {folder / 'genai_config.json'}: {exc}") from None
    overlay: dict[str, Any] = {
        "model": {
            "decoder": {
                "session_options": {
                    "intra_op_num_threads": intra_op_threads,
                    "inter_op_num_threads": 1,
                }
            }
        }
    }
    if engine_batch is not None:
        overlay["engine"] = {"static_batching": {"max_batch_size": engine_batch}}
    _check_files(folder, raw)
    try:
        config = og.Config(str(folder))
        config.overlay(json.dumps(overlay))
        model = og.Model(config)
        tokenizer = og.Tokenizer(model)
    except (RuntimeError, ValueError, OSError) as exc:
        _check_files(folder, raw)  # removed while loading
        if isinstance(exc, FileNotFoundError) or any(s in str(exc) for s in _MISSING_FILE_TEXTS):
            # ORT GenAI raises a plain RuntimeError; e.g. a missing external-data file (model.onnx.data)
            missing = f"ORT GenAI could not load {folder}: a model file is missing: {exc}"
            raise NotFoundError(missing, field="model") from None
        raise InternalError(f"ORT GenAI could not load {folder}: {exc}") from None
    mcfg = raw.get("model", {})
    context = int(raw.get("search", {}).get("max_length") or mcfg.get("context_length") or 0)
    if context <= 0:
        raise InternalError(f"{folder / 'genai_config.json'} gives no search.max_length or model.context_length")
    eos = mcfg.get("eos_token_id")
    eos_ids = frozenset(int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None)
    if not eos_ids:
        eos_ids = frozenset(int(e) for e in tokenizer.eos_token_ids)
    bos = mcfg.get("bos_token_id")
    return OrtModel(
        og=og,
        model=model,
        tokenizer=tokenizer,
        folder=folder,
        context_length=context,
        bos_id=int(bos) if bos is not None else None,
        eos_ids=eos_ids,
        pad_id=int(mcfg.get("pad_token_id", min(eos_ids))),
        vocab_size=int(mcfg.get("vocab_size") or 0),
        tagged_calls=TAGGED_CALL in _chat_template_text(folder),
    )


# What ORT / ORT GenAI say (in a plain RuntimeError) when a file a model needs is not there.
_MISSING_FILE_TEXTS = ("does not exist", "doesn't exist", "No such file")


def _model_files(folder: Path, raw: dict[str, Any]) -> list[Path]:
    """The files ORT GenAI opens for a model: every `filename` its genai_config.json names, and the tokenizer."""
    names: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "filename" and isinstance(value, str):
                    names.append(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(raw.get("model"))
    return [folder / n for n in names] + [folder / "tokenizer.json"]


def _check_files(folder: Path, raw: dict[str, Any]) -> None:
    """Fail with `not_found` (a restart cannot fix it) when a file the model needs is missing."""
    missing = [f for f in _model_files(folder, raw) if not f.is_file()]
    if missing:
        raise NotFoundError(f"model file missing: {missing[0]} (an ORT GenAI model needs it)", field="model")


def _render_chat(m: OrtModel, messages: Sequence[Message], tools: Sequence[Tool] = ()) -> str:
    """The chat template applied to OpenAI-format messages (tool calls and tool results
    included) and, when given, the tools (OpenAI's {"type": "function", "function": ...} list)."""
    payload = json.dumps([msg.for_template() for msg in messages])
    kwargs: dict[str, Any] = {"add_generation_prompt": True}
    if tools:
        kwargs["tools"] = json.dumps([t.to_openai() for t in tools])
    try:
        return str(m.tokenizer.apply_chat_template(payload, **kwargs))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise InvalidRequestError(f"the model's chat template failed: {exc}", field="messages") from None


def prompt_ids(
    m: OrtModel, messages: Sequence[Message] | None, prompt: str | None, tools: Sequence[Tool] = ()
) -> list[int]:
    """Token ids of a chat (template applied, with `tools`) or completion prompt, BOS first when
    the model has one."""
    text = _render_chat(m, messages, tools) if messages is not None else (prompt or "")
    ids = [int(i) for i in m.tokenizer.encode(text)]
    if m.bos_id is not None and (not ids or ids[0] != m.bos_id):
        ids.insert(0, m.bos_id)
    return ids


_INT32_MAX = 2**31 - 1


def search_seed(seed: int | None) -> int:
    """ORT GenAI takes a 31-bit seed; requests may give any 64-bit one (as OpenAI allows)."""
    return secrets.randbelow(_INT32_MAX) if seed is None else seed % _INT32_MAX


def search_top_k(top_k: int, vocab_size: int) -> int:
    """ORT GenAI refuses a top_k past the vocabulary; such a top_k means no limit (0) anyway."""
    return 0 if vocab_size and top_k >= vocab_size else int(top_k)


def log_softmax_at(logits: Any, index: int) -> float:
    import numpy as np

    row = np.asarray(logits, dtype=np.float64).reshape(-1)
    top = float(row.max())
    return float(row[index] - top - math.log(float(np.exp(row - top).sum())))
