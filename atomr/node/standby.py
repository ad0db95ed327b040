"""A standby head: follows the leading head's state and takes over when the leader is gone.

``python -m atomr.node --role head --standby HOST:PORT`` (or a head whose state file names a
standby that now leads, see `leading_standby`): the node starts its actor system on a port of its
own (not the one it will serve on: a standby is not reachable at its address until it leads, so
that clients and members given several head addresses find the leader as the one that answers)
as a member of the leader's convention with role "standby". Its `Follower` actor writes the
leader's snapshots (twice a second: deployments, routes, cascades, tenants, member nodes, recent
rate-limit grants, the term) into its state file.

When no snapshot has come for `failover_after_s` (after a first one: a standby that never reached
its leader does not take over), it stops that actor system, raises the term by one and starts as
a head on its own address from the replicated state: the same path as a head started again
(`atomr.node.main.start_head`), so member nodes that re-point to it (``--join`` lists every head)
have their running replicas adopted. A snapshot with a lower term than the state's is refused,
so a returning old head never overwrites the state of the head that replaced it. A head asks
every 2 s whether one of its standbys answers at its address (`leading_standby`): then the
standby took over while this head was cut off from it, and this head steps down and follows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from atomr.actors.messages import STANDBY_ADDRESS_CAPABILITY, STATE_DIR_CAPABILITY
from atomr.cluster.auth import ClusterKey, probe
from atomr.cluster.head_state import HeadState
from atomr.cluster.system import free_port, port_open, start_system, stop_system

log = structlog.get_logger("atomr.standby")

SYNC_CHECK_S = 0.5


@dataclass(frozen=True)
class Standby:
    """Where this standby head stands: its node id, the leader it follows, its own address."""

    node_id: str
    leader: tuple[str, int]
    host: str  # the address it serves on once it leads
    port: int
    bind: str
    state_dir: str
    failover_after_s: float


def follow(standby: Standby, state: HeadState, stop: threading.Event, say_line: Callable[[str], None]) -> bool:
    """Follow the leader until it has been silent for `failover_after_s` (True: take over now; the
    term in `state`, the standby's state file, is already raised) or `stop` is set (False)."""
    port = free_port()
    caps = {
        "atomr.role": "standby",
        "atomr.node_id": standby.node_id,
        "atomr.host": standby.host,
        STATE_DIR_CAPABILITY: standby.state_dir,
        STANDBY_ADDRESS_CAPABILITY: f"{standby.host}:{standby.port}",
    }
    asys = start_system(port, bind=standby.bind, capabilities=caps, join=standby.leader)
    try:
        leader = f"{standby.leader[0]}:{standby.leader[1]}"
        say_line(f"standby of {leader}: follows its state (term {state.term()})")
        say_line("ready")
        started = time.time()
        warned = False
        while not stop.wait(SYNC_CHECK_S):
            synced = state.synced_at()
            if synced is None:
                if not warned and time.time() - started > standby.failover_after_s:
                    warned = True
                    log.warning("no state from the leader yet; a standby takes over only a leader it followed")
                continue
            silent = time.time() - synced
            if silent > standby.failover_after_s:
                term = state.term() + 1
                state.set_term(term)
                say_line(f"the leader {leader} is silent for {silent:.1f} s: taking over, term {term}")
                return True
        return False
    finally:
        stop_system(asys, port)


def leading_standby(state: HeadState, key: ClusterKey) -> tuple[str, int] | None:
    """The standby this head's state names that answers now, if any: it took over while this head
    was gone (a standby is reachable at its address only once it leads), so this head must follow
    it rather than lead."""
    for address in state.standbys():
        host, _, port = address.rpartition(":")
        if port_open(host, int(port)) and probe(host, int(port), key, timeout=2.0).accepted:
            return host, int(port)
    return None
