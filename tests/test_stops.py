"""Stop-sequence matching over streamed text pieces (atomr.runners.common.stops)."""

from __future__ import annotations

import random

import pytest
from atomr.runners.common.stops import StopMatcher, truncate_at_stop


def stream(pieces: list[str], stops: list[str]) -> tuple[str, bool, list[str]]:
    m = StopMatcher(stops)
    emitted: list[str] = []
    stopped = False
    for p in pieces:
        out, stopped = m.feed(p)
        emitted.append(out)
        if stopped:
            break
    if not stopped:
        emitted.append(m.flush())
    return "".join(emitted), stopped, emitted


def test_no_stops_passes_text_through() -> None:
    m = StopMatcher([])
    assert not m.active
    assert m.feed("hello") == ("hello", False)
    assert m.flush() == ""


def test_stop_inside_one_piece() -> None:
    assert stream(["Hello END world"], ["END"])[:2] == ("Hello ", True)


def test_stop_split_across_pieces_is_held_back() -> None:
    m = StopMatcher(["END"])
    assert m.feed("Hello E") == ("Hello ", False)
    assert m.held == "E"
    assert m.feed("N") == ("", False)
    assert m.feed("D and more") == ("", True)
    assert m.stopped and m.matched == "END"
    assert m.feed("anything") == ("", True)
    assert m.flush() == ""


def test_false_start_is_released() -> None:
    m = StopMatcher(["END"])
    assert m.feed("E") == ("", False)
    assert m.feed("Nx") == ("ENx", False)
    assert m.flush() == ""


def test_held_text_released_at_flush() -> None:
    m = StopMatcher(["\n\n"])
    assert m.feed("line\n") == ("line", False)
    assert m.flush() == "\n"


def test_earliest_stop_wins() -> None:
    assert truncate_at_stop("a stop b halt c", ["halt", "stop"]) == ("a ", True)
    assert truncate_at_stop("nothing here", ["halt"]) == ("nothing here", False)


def test_overlapping_prefixes() -> None:
    # "aab" must be found even though "aa" started a false match one character earlier.
    assert stream(["a", "a", "a", "b", "c"], ["aab"])[:2] == ("a", True)
    # one stop is a prefix of another: the shorter is found first.
    assert stream(["xy", "z"], ["xyz", "xy"])[:2] == ("", True)


def test_empty_stop_strings_are_ignored() -> None:
    m = StopMatcher(["", "END"])
    assert m.feed("abc") == ("abc", False)


def test_empty_pieces() -> None:
    assert stream(["", "ab", "", "c"], ["bc"])[:2] == ("a", True)


def test_unicode_pieces() -> None:
    assert stream(["héllo ", "wö", "rld →"], ["→"])[:2] == ("héllo wörld ", True)


@pytest.mark.parametrize("seed", range(20))
def test_random_splits_match_whole_text(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = "ab \n"
    text = "".join(rng.choice(alphabet) for _ in range(60))
    stops = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 4))) for _ in range(rng.randint(1, 3))]
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, 20)))
    pieces = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    expected = truncate_at_stop(text, stops)
    got, stopped, emitted = stream(pieces, stops)
    assert (got, stopped) == expected
    # everything emitted before the end is a prefix of the answer: nothing is taken back
    so_far = ""
    for e in emitted:
        so_far += e
        assert expected[0].startswith(so_far)
