"""What one deployment's run of a request cost: the spend log's row, made where the run ends.

Every deployment that ran a request makes one `SpendRecord` when its run ends (a coordinator's
`Finish`, or the HTTP front's own runner): a fallback that moved on, each tier of a cascade and
the deployment that answered are each charged for what they used, once. The same record feeds
the deployment's spend counter in /metrics and, on the head, the key keeper's spend log and the
key's budget, so the two always agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from atomr.core.deployment import Cost
from atomr.core.types import InferenceRequest, Usage


@dataclass(frozen=True, slots=True)
class SpendRecord:
    request_id: str
    at: float  # wall time of the run's end
    key_id: str | None  # the runtime key the request came with (None: a config tenant, or open)
    tenant: str
    deployment: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cost_nanos: int
    latency_s: float
    outcome: str


def spend_record(
    request: InferenceRequest,
    deployment: str,
    cost: Cost,
    usage: Usage | None,
    outcome: str,
    latency_s: float,
    at: float,
) -> SpendRecord:
    """The record of `deployment`'s run of `request` (tokens a count_tokens request counted are
    not consumed: the caller passes no usage for it)."""
    prompt = usage.prompt_tokens if usage is not None else 0
    completion = usage.completion_tokens if usage is not None else 0
    cached = usage.cached_tokens if usage is not None else 0
    return SpendRecord(
        request_id=request.request_id,
        at=at,
        key_id=request.key_id,
        tenant=request.tenant,
        deployment=deployment,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached,
        cost_nanos=cost.nanos(prompt, completion, cached),
        latency_s=latency_s,
        outcome=outcome,
    )


SPEND_BATCH_MAX = 512  # records held before they leave anyway


class SpendBatch:
    """Records waiting to leave for the key keeper. A record of a runtime key's request leaves at
    the next chance (it may settle a hold in the key's budget); the others wait for the holder's
    periodic flush (about a second) or until there are `SPEND_BATCH_MAX`: a message and a spend
    log transaction per request cost the HTTP front about half a millisecond here."""

    def __init__(self) -> None:
        self.records: list[SpendRecord] = []
        self.urgent = False

    def add(self, record: SpendRecord) -> None:
        self.records.append(record)
        self.urgent = self.urgent or record.key_id is not None or len(self.records) >= SPEND_BATCH_MAX

    def take(self, due: bool = False) -> list[SpendRecord]:
        """What should leave now (`due`: the periodic flush: everything)."""
        if not self.records or not (due or self.urgent):
            return []
        out, self.records, self.urgent = self.records, [], False
        return out
