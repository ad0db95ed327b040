"""Rate-limiter actor (global name): the one owner of every RPM/TPM budget in the cluster.

Gateways do not ask per request: they take short leases (a few requests and tokens at once),
spend them locally and give back what they did not use, so limits stay exact across any number
of gateway processes while most requests pay no round trip. Token estimates are settled with the
real usage when a request ends.

On a head with a state directory (`UseState`), every grant is recorded there before its lease is
sent, and a limiter started again (the head restarted) counts the grants of the last window that
the previous one recorded: no limit is exceeded across a restart (parts given back before it
count as spent until they leave the window). A standby that took over also counts whatever the
old leader may have granted after its last snapshot as a whole budget spent then (a full window,
since it is unknown).
"""

from __future__ import annotations

import functools
import time
from typing import Any

from atomr.actors.messages import AcquireLease, Address, Lease, ReleaseLease, Reply, Settle, UseState
from atomr.actors.sidecar import SidecarActor
from atomr.cluster.head_state import HeadState, open_state, record
from atomr.core.ratelimit import Budget

MAX_WINDOW_S = 86400.0  # grants older than this are of no window


class RateLimiter(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budgets: dict[str, Budget] = {}
        self.state: HeadState | None = None
        self.before: dict[str, list[tuple[float, int, int]]] = {}  # key -> the last head's grants
        self.unknown_since: float | None = None

    def receiveMsg_UseState(self, msg: UseState, sender: Address) -> None:
        self.state, error = open_state(msg.state_dir)
        if msg.unknown_since is not None:  # mono time of the last snapshot the standby had
            self.unknown_since = time.monotonic() - max(0.0, time.time() - msg.unknown_since)
        if self.state is not None:
            now = time.monotonic()
            for key, ago, requests, tokens in self.state.grants(MAX_WINDOW_S):
                self.before.setdefault(key, []).append((now - ago, requests, tokens))
        self.send(sender, Reply(error is None, error=error))

    def _budget(self, key: str, rpm: int | None = None, tpm: int | None = None, window_s: float = 60.0) -> Budget:
        b = self.budgets.get(key)
        if b is None:
            b = self.budgets[key] = Budget(rpm, tpm, window_s)
            for at, requests, tokens in self.before.pop(key, []):
                b.granted_before(at, requests, tokens)
            if self.unknown_since is not None:  # what the old leader granted unseen: all of it
                b.granted_before(self.unknown_since, rpm or 0, tpm or 0)
        elif rpm is not None or tpm is not None:
            b.rpm, b.tpm, b.window_s = rpm, tpm, window_s
        return b

    def receiveMsg_AcquireLease(self, msg: AcquireLease, sender: Address) -> None:
        now = time.monotonic()
        b = self._budget(msg.key, msg.rpm, msg.tpm, msg.window_s)
        requests, tokens = b.grant(msg.requests, msg.tokens, now)
        failed = record(self.state, lambda s: s.add_grant(msg.key, requests, tokens, b.window_s)) if requests else None
        if failed is not None:
            b.give_back(requests, tokens, now)  # not recorded: not given (a restart could not count it)
            requests, tokens = 0, 0
        self.send(sender, Lease(msg.key, requests, tokens, b.retry_after(now) if requests == 0 else 0.0))

    def receiveMsg_ReleaseLease(self, msg: ReleaseLease, sender: Address) -> None:
        self._budget(msg.key).give_back(msg.requests, msg.tokens, time.monotonic())

    def receiveMsg_Settle(self, msg: Settle, sender: Address) -> None:
        now = time.monotonic()
        for key, estimated in msg.debits:
            self._budget(key).settle(estimated, msg.actual, now)
            if msg.actual > estimated:  # more tokens than granted: counted after a restart too
                record(
                    self.state,
                    functools.partial(HeadState.add_grant, key=key, requests=0, tokens=msg.actual - estimated),
                )
