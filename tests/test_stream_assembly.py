"""The stream assembler: chunks in order, exactly one end, a resend only when nothing was shown."""

from __future__ import annotations

from atomr.core.errors import InferenceTimeoutError, RunnerCrashedError, UnavailableError
from atomr.core.types import Chunk, StreamEvent, Usage
from atomr.serving.stream_assembly import LATE_CHUNK_WAIT_S, StreamAssembler


def chunk(seq: int, text: str, replica: str = "r0.0") -> StreamEvent:
    return StreamEvent("q", chunk=Chunk(text), seq=seq, replica=replica)


def final(seq: int, replica: str = "r0.0") -> StreamEvent:
    return StreamEvent("q", final=True, seq=seq, usage=Usage(1, seq), replica=replica)


def crashed() -> StreamEvent:
    return StreamEvent("q", final=True, error=RunnerCrashedError("replica died").info())


def test_in_order_stream_ends_with_its_final() -> None:
    a = StreamAssembler("q")
    shown = [s.event.chunk.text for ev in (chunk(0, "a"), chunk(1, "b")) for s in a.on_event(ev)]  # type: ignore[union-attr]
    assert shown == ["a", "b"]
    (end,) = a.on_event(final(2))
    assert end.final and end.event is not None and end.event.usage == Usage(1, 2) and a.finished
    assert a.on_event(chunk(3, "late")) == []  # nothing after the end


def test_a_final_that_overtook_its_chunks_waits_for_them() -> None:
    a = StreamAssembler("q")
    assert a.on_event(chunk(0, "a"))[0].event is not None
    assert a.on_event(final(2)) == []
    assert a.wait_time(100.0) == LATE_CHUNK_WAIT_S
    steps = a.on_event(chunk(1, "b"))
    assert [s.final for s in steps] == [False, True] and a.finished


def failed(seq: int) -> StreamEvent:
    return StreamEvent("q", final=True, seq=seq, error=UnavailableError("stream cut").info(), replica="r0.0")


def test_an_error_that_overtook_its_chunks_comes_after_them() -> None:
    a = StreamAssembler("q")
    assert a.on_event(failed(2)) == []  # the runner sent 2 chunks before failing; none arrived yet
    assert a.wait_time(100.0) == LATE_CHUNK_WAIT_S
    assert a.on_event(chunk(0, "a"))[0].event is not None
    steps = a.on_event(chunk(1, "b"))
    assert steps[0].event is not None and steps[0].event.chunk is not None and steps[0].event.chunk.text == "b"
    assert isinstance(steps[1].error, UnavailableError) and a.finished


def test_an_error_whose_chunks_never_come_ends_with_its_own_error() -> None:
    a = StreamAssembler("q")
    a.on_event(chunk(0, "a"))
    assert a.on_event(failed(3)) == []
    step = a.on_timeout()
    assert isinstance(step.error, UnavailableError) and not step.resend and a.finished


def test_lost_chunks_after_text_was_shown_are_runner_crashed_never_a_resend() -> None:
    a = StreamAssembler("q")
    a.on_event(chunk(0, "a"))
    a.on_event(final(3))
    step = a.on_timeout()
    assert isinstance(step.error, RunnerCrashedError) and "2 chunk(s)" in step.error.message and a.finished


def test_a_crash_before_any_text_is_resent_once() -> None:
    b = StreamAssembler("q")
    (first,) = b.on_event(crashed())
    assert first.resend and not b.finished
    (second,) = b.on_event(crashed())
    assert isinstance(second.error, RunnerCrashedError) and b.finished


def test_a_final_whose_chunks_all_died_is_resent_when_nothing_was_shown() -> None:
    a = StreamAssembler("q")
    assert a.on_event(final(2)) == []
    assert a.on_timeout().resend
    assert a.on_event(chunk(0, "x", replica="r1.0"))[0].event is not None  # the new replica streams
    assert a.on_event(final(1, replica="r1.0"))[0].final


def test_text_from_a_second_replica_after_the_first_streamed_is_refused() -> None:
    a = StreamAssembler("q")
    a.on_event(chunk(0, "a", replica="r0.0"))
    (step,) = a.on_event(chunk(0, "a", replica="r1.0"))
    assert isinstance(step.error, RunnerCrashedError) and a.finished


def test_no_event_before_the_deadline_is_a_timeout() -> None:
    a = StreamAssembler("q")
    assert a.wait_time(3.0) == 3.5 and a.wait_time(-1.0) == 0.5
    assert isinstance(a.on_timeout().error, InferenceTimeoutError)


def test_no_replica_left_after_text_was_shown_is_runner_crashed() -> None:
    """The replica died after its first chunk reached the caller but before its report of it
    reached the coordinator, which answered "no live replica": the caller has text, so to it the
    replica died while streaming."""
    a = StreamAssembler("q")
    a.on_event(chunk(0, "a"))
    gone = StreamEvent("q", final=True, error=UnavailableError("deployment d has no live replica").info())
    (step,) = a.on_event(gone)
    assert isinstance(step.error, RunnerCrashedError) and "r0.0" in step.error.message and a.finished
    # before any text, it stays what it is
    b = StreamAssembler("q")
    (step,) = b.on_event(gone)
    assert isinstance(step.error, UnavailableError)
