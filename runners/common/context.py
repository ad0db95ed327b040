"""The context-length check every local runner makes before it starts generating, and what a
gateway needs to make a tokenizer-free one before the request leaves it (`max_token_chars`)."""

from __future__ import annotations

import json
from pathlib import Path

from atomr.core.errors import ContextLengthError
from atomr.core.runner import PromptLimit
from atomr.core.types import InferenceRequest


def check_context(request: InferenceRequest, n_prompt: int, context_length: int) -> None:
    """Raise `ContextLengthError` (naming the prompt's field) when prompt + max_tokens do not fit."""
    max_tokens = request.params.max_new_tokens
    if n_prompt + max_tokens > context_length:
        raise ContextLengthError(
            f"the prompt has {n_prompt} tokens and max_tokens is {max_tokens}: "
            f"{n_prompt + max_tokens} exceeds the model's context length of {context_length}",
            field="messages" if request.messages is not None else "prompt",
            details={"prompt_tokens": n_prompt, "context_length": context_length},
        )


def max_token_chars(tokenizer_json: Path) -> int:
    """The most characters one token of a Hugging Face ``tokenizer.json`` stands for (its longest
    vocabulary entry or added token; a byte-level entry's characters are its bytes, which decode
    to no more characters), or 0 when the file cannot tell."""
    try:
        raw = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    vocab = (raw.get("model") or {}).get("vocab") or {}
    entries = vocab.keys() if isinstance(vocab, dict) else (e[0] for e in vocab if e)
    added = (t.get("content", "") for t in raw.get("added_tokens") or [])
    return max((len(str(e)) for e in (*entries, *added)), default=0)


def prompt_limit_of(context_length: int, folder: Path) -> PromptLimit | None:
    """What a runner reports to gateways (`ModelRunner.prompt_limit`) for a model whose
    ``tokenizer.json`` is in `folder`; None when that file tells nothing."""
    chars = max_token_chars(folder / "tokenizer.json")
    return PromptLimit(context_length, chars) if chars and context_length > 0 else None
