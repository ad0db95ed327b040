"""The context-length check every local runner makes before it starts generating."""

from __future__ import annotations

from atomr.core.errors import ContextLengthError
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
