"""Process-wide Thespian settings applied before any actor system starts.

Thespian binds every listening socket to 0.0.0.0 and unpickles what arrives. atomr binds the
address the operator chose (loopback by default) by adjusting Thespian's IP address class once,
at import of the process that starts the system; forked admin and actor processes inherit it.
The same setup applies atomr's wire-compatible transport speed patches
(``atomr.thespian_patches``; ``ATOMR_THESPIAN_PATCHES=0`` turns them off).
"""

from __future__ import annotations

import os
from typing import Any

from atomr.thespian_patches import apply_patches

DEFAULT_BIND = "127.0.0.1"
# Thespian waits 35 s (times the attempt number) before re-sending a message whose delivery was
# not acknowledged in time; on a busy machine a request then sits idle for 35 s. atomr retries
# after this many seconds instead.
TRANSMIT_RETRY_S = 0.5
_applied_bind: str | None = None


def configure_thespian(bind_host: str = DEFAULT_BIND) -> None:
    """Make Thespian listen on `bind_host` only. Idempotent; call before `ActorSystem(...)`."""
    global _applied_bind
    os.environ["ATOMR_BIND"] = bind_host
    if bind_host not in ("", "0.0.0.0"):
        os.environ["THESPIAN_BASE_IPADDR"] = bind_host
    if _applied_bind is not None:
        _applied_bind = bind_host
        return
    from thespian.system.transport import IPBase

    original_init = IPBase.IPActorAddress.__init__

    def bound_init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        host = os.environ.get("ATOMR_BIND", DEFAULT_BIND)
        if host not in ("", "0.0.0.0") and self.bindname[0] == "":
            self.bindname = (host, self.bindname[1])

    IPBase.IPActorAddress.__init__ = bound_init
    _shorten_transmit_retry()
    apply_patches()
    _applied_bind = bind_host


def _shorten_transmit_retry() -> None:
    from datetime import timedelta

    from thespian.system.transport import TransmitIntent

    defaults = TransmitIntent.__init__.__defaults__
    if defaults and isinstance(defaults[-1], timedelta):
        TransmitIntent.__init__.__defaults__ = (*defaults[:-1], timedelta(seconds=TRANSMIT_RETRY_S))
