"""Cascades inside a gateway: one request climbs the tiers until an answer is confident enough.

A request to a cascade's name becomes one session here. The gateway sends the first tier's
request (same prompt and parameters, logprobs on, id ``<id>:t1``) through its own `accept`, as
its requester, exactly as the HTTP front does; the tier's events come back to the gateway, and a
`StreamAssembler` per tier puts them in order. When the tier's answer is complete, its token
logprobs are judged (`atomr.core.cascade.accepts`): accepted, it is sent to the caller; rejected, or
when the tier failed, the next tier is asked. The caller sees one request.

What streams: the answer of a tier below the last is held in the gateway until it is accepted
(only then can it be judged), then sent to the caller as the chunks that tier produced, at once;
the last tier's answer is always accepted, so its chunks are relayed to the caller as they
arrive. Every event the caller gets carries the answering deployment and `tier` (1-based); the
usage is that tier's. Logprobs reach the caller only when it asked for them.

Sessions time out like any caller (the request's deadline, plus the assembler's wait for chunks
that a final overtook), checked by the gateway's tick; a cancel from the caller cancels the
tier in flight.

The lane asks its gateway for what `CascadeHost` lists, and nothing else: the gateway passes
itself in.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from atomr.actors.messages import Address, WorkItem
from atomr.core.cascade import accepts, confidence_of, price
from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, InferenceError
from atomr.core.policies import Cascade
from atomr.core.types import StreamEvent
from atomr.observability.metrics import OrchestrationMetrics
from atomr.serving.stream_assembly import Step, StreamAssembler

log = structlog.get_logger("atomr.cascade")

TICK_S = 0.5


class CascadeHost(Protocol):
    """What a cascade lane needs from its gateway (all on the gateway's actor thread)."""

    @property
    def address(self) -> Address:
        """The requester of the tiers' requests: their events come back to the lane through it."""
        ...

    def accept(self, items: list[WorkItem]) -> None:
        """Admit and forward requests, as the gateway does every request."""
        ...

    def emit(self, address: Address, event: StreamEvent) -> None:
        """Send a stream event to a caller (batched with the others for it)."""
        ...

    def cancel_requests(self, request_ids: list[str], model: str) -> None: ...

    def is_cascade(self, name: str) -> bool: ...

    def deployment_spec(self, name: str) -> Deployment | None:
        """The deployment a model name stands for (for its prices), if known."""
        ...


@dataclass(slots=True)
class Session:
    item: WorkItem  # the caller's request
    cascade: Cascade
    tier: int = -1  # index of the tier asked now
    tier_item: WorkItem | None = None
    assembler: StreamAssembler | None = None
    chunks: list[StreamEvent] = field(default_factory=list)  # the current tier's, held until judged
    relayed: int = 0  # chunks already sent to the caller (last tier only)
    spent: float = 0.0  # USD of the tiers answered so far
    check_at: float = 0.0  # time.time() at which the assembler's wait is over
    trail: list[str] = field(default_factory=list)  # why each tier was passed over

    @property
    def last(self) -> bool:
        return self.tier == len(self.cascade.tiers) - 1


class CascadeLane:
    def __init__(self, host: CascadeHost, metrics: OrchestrationMetrics) -> None:
        self.host = host
        self.metrics = metrics
        self.by_tier: dict[str, Session] = {}  # tier request id -> session
        self.by_caller: dict[str, Session] = {}  # caller's request id -> session

    def __len__(self) -> int:
        return len(self.by_caller)

    def owns(self, request_id: str) -> bool:
        return request_id in self.by_tier

    # ---- from the gateway (actor thread) ----

    def start(self, item: WorkItem, cascade: Cascade) -> None:
        old = self.by_caller.pop(item.request.request_id, None)
        if old is not None:  # the caller asked again (it saw its first try fail): forget that try
            self._drop(old)
        s = Session(item, cascade)
        self.by_caller[item.request.request_id] = s
        self._ask_next(s)

    def on_event(self, ev: StreamEvent) -> None:
        s = self.by_tier.get(ev.request_id)
        if s is None or s.assembler is None:
            return
        self._steps(s, s.assembler.on_event(ev))

    def tick(self, now: float | None = None) -> None:
        """Give up waiting where the assembler's time is over (deadline, or chunks never came)."""
        now = time.time() if now is None else now
        for s in list(self.by_caller.values()):
            if s.assembler is not None and now >= s.check_at:
                self._steps(s, [s.assembler.on_timeout()])

    def cancel(self, request_ids: list[str]) -> None:
        for rid in request_ids:
            s = self.by_caller.pop(rid, None)
            if s is not None:
                self._drop(s)

    # ---- a session's steps ----

    def _ask_next(self, s: Session) -> None:
        s.tier += 1
        tier = s.cascade.tiers[s.tier]
        req = s.item.request
        if s.tier_item is not None:
            self.by_tier.pop(s.tier_item.request.request_id, None)
        if self.host.is_cascade(tier.deployment):
            err = ConfigError(f"cascade tier {tier.deployment!r} is itself a cascade", field="tiers")
            self._tier_failed(s, err)
            return
        params = req.params if s.last else dataclasses.replace(req.params, logprobs=True)
        tier_req = dataclasses.replace(
            req,
            model=tier.deployment,
            request_id=f"{req.request_id}:t{s.tier + 1}",
            params=params,
            stream=req.stream if s.last else False,
        )
        s.tier_item = WorkItem(tier_req, self.host.address, hops=s.item.hops)
        s.assembler = StreamAssembler(tier_req.request_id)
        s.chunks, s.relayed = [], 0
        self._rearm(s)
        self.by_tier[tier_req.request_id] = s
        self.host.accept([s.tier_item])

    def _steps(self, s: Session, steps: list[Step]) -> None:
        for step in steps:
            if self.by_caller.get(s.item.request.request_id) is not s:
                return  # finished or cancelled by an earlier step
            if step.resend and s.tier_item is not None:
                self.host.accept([s.tier_item])  # its replica died before any text: ask again
            elif step.error is not None:
                self._tier_failed(s, step.error)
            elif step.event is not None and step.final:
                self._tier_answered(s, step.event)
            elif step.event is not None and step.event.chunk is not None:
                if s.last:
                    self._to_caller(s, step.event, seq=s.relayed)
                    s.relayed += 1
                else:
                    s.chunks.append(step.event)
        if s.assembler is not None:
            self._rearm(s)

    def _tier_answered(self, s: Session, final: StreamEvent) -> None:
        tier = s.cascade.tiers[s.tier]
        s.spent += price(self.host.deployment_spec(final.deployment or tier.deployment), final.usage)
        if s.last:
            self._to_caller(s, final, seq=s.relayed)
            self._finish(s, final)
            return
        conf = confidence_of(ev.chunk for ev in s.chunks if ev.chunk is not None)
        if accepts(tier, conf, last=False):
            replica = next((ev.replica for ev in s.chunks if ev.replica), final.replica)
            for i, ev in enumerate(s.chunks):
                self._to_caller(s, ev, seq=i, replica=replica)
            self._to_caller(s, final, seq=len(s.chunks), replica=replica)
            self._finish(s, final)
            return
        seen = "no logprobs" if conf is None else f"mean {conf.mean:.3f}, min {conf.min:.3f}"
        s.trail.append(f"tier {s.tier + 1} ({final.deployment or tier.deployment}): low confidence ({seen})")
        self.metrics.escalated(s.cascade.name, s.tier + 1, "low_confidence")
        self._ask_next(s)

    def _tier_failed(self, s: Session, error: InferenceError) -> None:
        req = s.item.request
        out_of_time = req.deadline is not None and time.time() >= req.deadline
        if s.last or out_of_time or error.kind == "cancelled":
            info = dataclasses.replace(error.info(), details={**error.details, "tier": s.tier + 1, "trail": s.trail})
            tier = s.cascade.tiers[s.tier]
            ev = StreamEvent(req.request_id, error=info, final=True, seq=s.relayed, deployment=tier.deployment)
            self.host.emit(s.item.reply_to, dataclasses.replace(ev, tier=s.tier + 1))
            self._end(s)
            return
        s.trail.append(f"tier {s.tier + 1}: {error.kind}: {error.message}")
        self.metrics.escalated(s.cascade.name, s.tier + 1, "error")
        self._ask_next(s)

    def _finish(self, s: Session, final: StreamEvent) -> None:
        tiers = s.cascade.tiers
        last_spec = self.host.deployment_spec(final.deployment if s.last else tiers[-1].deployment)
        baseline = price(last_spec, final.usage)
        deployment = final.deployment or tiers[s.tier].deployment
        self.metrics.cascade_done(s.cascade.name, s.tier + 1, deployment, s.spent, baseline)
        log.info(
            "cascade",
            request_id=s.item.request.request_id,
            cascade=s.cascade.name,
            tier=s.tier + 1,
            deployment=deployment,
            cost_usd=round(s.spent, 8),
            baseline_usd=round(baseline, 8),
            passed_over=s.trail or None,
        )
        self._end(s)

    # ---- helpers ----

    def _to_caller(self, s: Session, ev: StreamEvent, *, seq: int, replica: str | None = None) -> None:
        chunk = ev.chunk
        if chunk is not None and chunk.logprobs is not None and not s.item.request.params.logprobs:
            chunk = dataclasses.replace(chunk, logprobs=None)
        out = dataclasses.replace(
            ev,
            request_id=s.item.request.request_id,
            chunk=chunk,
            seq=seq,
            replica=ev.replica if replica is None else replica,
            tier=s.tier + 1,
        )
        self.host.emit(s.item.reply_to, out)

    def _rearm(self, s: Session) -> None:
        assert s.assembler is not None
        deadline = s.item.request.deadline
        now = time.time()
        s.check_at = now + s.assembler.wait_time((deadline if deadline is not None else now + 600.0) - now)

    def _drop(self, s: Session) -> None:
        """Forget a session and cancel its tier in flight."""
        item = s.tier_item
        self._end(s)
        if item is not None:
            self.host.cancel_requests([item.request.request_id], item.request.model)

    def _end(self, s: Session) -> None:
        self.by_caller.pop(s.item.request.request_id, None)
        if s.tier_item is not None:
            self.by_tier.pop(s.tier_item.request.request_id, None)
        s.assembler = None
