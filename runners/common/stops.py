"""Stop sequences over streamed text, for runners whose engine does not stop on strings itself.

Text arrives in pieces (one detokenized token at a time) and a stop string may straddle pieces.
`StopMatcher.feed` returns the text that is safe to show now; it holds back any tail that could
still become the start of a stop string, and on a match returns only the text before it. At the
end of a generation that did not stop on a string, `flush` releases what was held back.

    m = StopMatcher(["\\n\\n", "END"])
    out, stopped = m.feed("Hello EN")   # -> ("Hello ", False): "EN" may start "END"
    out, stopped = m.feed("D more")     # -> ("", True): stopped at "END"
"""

from __future__ import annotations

from collections.abc import Iterable


class StopMatcher:
    """Finds the first occurrence of any stop string in a stream of text pieces."""

    __slots__ = ("_held", "_max_hold", "_stopped", "_stops", "matched")

    def __init__(self, stops: Iterable[str] = ()) -> None:
        self._stops = tuple(s for s in stops if s)
        self._max_hold = max((len(s) for s in self._stops), default=1) - 1
        self._held = ""
        self._stopped = False
        self.matched: str | None = None  # the stop string that ended the text, if any

    @property
    def active(self) -> bool:
        """Whether there is anything to match at all."""
        return bool(self._stops)

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def held(self) -> str:
        """Text received but not yet released (a possible start of a stop string)."""
        return self._held

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add `piece`; return (text safe to emit now, whether a stop string was reached).

        After a stop, every further call returns ("", True).
        """
        if self._stopped:
            return "", True
        if not self._stops:
            return piece, False
        text = self._held + piece
        cut = -1
        for s in self._stops:
            i = text.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut, self.matched = i, s
        if cut != -1:
            self._held = ""
            self._stopped = True
            return text[:cut], True
        keep = self._partial_tail(text)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        """Release the held-back text (the generation ended without reaching a stop string)."""
        out, self._held = self._held, ""
        return "" if self._stopped else out

    def _partial_tail(self, text: str) -> int:
        """Length of the longest suffix of `text` that is a proper prefix of some stop string."""
        longest = min(self._max_hold, len(text))
        for n in range(longest, 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stops):
                return n
        return 0


def truncate_at_stop(text: str, stops: Iterable[str]) -> tuple[str, bool]:
    """Whole-text form: `text` cut before the earliest stop string, and whether one was found."""
    m = StopMatcher(stops)
    out, stopped = m.feed(text)
    return (out if stopped else out + m.flush()), stopped
