"""The version switch (hot swap) of one deployment, as plain state: no actors, no sending.

A new version's replicas start beside the serving ones (phase ``starting``). Once all of them are
ready, the new version takes a canary share of new requests for a while if the deployment's
`rollout` asks for one (``canary``), then every new request while the old replicas finish what
they hold and stop (``draining``); when every old replica has exited the switch is over. If the
new version fails before taking all traffic it is rolled back and the old one keeps serving.

`VersionSwitch` answers the questions of the switch (is this replica new, is it retiring, which
version does a new request go to, what happens next); `atomr.actors.replica_set.ReplicaSet`
applies its answers to the replica table and turns them into actions for the coordinator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from atomr.actors.dispatcher import LIVE
from atomr.core.deployment import Deployment

if TYPE_CHECKING:
    from atomr.actors.dispatcher import Replica

# What a switch does next (`VersionSwitch.next_step`) or on a timer (`VersionSwitch.on_timer`).
CANARY = "canary"  # the new version is ready: give it its canary share first
SWITCH = "switch"  # move every new request to the new version
DONE = "done"  # every old replica has exited: the switch is over
ROLL_BACK = "roll_back"  # the new version did not get ready in time


@dataclass(slots=True)
class VersionSwitch:
    """A version switch in course: the new version's replicas start beside the serving ones, then
    take a canary share of new requests (if configured), then all of them while the old drain."""

    dep: Deployment  # the new version's deployment
    old_version: str
    phase: str = "starting"  # starting | canary | draining

    @property
    def version(self) -> str:
        """The new version."""
        return self.dep.version

    def is_new(self, r: Replica) -> bool:
        """A replica of the version being started (before traffic moved to it)."""
        return self.phase in ("starting", "canary") and r.version == self.dep.version

    def retiring(self, r: Replica) -> bool:
        """A replica of the old version after traffic moved to the new one."""
        return self.phase == "draining" and r.version == self.old_version

    def target_version(self, serving: str, draw: Callable[[], float]) -> str:
        """The version a new request goes to: `serving`, or during the canary the new one for a
        `canary_share` of requests (`draw()` is a uniform number in [0, 1), drawn only then)."""
        if self.phase == "canary" and draw() < self.dep.rollout.canary_share:
            return self.dep.version
        return serving

    def new_replicas(self, replicas: Iterable[Replica]) -> list[Replica]:
        return [r for r in replicas if r.version == self.dep.version]

    def old_replicas(self, replicas: Iterable[Replica]) -> list[Replica]:
        return [r for r in replicas if r.version == self.old_version]

    def next_step(self, replicas: Iterable[Replica]) -> str | None:
        """What the switch does now, given the replicas: `CANARY` or `SWITCH` once every new
        replica is ready (while starting), `DONE` once every old replica is gone (while
        draining), else None."""
        if self.phase == "starting":
            new = self.new_replicas(replicas)
            if new and all(r.state == "ready" for r in new):
                rollout = self.dep.rollout
                return CANARY if rollout.canary_share > 0 and rollout.canary_s > 0 else SWITCH
        elif self.phase == "draining":
            if all(r.state in ("exited", "isolated") for r in self.old_replicas(replicas)):
                return DONE
        return None

    def on_timer(self, kind: str, version: str) -> str | None:
        """What a switch timer means now: `ROLL_BACK` when the new version was not ready in time,
        `SWITCH` when the canary time is over; None for a timer of another switch or phase."""
        if version != self.dep.version:
            return None
        if kind == "switch-timeout" and self.phase == "starting":
            return ROLL_BACK
        if kind == "switch-canary" and self.phase == "canary":
            return SWITCH
        return None

    def begin_canary(self) -> float:
        """Enter the canary phase; returns how long it lasts (seconds)."""
        self.phase = "canary"
        return self.dep.rollout.canary_s

    def begin_draining(self, replicas: Iterable[Replica]) -> list[Replica]:
        """Traffic moves to the new version: returns the old replicas to stop now (live and idle;
        the busy ones stop when their last request ends) and marks the old ones that are neither
        live nor stopping (isolated ones) as exited, so the switch does not wait for them."""
        self.phase = "draining"
        stop = []
        for r in self.old_replicas(replicas):
            if r.state in LIVE and not r.inflight:
                stop.append(r)
            elif r.state not in LIVE and r.state != "stopping":
                r.state = "exited"
        return stop

    def text(self, replicas: Iterable[Replica]) -> str:
        """The switch's progress, as status shows it."""
        replicas = list(replicas)
        if self.phase == "starting":
            new = self.new_replicas(replicas)
            ready = sum(1 for r in new if r.state == "ready")
            return f"starting version {self.dep.version}: {ready}/{len(new)} replicas ready"
        if self.phase == "canary":
            return f"canary: {self.dep.rollout.canary_share:.0%} of new requests to version {self.dep.version}"
        left = sum(1 for r in self.old_replicas(replicas) if r.state not in ("exited",))
        return f"serving version {self.dep.version}; version {self.old_version} draining ({left} replica(s) left)"
