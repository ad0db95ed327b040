"""Budgets and requests in flight per runtime key: the key keeper's decisions, with no I/O.

A request of a key with a money budget or a cap on requests in flight holds a place before its
deployment runs it (`reserve`): the estimate of what it may cost (its prompt's characters / 4 and
its whole ``max_tokens``, at the deployment's prices). The hold is settled when the run ends
(`settle`) with what the run really cost. A key is refused while what it spent in the period plus
what its requests in flight hold reaches its budget, so concurrent requests cannot overrun it by
more than the last one admitted could cost, and a key whose runs cost what was estimated stops
after exactly budget / cost requests. Every hold also ends at its request's deadline (`expire`),
so a run whose end was never reported (its process died) does not hold the key for ever.
"""

from __future__ import annotations

from dataclasses import dataclass

from atomr.core.errors import BudgetExceededError, ErrorInfo, RateLimitedError
from atomr.core.keys import ApiKey, nanos_to_usd
from atomr.core.spend import SpendRecord

HOLD_GRACE_S = 60.0  # a hold outlives its request's deadline by this much before it is dropped


@dataclass(frozen=True, slots=True)
class Hold:
    """A request's place in its key's budget: (request id, deployment) is one run."""

    request_id: str
    deployment: str
    key_id: str
    nanos: int  # its estimated cost
    deadline: float  # wall time after which it is dropped if never settled


@dataclass(slots=True)
class KeyAccount:
    period_start: float
    spent: int = 0  # nano-dollars spent in the period (settled runs)
    held: int = 0  # nano-dollars held by runs in flight
    inflight: int = 0


class BudgetLedger:
    """Every key's spend in its period and its runs in flight."""

    def __init__(self) -> None:
        self.accounts: dict[str, KeyAccount] = {}
        self.holds: dict[tuple[str, str], Hold] = {}

    def load(self, key_id: str, period_start: float, spent: int) -> None:
        """What a key had spent, as the store kept it."""
        self.accounts[key_id] = KeyAccount(period_start, spent)

    def account(self, key: ApiKey, now: float) -> KeyAccount:
        """`key`'s account in the period that holds `now` (a new period starts from nothing spent)."""
        start, _ = key.bounds(now)
        acc = self.accounts.get(key.id)
        if acc is None:
            acc = self.accounts[key.id] = KeyAccount(start)
        elif acc.period_start != start:
            acc.period_start, acc.spent = start, 0
        return acc

    def reserve(self, hold: Hold, key: ApiKey, now: float) -> ErrorInfo | None:
        """Hold a place for a run of `key`'s, or say why not."""
        if (hold.request_id, hold.deployment) in self.holds:
            return None  # the same run asked again (its caller resent it): it holds already
        acc = self.account(key, now)
        if key.max_parallel is not None and acc.inflight >= key.max_parallel:
            err = RateLimitedError(
                f"key {key.id} already has {acc.inflight} requests in flight (max_parallel {key.max_parallel})",
                retry_after=1.0,
            )
            return err.info()
        if key.budget_nanos is not None and acc.spent + acc.held >= key.budget_nanos:
            _, end = key.bounds(now)
            spent = nanos_to_usd(acc.spent + acc.held)
            until = "it never resets" if end is None else f"it resets in {end - now:.0f} s"
            err2 = BudgetExceededError(
                f"key {key.id} has spent its budget of {nanos_to_usd(key.budget_nanos):.6f} USD"
                f" ({key.period}): {spent:.6f} USD spent or held; {until}",
                retry_after=None if end is None else max(0.0, end - now),
                details={"reset_at": end, "budget_usd": nanos_to_usd(key.budget_nanos), "spent_usd": spent},
            )
            return err2.info()
        acc.held += hold.nanos
        acc.inflight += 1
        self.holds[(hold.request_id, hold.deployment)] = hold
        return None

    def settle(self, record: SpendRecord, key: ApiKey | None, now: float) -> KeyAccount | None:
        """A run ended: its hold is released and what it cost charged to its key's period.
        Returns the key's account when something was charged (what the store writes)."""
        hold = self.holds.pop((record.request_id, record.deployment), None)
        acc = self._release(hold)
        if key is None or record.key_id is None:
            return None
        if acc is None or acc.period_start != key.bounds(now)[0]:
            acc = self.account(key, now)
        acc.spent += record.cost_nanos
        return acc

    def expire(self, now: float) -> int:
        """Drop holds whose requests' deadlines are long past; returns how many."""
        late = [k for k, h in self.holds.items() if h.deadline + HOLD_GRACE_S < now]
        for k in late:
            self._release(self.holds.pop(k))
        return len(late)

    def _release(self, hold: Hold | None) -> KeyAccount | None:
        if hold is None:
            return None
        acc = self.accounts.get(hold.key_id)
        if acc is not None:
            acc.held -= hold.nanos
            acc.inflight -= 1
        return acc
