"""OpenAI's ``logit_bias`` (token id strings -> bias from -100 to 100) as engines take it."""

from __future__ import annotations

from collections.abc import Mapping

from atomr.core.errors import InvalidRequestError


def token_biases(raw: Mapping[str, float]) -> dict[int, float]:
    """Token id -> bias; a key that is not a token id is refused naming ``logit_bias``."""
    out: dict[int, float] = {}
    for key, bias in raw.items():
        if not str(key).isdigit():
            raise InvalidRequestError(f"logit_bias keys are token ids, got {key!r}", field="logit_bias")
        out[int(key)] = float(bias)
    return out
