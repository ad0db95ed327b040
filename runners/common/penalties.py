"""Presence and frequency penalties and OpenAI's ``logit_bias`` (token id strings -> bias from -100
to 100) as the engines that take them (vLLM, mistral.rs) name them: only what the caller set."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from atomr.core.errors import InvalidRequestError
from atomr.core.types import SamplingParams


def token_biases(raw: Mapping[str, float]) -> dict[int, float]:
    """Token id -> bias; a key that is not a token id is refused naming ``logit_bias``."""
    out: dict[int, float] = {}
    for key, bias in raw.items():
        if not str(key).isdigit():
            raise InvalidRequestError(f"logit_bias keys are token ids, got {key!r}", field="logit_bias")
        out[int(key)] = float(bias)
    return out


def penalty_kwargs(params: SamplingParams) -> dict[str, Any]:
    """presence_penalty, frequency_penalty and logit_bias, those the caller set."""
    out: dict[str, Any] = {}
    if params.presence_penalty is not None:
        out["presence_penalty"] = float(params.presence_penalty)
    if params.frequency_penalty is not None:
        out["frequency_penalty"] = float(params.frequency_penalty)
    if params.logit_bias:
        out["logit_bias"] = token_biases(params.logit_bias)
    return out
