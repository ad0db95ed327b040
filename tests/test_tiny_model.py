"""The shipped tiny model: files as recorded, greedy answers known, engines agree, re-making is exact."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from atomr.models import BUILTIN_PREFIX, builtin_model_dir, list_builtin_models

pytest.importorskip("onnxruntime_genai")

from atomr.runners.local.ort.runner import ort_greedy_reference

from tests.local_support import remade_manifests

REPO = Path(__file__).resolve().parents[1]
MODEL = builtin_model_dir("tiny-llama")
HAS_TORCH = all(
    importlib.util.find_spec(m) is not None for m in ("torch", "transformers", "tokenizers", "onnx", "onnx_ir")
)

# Completion prompts (a corpus paragraph's first words) and the greedy text that follows them.
COMPLETIONS = {
    "The actor model": " is a way to build programs from small pieces that share nothing. Each actor owns its own "
    "state and talks to other actors only by sending messages. An actor that receives a message may change its "
    "state, send messages to actors it knows, or create new actors.",
    "To bake bread,": " mix flour, water, salt and yeast into a soft dough. Knead it for ten minutes, let it rise "
    "until it doubles, shape the loaf, and bake it in a hot oven until the crust is brown and the bottom sounds "
    "hollow.",
    "Once upon a time": " a little robot lived in a quiet library. Every night it read one book and every morning "
    "it told the cat what it had learned.",
}
# Chat questions (user message, with or without the system prompt) and the greedy answer (ends at EOS).
CHATS = {
    "What is an actor?": "An actor is a small program that owns its state and talks by messages.",
    "Hello!": "Hello! How can I help you today?",
    "What is two plus two?": "Two plus two is four.",
    "Count to five.": "One, two, three, four, five.",
}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_builtin_lookup() -> None:
    assert "tiny-llama" in list_builtin_models()
    assert builtin_model_dir(BUILTIN_PREFIX + "tiny-llama") == MODEL
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        builtin_model_dir("no-such-model")
    with pytest.raises(FileNotFoundError):
        builtin_model_dir("../models")


def test_shipped_files_match_manifest() -> None:
    manifest = json.loads((MODEL / "MANIFEST.json").read_text())
    files = manifest["files"]
    on_disk = {p.relative_to(MODEL).as_posix() for p in MODEL.rglob("*") if p.is_file() and p.name != "MANIFEST.json"}
    assert on_disk == set(files)
    for rel, info in files.items():
        path = MODEL / rel
        assert path.stat().st_size == info["bytes"], rel
        assert sha256(path) == info["sha256"], rel
    total = sum(f["bytes"] for f in files.values())
    assert total < 6_000_000


def test_model_facts() -> None:
    cfg = json.loads((MODEL / "hf" / "config.json").read_text())
    assert cfg["rope_theta"] == 10000.0  # top level, for mistral.rs
    assert cfg["head_dim"] == 32 and cfg["num_attention_heads"] == 4 and cfg["hidden_size"] == 128
    assert cfg["max_position_embeddings"] == 256
    genai = json.loads((MODEL / "onnx" / "genai_config.json").read_text())
    assert genai["search"]["max_length"] == 256
    tok_cfg = json.loads((MODEL / "hf" / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"].startswith("{{ bos_token }}")
    assert (tok_cfg["bos_token"], tok_cfg["eos_token"], tok_cfg["pad_token"]) == ("<s>", "</s>", "<pad>")


@pytest.mark.parametrize("prompt", sorted(COMPLETIONS))
def test_ort_greedy_completion(prompt: str) -> None:
    assert ort_greedy_reference(MODEL, prompt, 120) == COMPLETIONS[prompt]


@pytest.mark.parametrize("question", sorted(CHATS))
@pytest.mark.parametrize("system", [None, "You are a helpful assistant."])
def test_ort_greedy_chat(question: str, system: str | None) -> None:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    assert ort_greedy_reference(MODEL, messages, 60) == CHATS[question]


@pytest.mark.skipif(not HAS_TORCH, reason="the make-model extra (torch, transformers, onnx, onnx-ir) is not installed")
def test_transformers_greedy_equals_ort() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(MODEL / "hf")
    model = AutoModelForCausalLM.from_pretrained(MODEL / "hf")
    model.eval()

    def hf_greedy(ids: list[int], max_new: int) -> str:
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=max_new,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        return str(tok.decode(out[0][len(ids) :], skip_special_tokens=True))

    for prompt, expected in COMPLETIONS.items():
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id
        assert hf_greedy(ids, 120) == expected == ort_greedy_reference(MODEL, prompt, 120)
    for question, expected in CHATS.items():
        messages = [{"role": "user", "content": question}]
        rendered: Any = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if not isinstance(rendered, list):  # transformers 5 returns a BatchEncoding
            rendered = rendered["input_ids"]
        assert hf_greedy(list(rendered), 60) == expected == ort_greedy_reference(MODEL, messages, 60)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="the make-model extra (torch, transformers, onnx, onnx-ir) is not installed")
def test_remaking_is_byte_identical(tmp_path: Path) -> None:
    manifests = remade_manifests(REPO / "scripts" / "make_tiny_model.py", tmp_path)
    assert manifests[0] == manifests[1]
    assert "hf/model.safetensors" in manifests[0] and "onnx/model.onnx.data" in manifests[0]
