"""Process-wide Thespian settings applied before any actor system starts.

Thespian binds every listening socket to 0.0.0.0 and unpickles what arrives. atomr binds the
address the operator chose (loopback by default) by adjusting Thespian's IP address class once,
in the process that starts (or connects to) the system, before the first ActorSystem; the admin,
logger and actor processes it forks inherit it. The same setup applies atomr's wire-compatible
transport speed patches (``atomr.cluster.thespian_patches``; ``ATOMR_THESPIAN_PATCHES=0`` turns them off),
the fixes for Thespian bugs that would break atomr's guarantees (``atomr.cluster.thespian_fixes``, always),
and then authenticates every frame with the cluster key (``atomr.cluster.auth``; always on: a key
is required beyond loopback, a per-user default serves loopback).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from atomr.cluster.thespian_fixes import apply_fixes
from atomr.cluster.thespian_patches import apply_patches

if TYPE_CHECKING:
    from atomr.cluster.auth import ClusterKey

DEFAULT_BIND = "127.0.0.1"
# Thespian waits 35 s (times the attempt number) before re-sending a message whose delivery was
# not acknowledged in time; on a busy machine a request then sits idle for 35 s. atomr retries
# after this many seconds instead.
TRANSMIT_RETRY_S = 0.5
_applied_bind: str | None = None


def configure_thespian(bind_host: str = DEFAULT_BIND, cluster_key: ClusterKey | None = None) -> ClusterKey:
    """Make Thespian listen on `bind_host` only and sign/check frames with the cluster key.

    `cluster_key` defaults to what ``atomr.cluster.auth.resolve_key`` finds for `bind_host` (it
    raises ``ClusterKeyError`` beyond loopback when none is configured). Idempotent; call before
    ``ActorSystem(...)``. Returns the key in use.
    """
    # imported here: `import atomr` stays free of it, so `python -m atomr.cluster.auth` runs it once
    from atomr.cluster.auth import install, resolve_key

    global _applied_bind
    key = cluster_key or resolve_key(bind_host)  # before anything changes: a refused key changes nothing
    os.environ["ATOMR_BIND"] = bind_host
    # the address actors are told to reach this system at: the bound one, or the advertised one
    advertised = bind_host if bind_host not in ("", "0.0.0.0") else os.environ.get("ATOMR_ADVERTISE")
    if advertised:
        os.environ["THESPIAN_BASE_IPADDR"] = advertised
    if _applied_bind is not None:
        _applied_bind = bind_host
        install(key)
        return key
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
    apply_fixes()
    install(key)  # after the speed patches: they check Thespian's own code before replacing it
    _applied_bind = bind_host
    return key


def _shorten_transmit_retry() -> None:
    from datetime import timedelta

    from thespian.system.transport import TransmitIntent

    defaults = TransmitIntent.__init__.__defaults__
    if defaults and isinstance(defaults[-1], timedelta):
        TransmitIntent.__init__.__defaults__ = (*defaults[:-1], timedelta(seconds=TRANSMIT_RETRY_S))
