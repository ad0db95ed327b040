"""Sliding-window request and token budgets (RPM / TPM), as pure bookkeeping.

The rate-limiter actor owns one `Budget` per limit key; nothing here knows about actors or time
sources beyond the `now` it is given. "At most `rpm` requests and `tpm` tokens in any 60 seconds"
is exact: every grant is recorded with its time and only leaves the window 60 s later; unused
parts of a lease are given back, and token estimates are settled with the real usage.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

WINDOW_S = 60.0


@dataclass(slots=True)
class _Grant:
    at: float
    requests: int
    tokens: int


class Budget:
    """`rpm` requests and `tpm` tokens per `window_s` seconds (a minute unless told otherwise)."""

    def __init__(self, rpm: int | None, tpm: int | None, window_s: float = WINDOW_S) -> None:
        self.rpm, self.tpm, self.window_s = rpm, tpm, window_s
        self._grants: collections.deque[_Grant] = collections.deque()
        self._used_requests = 0
        self._used_tokens = 0

    def _expire(self, now: float) -> None:
        while self._grants and now - self._grants[0].at >= self.window_s:
            g = self._grants.popleft()
            self._used_requests -= g.requests
            self._used_tokens -= g.tokens

    def grant(self, requests: int, tokens: int, now: float) -> tuple[int, int]:
        """Grant up to `requests` requests and `tokens` tokens now; returns what was granted.

        Tokens are granted only with at least one request: (0, 0) means nothing fits now.
        """
        self._expire(now)
        free_r = requests if self.rpm is None else min(requests, self.rpm - self._used_requests)
        if free_r <= 0:
            return 0, 0
        free_t = tokens if self.tpm is None else min(tokens, self.tpm - self._used_tokens)
        if tokens > 0 and free_t <= 0:
            return 0, 0
        free_t = max(0, free_t)
        self._grants.append(_Grant(now, free_r, free_t))
        self._used_requests += free_r
        self._used_tokens += free_t
        return free_r, free_t

    def granted_before(self, at: float, requests: int, tokens: int) -> None:
        """Count a grant made at `at` (by the rate limiter a head had before it restarted)."""
        self._grants.append(_Grant(at, requests, tokens))
        self._used_requests += requests
        self._used_tokens += tokens

    def give_back(self, requests: int, tokens: int, now: float) -> None:
        """Return unused parts of a grant (taken from the newest grants first)."""
        self._expire(now)
        for g in reversed(self._grants):
            if requests <= 0 and tokens <= 0:
                break
            r, t = min(requests, g.requests), min(tokens, g.tokens)
            g.requests -= r
            g.tokens -= t
            requests -= r
            tokens -= t
            self._used_requests -= r
            self._used_tokens -= t

    def settle(self, estimated: int, actual: int, now: float) -> None:
        """Correct a token estimate with the real usage."""
        if actual < estimated:
            self.give_back(0, estimated - actual, now)
        elif actual > estimated:
            extra = actual - estimated
            self._grants.append(_Grant(now, 0, extra))
            self._used_tokens += extra

    def retry_after(self, now: float) -> float:
        """Seconds until the oldest grant leaves the window (something frees up)."""
        self._expire(now)
        if not self._grants:
            return 0.0
        return max(0.0, self.window_s - (now - self._grants[0].at))


def estimate_prompt_tokens(prompt_chars: int) -> int:
    """Up-front estimate of a prompt's tokens: ~4 characters per token."""
    return prompt_chars // 4 + 1


def estimate_tokens(prompt_chars: int, max_tokens: int) -> int:
    """Up-front token estimate for TPM: the prompt's estimate, plus the whole answer."""
    return estimate_prompt_tokens(prompt_chars) + max_tokens
