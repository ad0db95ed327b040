"""Rate-limiter actor (global name): the one owner of every RPM/TPM budget in the cluster.

Gateways do not ask per request: they take short leases (a few requests and tokens at once),
spend them locally and give back what they did not use, so limits stay exact across any number
of gateway processes while most requests pay no round trip. Token estimates are settled with the
real usage when a request ends.
"""

from __future__ import annotations

import time
from typing import Any

from atomr.actors.messages import AcquireLease, Address, Lease, ReleaseLease, Settle
from atomr.actors.sidecar import SidecarActor
from atomr.core.ratelimit import Budget


class RateLimiter(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.budgets: dict[str, Budget] = {}

    def _budget(self, key: str, rpm: int | None = None, tpm: int | None = None, window_s: float = 60.0) -> Budget:
        b = self.budgets.get(key)
        if b is None:
            b = self.budgets[key] = Budget(rpm, tpm, window_s)
        elif rpm is not None or tpm is not None:
            b.rpm, b.tpm, b.window_s = rpm, tpm, window_s
        return b

    def receiveMsg_AcquireLease(self, msg: AcquireLease, sender: Address) -> None:
        now = time.monotonic()
        b = self._budget(msg.key, msg.rpm, msg.tpm, msg.window_s)
        requests, tokens = b.grant(msg.requests, msg.tokens, now)
        self.send(sender, Lease(msg.key, requests, tokens, b.retry_after(now) if requests == 0 else 0.0))

    def receiveMsg_ReleaseLease(self, msg: ReleaseLease, sender: Address) -> None:
        self._budget(msg.key).give_back(msg.requests, msg.tokens, time.monotonic())

    def receiveMsg_Settle(self, msg: Settle, sender: Address) -> None:
        now = time.monotonic()
        for key, estimated in msg.debits:
            self._budget(key).settle(estimated, msg.actual, now)
