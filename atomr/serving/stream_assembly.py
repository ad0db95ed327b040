"""Putting one request's stream events back together, for every kind of caller.

A request's chunks come straight from its replica; its final answer (success or error) comes
through the coordinator, so a final may overtake its last chunks, and a replica may die after its
chunks were sent. A final that overtook chunks waits for them, so an error after text still shows
the text that was sent before it. The `StreamAssembler` turns the events of one request, as they
arrive, into what the caller sees: chunks in order, then exactly one end (the final event, or an
error). It holds no queue and no thread: the blocking `Client` and the asyncio HTTP front both
feed it and act on its steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from atomr.core.errors import InferenceError, InferenceTimeoutError, RunnerCrashedError
from atomr.core.types import Choice, Chunk, InferenceRequest, InferenceResult, StreamEvent, Usage, assemble_choices

LATE_CHUNK_WAIT_S = 2.0  # how long a final that overtook its chunks waits for them
MAX_RESENDS = 1


@dataclass(frozen=True, slots=True)
class Step:
    """What to do next: show `event` (a chunk, or the final when `final`), raise `error`, or resend."""

    event: StreamEvent | None = None
    final: bool = False
    error: InferenceError | None = None
    resend: bool = False


RESEND = Step(resend=True)


class StreamAssembler:
    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.finished = False
        self._streamed_from = ""  # replica instance that sent the first chunk
        self._received = 0  # chunks shown so far
        self._final: StreamEvent | None = None  # a final that overtook some of its chunks
        self._resends = 0

    def wait_time(self, until_deadline: float) -> float:
        """How long to wait for the next event before calling `on_timeout`."""
        return LATE_CHUNK_WAIT_S if self._final is not None else max(0.0, until_deadline) + 0.5

    def on_event(self, ev: StreamEvent) -> list[Step]:
        """The steps an arriving event leads to (possibly none)."""
        if self.finished:
            return []
        if ev.final and ev.seq > self._received:
            self._final = ev  # wait for the chunks it overtook (an error too: the caller keeps its text)
            return []
        if self._streamed_from and ev.replica and ev.replica != self._streamed_from:
            # The coordinator re-dispatched a request whose first replica had already streamed
            # to us before dying: never show the text twice.
            return [
                self._end(RunnerCrashedError(f"replica {self._streamed_from} died while streaming {ev.request_id}"))
            ]
        if ev.final and ev.error is not None and ev.error.kind == "unavailable" and self._received and not ev.replica:
            # The coordinator's answer for a request it took for unstarted (its replica died
            # before its report of the first chunk reached it) and found no replica for: to the
            # caller, who has text, that replica died while streaming.
            return [
                self._end(RunnerCrashedError(f"replica {self._streamed_from} died while streaming {ev.request_id}"))
            ]
        steps: list[Step] = []
        if ev.chunk is not None:
            self._streamed_from = self._streamed_from or ev.replica
            self._received += 1
            if self._final is not None and self._received >= self._final.seq:
                steps.append(Step(ev))
                ev = self._final
        if ev.final and ev.error is not None and ev.error.kind == "runner_crashed" and self._received == 0:
            if self._resends < MAX_RESENDS:  # the replica died before the caller saw any text
                return [self._resend()]
        if ev.final:
            self.finished = True
            if ev.error is not None:
                steps.append(Step(error=InferenceError.from_info(ev.error)))
            else:
                steps.append(Step(ev, final=True))
            return steps
        steps.append(Step(ev))
        return steps

    def on_timeout(self) -> Step:
        """Nothing arrived within `wait_time`: resend, or end with an error."""
        final = self._final
        if final is not None and final.error is not None:
            return self._end(InferenceError.from_info(final.error))  # its own error, whatever text was lost
        if final is not None and self._received == 0 and self._resends < MAX_RESENDS:
            # Its chunks died with their replica and the caller has seen nothing: asking again
            # cannot duplicate text.
            return self._resend()
        if final is not None:
            lost = final.seq - self._received
            return self._end(RunnerCrashedError(f"{self.request_id}: {lost} chunk(s) were lost with their replica"))
        return self._end(InferenceTimeoutError(f"no answer within the deadline for {self.request_id}"))

    def _resend(self) -> Step:
        self._resends += 1
        self._final, self._streamed_from = None, ""
        return RESEND

    def _end(self, error: InferenceError) -> Step:
        self.finished = True
        return Step(error=error)


def assemble_result(request: InferenceRequest, chunks: list[Chunk], last: StreamEvent) -> InferenceResult:
    """The whole answer of a request from its chunks (of every choice) and its final event."""
    choices = assemble_choices(chunks) or (Choice(0, "", "stop"),)
    usage = next((c.usage for c in reversed(chunks) if c.usage is not None), None)
    first = choices[0]
    return InferenceResult(
        request_id=request.request_id,
        model=request.model,
        text=first.text,
        finish_reason=first.finish_reason,
        usage=usage or last.usage or Usage(completion_tokens=sum(c.token_count for c in chunks)),
        logprobs=first.logprobs,
        deployment=last.deployment,
        version=last.version,
        replica=last.replica,
        tier=last.tier,
        tool_calls=first.tool_calls,
        reasoning=first.reasoning,
        refusal=first.refusal,
        choices=choices,
        embeddings=tuple(v for c in chunks for v in c.embeddings),
        wire_events=tuple(e for c in chunks for e in c.wire_events),
    )
