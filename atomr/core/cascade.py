"""Confidence cascades, the decisions: is a tier's answer good enough, and what did it cost.

Pure functions over values (the gateway's `CascadeLane` runs the requests). A tier's answer is
judged on its token logprobs: `mean` compares the mean token logprob with the tier's threshold,
`min` the least likely token's, `mean_and_min` both (mean >= threshold and min >=
min_threshold). An answer with no logprobs (an engine that cannot report them) or no tokens is
never accepted below the last tier; the last tier's answer always is.

Cost is priced from each deployment's `cost` (USD per 1M tokens) and the usage its answer
reported. What sending everything to the last tier would have cost is estimated with the
accepted answer's usage at the last tier's prices (tokenizers differ, so it is an estimate).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from atomr.core.deployment import Deployment
from atomr.core.policies import CascadeTier
from atomr.core.types import Chunk, Usage


@dataclass(frozen=True, slots=True)
class Confidence:
    mean: float
    min: float
    tokens: int


def confidence_of(chunks: Iterable[Chunk]) -> Confidence | None:
    """Mean and minimum token logprob of an answer (None when it carries none)."""
    values = [lp.logprob for c in chunks for lp in (c.logprobs or ())]
    if not values:
        return None
    return Confidence(sum(values) / len(values), min(values), len(values))


def accepts(tier: CascadeTier, conf: Confidence | None, last: bool) -> bool:
    """Whether this tier's answer is the request's answer."""
    if last:
        return True
    if conf is None or tier.threshold is None:
        return False
    if tier.rule == "mean":
        return conf.mean >= tier.threshold
    if tier.rule == "min":
        return conf.min >= tier.threshold
    floor = tier.min_threshold if tier.min_threshold is not None else tier.threshold
    return conf.mean >= tier.threshold and conf.min >= floor


def price(spec: Deployment | None, usage: Usage | None) -> float:
    """USD for `usage` at the deployment's prices (0 when either is unknown)."""
    if spec is None or usage is None:
        return 0.0
    return spec.cost.usd(usage.prompt_tokens, usage.completion_tokens)
