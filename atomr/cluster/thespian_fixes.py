"""Fixes for Thespian bugs that break atomr's guarantees; always applied, unlike the speed patches.

``child-exit``
    A parent process learns that a child actor's process died from SIGCHLD: the signal handler
    wakes the transport, which then checks every child process and sends the parent one
    ``ChildActorExited`` per dead child (``MultiProcReplicator.childDied``). Handling that message
    (``_childExited``) then drops *every* dead child from the list of children, not only the one
    the message is about. A second child that died between the check and the handling is dropped
    without a message of its own, and the check its SIGCHLD triggers finds nothing: its parent
    never hears of it. For a node agent that is a killed runner host whose replica stays "ready"
    forever. Killing 8 children a few milliseconds apart (``tests/test_thespian_fixes.py``), 7 to
    9 rounds in 20 lost at least one notice, and the system then left processes behind at
    shutdown. The fix drops only the child the message names, so the next check reports the others.

Each fix checks that the Thespian code it replaces or relies on is the code it was written for
(a hash of its source, as in ``atomr.cluster.thespian_patches``); otherwise it is skipped with a
RuntimeWarning.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

from atomr.cluster.thespian_patches import source_mismatches

# sha256 (first 16 hex digits) of the source of each Thespian function a fix replaces or relies on,
# as shipped in thespian 4.0.1.
EXPECTED: dict[str, str] = {
    "MultiProcReplicator._childExited": "910c47068615dc91",
    "MultiProcReplicator.childDied": "b123adadb3c3c121",
    "MultiProcReplicator._checkChildLiveness": "c16a260aad2df4cf",
}

_lock = threading.Lock()
_applied = False
_replaced: dict[str, object] = {}  # Thespian's own functions, once a fix has replaced them


def _targets() -> dict[str, object]:
    from thespian.system.multiprocCommon import MultiProcReplicator as replicator

    return {
        "MultiProcReplicator._childExited": _replaced.get("MultiProcReplicator._childExited", replicator._childExited),
        "MultiProcReplicator.childDied": replicator.childDied,
        "MultiProcReplicator._checkChildLiveness": replicator._checkChildLiveness,
    }


def mismatches() -> list[str]:
    """The Thespian functions that differ from the ones the fixes were written for (the originals
    are checked, also after the fixes replaced them)."""
    return source_mismatches(_targets, EXPECTED)


def _is_child(info: Any, address: Any) -> bool:
    # childDied names a child by the address it reported from once started, if it did
    return bool(info.childAddr == address or getattr(info, "childRealAddr", None) == address)


def _child_exited(self: Any, childAddr: Any) -> None:
    """Forget the exited child `childAddr` only; other dead children are reported by childDied."""
    children = getattr(self, "_child_procs", [])
    self._child_procs = [c for c in children if not _is_child(c, childAddr) or self._checkChildLiveness(c)]


def apply_fixes() -> bool:
    """Apply the fixes once per process, before its first ActorSystem; True when they are in."""
    global _applied
    with _lock:
        if _applied:
            return True
        problems = mismatches()
        if problems:
            warnings.warn(
                f"atomr: Thespian fix 'child-exit' skipped, this Thespian differs from the one it was written"
                f" for ({', '.join(problems)}); a child that dies just after another may go unreported",
                RuntimeWarning,
                stacklevel=2,
            )
            return False
        from thespian.system.multiprocCommon import MultiProcReplicator

        _replaced["MultiProcReplicator._childExited"] = MultiProcReplicator._childExited
        MultiProcReplicator._childExited = _child_exited
        _applied = True
        return True


def fixes_applied() -> bool:
    """True in a process (or one forked from it) where the fixes are in."""
    return _applied
