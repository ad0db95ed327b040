"""Follower actor: on a standby head, writes what the leading head's manager sends into the
standby's own state file (`atomr.cluster.head_state.HeadState.replace_all`).

The standby's node process joins the leader's convention with role "standby" (never a placement
target), its state folder and its own address as capabilities; the leader's manager creates the
follower on that actor system (by its node id, as it does node agents) and names the folder
(`Follow`). A snapshot whose term is lower than the state's is refused (a head with an
older term never overwrites a newer one). The node process watches the file's `synced_at` and
takes over when it grows old (`atomr.node.standby`).
"""

from __future__ import annotations

from typing import Any

import structlog

from atomr.actors.messages import Address, Follow, Reply, StateSnapshot
from atomr.actors.sidecar import PlacedActor, SidecarActor
from atomr.cluster.head_state import HeadState, open_state, record

log = structlog.get_logger("atomr.follower")


class Follower(PlacedActor, SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.state: HeadState | None = None
        self.refused_term = 0

    def receiveMsg_Follow(self, msg: Follow, sender: Address) -> None:
        self.state, error = open_state(msg.state_dir)
        self.send(sender, Reply(error is None, error=error))

    def receiveMsg_StateSnapshot(self, msg: StateSnapshot, sender: Address) -> None:
        if self.state is None:
            return
        snapshot = msg.snapshot
        mine = self.state.term()
        if snapshot.term < mine:
            if self.refused_term != snapshot.term:
                self.refused_term = snapshot.term
                log.error("refusing the state of a head with an older term", its_term=snapshot.term, ours=mine)
            return
        failed = record(self.state, lambda s: s.replace_all(snapshot))
        if failed is not None:
            log.error("could not write the leader's state", error=failed.message)
