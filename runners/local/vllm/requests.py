"""Translating between atomr and vLLM for one request: prompt token ids as vLLM makes them, atomr's
sampling parameters as vLLM's, vLLM's finish reasons and logprob entries as atomr's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from atomr.runners.common.penalties import penalty_kwargs
from atomr.runners.common.structured import PLAIN, Guidance, OutputPlan
from atomr.runners.local.vllm.engine import Vllm

from atomr.core.errors import InvalidRequestError
from atomr.core.types import Message, SamplingParams, TokenLogprob

if TYPE_CHECKING:
    from atomr.runners.local.vllm.process import LoadedEngine

# vLLM finish reasons that end a request normally, as atomr's finish_reason.
FINISH_REASONS = {"stop": "stop", "length": "length", "repetition": "stop"}


def prompt_ids(
    tokenizer: Any, messages: Sequence[Message] | None, prompt: str | None, plan: OutputPlan = PLAIN
) -> list[int]:
    """Token ids as vLLM itself makes them: chat via the model's template (which adds BOS, so no
    special tokens are added on top), with the plan's tools and its prefill; completion with the
    tokenizer's special tokens (BOS)."""
    if messages is not None:
        conversation = [m.for_template() for m in messages]
        tools = [t.to_openai() for t in plan.template_tools] or None
        try:
            text = tokenizer.apply_chat_template(conversation, tools=tools, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # noqa: BLE001 - jinja and transformers raise many kinds
            raise InvalidRequestError(f"the model's chat template failed: {exc}", field="messages") from None
        ids = tokenizer.encode(str(text) + plan.prefill, add_special_tokens=False)
    else:
        ids = tokenizer.encode(prompt or "", add_special_tokens=True)
    if not ids:
        raise InvalidRequestError("the prompt is empty", field="messages" if messages is not None else "prompt")
    return [int(i) for i in ids]


def sampling_params(v: Vllm, p: SamplingParams, **more: Any) -> Any:
    """vLLM's SamplingParams for atomr's (`more`: further vLLM arguments, e.g. structured outputs)."""
    kwargs: dict[str, Any] = {
        "max_tokens": p.max_new_tokens,
        "output_kind": v.delta,
        "stop": list(p.stop) or None,
        "logprobs": 0 if p.logprobs else None,  # 0: only the chosen token's logprob
        **more,
    }
    if p.greedy:
        kwargs["temperature"] = 0.0
    else:
        temperature, top_p, top_k = p.sampling
        kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k, seed=p.seed)
    kwargs.update(penalty_kwargs(p))
    return v.SamplingParams(**kwargs)


def structured_outputs(v: Vllm, guidance: Guidance | None) -> dict[str, Any]:
    """vLLM's `structured_outputs` argument for a plan's guidance (none: no argument)."""
    if guidance is None:
        return {}
    if guidance.kind == "json_schema":
        spec = v.StructuredOutputsParams(json=json.loads(guidance.data))
    elif guidance.kind == "regex":
        spec = v.StructuredOutputsParams(regex=guidance.data)
    else:  # a lark grammar in llguidance's dialect
        spec = v.StructuredOutputsParams(grammar=guidance.data)
    return {"structured_outputs": spec}


def logprob_entry(e: LoadedEngine, entry: Any, token: int) -> TokenLogprob:
    lp = entry[token]
    piece = lp.decoded_token
    if piece is None:
        piece = e.tokenizer.decode([token])
    return TokenLogprob(str(piece), float(lp.logprob))
