"""A deployment's replica set as a state machine: no actors, no sending, no clock of its own.

`ReplicaSet` is what the `Coordinator` actor decides with. On top of the request side it
inherits from `atomr.actors.dispatcher.Dispatcher` (least-outstanding dispatch within in-flight
credits, the fair queue, fail-over of a dead replica's requests, one final answer each), it
follows each replica through its life and the deployment's state, and runs the version switch
(`atomr.actors.hot_swap.VersionSwitch` decides its steps). Each public method takes one event (a
replica is ready, failed to load, exited, was placed; a node joined or was lost; a request
arrived; a timer fired...), updates the state and returns the `Action`s that carry out its
decision, in order.

Supervision follows the deployment's policy: a replica that dies or fails to load is placed again
(by the manager, on a live node) after an exponential backoff; past the restart intensity
(`max_restarts` restarts within `window_s`), or at once for failures a restart cannot fix
(`is_permanent`: missing files, bad config, refused credentials, out of memory), it is isolated
and the deployment is degraded. One isolated because no node had room is placed again when a node
joins. Times come from the `clock` (monotonic: restart intensity, latencies) and `wall_clock`
(request deadlines) given at construction, and the canary share from `draw`, so tests drive them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import structlog

from atomr.actors.dispatcher import (
    LIVE,
    Action,
    AdoptOn,
    Dispatcher,
    Replica,
    Restarted,
    Serve,
    ToManager,
    ToNode,
    WakeUp,
    error_event,
)
from atomr.actors.hot_swap import CANARY, DONE, ROLL_BACK, SWITCH, VersionSwitch
from atomr.actors.messages import (
    DeploymentState,
    Drained,
    PlaceReplica,
    ReplicaPlaced,
    ReplicaProgress,
    ReplicaReady,
    StopReplica,
    SwapEnded,
)
from atomr.core.deployment import Deployment
from atomr.core.errors import ErrorInfo, NotFoundError, RunnerCrashedError, says_out_of_memory
from atomr.core.status import DeploymentInfo, ReplicaInfo

log = structlog.get_logger("atomr.coordinator")

# Load failures that a restart cannot fix: the replica is isolated at once.
PERMANENT_KINDS = frozenset({"config", "not_found", "invalid_request", "auth"})
NO_NODE = "no node can host it"  # how an isolated replica that waits for a node begins its error
RESTART_SOON_S = 0.01  # delay before placing again a replica that waits for a node


def is_permanent(err: ErrorInfo) -> bool:
    """Whether a load failure is one a restart cannot fix (isolate at once): missing files, bad
    configuration, refused credentials, out of memory."""
    return err.kind in PERMANENT_KINDS or bool(err.details.get("out_of_memory")) or says_out_of_memory(err.message)


class ReplicaSet(Dispatcher):
    """The replicas of one deployment, their supervision and version switch (see the module doc)."""

    # ---- replica lifecycle ----

    def start(
        self, placements: Iterable[ReplicaPlaced], adopt: bool = False, previous: DeploymentInfo | None = None
    ) -> list[Action]:
        """The first instance of each slot is starting where placed; with `adopt`, they are the
        running replicas of the coordinator this one replaces (`previous`: what it knew)."""
        before = {ri.replica_id: ri for ri in (previous.replicas if previous is not None else [])}
        if adopt and previous is not None and previous.state in ("ready", "degraded"):
            self.state = previous.state  # serving: requests wait for the adopted replicas
        for p in placements:
            r = Replica(p.slot, self.dep.version)
            self.replicas[p.slot] = r
            r.place(p)
            if adopt or p.adopt:
                self._adopt(r, p, before.get(p.slot))
        if adopt or any(p.adopt for p in placements):
            log.warning("coordinator replaced: adopting replicas", deployment=self.name, replicas=len(self.replicas))
            self._changed()
        return self._take()

    def _adopt(self, r: Replica, p: ReplicaPlaced, before: ReplicaInfo | None) -> None:
        """Take over a replica of the coordinator this one replaces (its runner host lives on)."""
        if before is not None:
            r.restarts, r.error = before.restarts, before.error
            if before.state == "isolated":
                r.state, r.unplaced = "isolated", (before.error or "").startswith(NO_NODE)
                return
        if p.node_agent is None:  # it was waiting for a node: place it now
            r.state = "restarting"
            self._out.append(WakeUp(RESTART_SOON_S, ("restart", r.slot)))
            return
        self._out.append(AdoptOn(p.node_agent, p.instance))  # answered by ReplicaReady

    def ready(self, msg: ReplicaReady) -> list[Action]:
        """A replica loaded its model (or an adopted one reported in, with its requests)."""
        r = self.by_instance(msg.replica_id)
        if r is None:
            return []
        r.address, r.node_id, r.pid, r.visible_devices = msg.address, msg.node_id, msg.pid, msg.visible_devices
        if msg.prompt_limit is not None:
            self.prompt_limits[r.version] = msg.prompt_limit
        self._take_over(r, msg.inflight, msg.finals)
        if r.state == "stopping" or self.state == "draining" or self._retiring(r):
            self._stop(r)
            return self._take()
        r.state, r.error = "ready", None
        log.info("replica ready", deployment=self.name, replica=r.instance, node=r.node_id, pid=r.pid)
        if self._is_new(r):
            self._switch_progress()
        self._changed()
        return self._take()

    def failed(self, instance: str, error: ErrorInfo) -> list[Action]:
        """A replica failed to load: stop its process, then restart, isolate, or roll back."""
        r = self.by_instance(instance)
        if r is None:
            return []
        log.warning("replica failed to load", deployment=self.name, replica=r.instance, error=error.message)
        # The runner host process is still alive: stop it, and do not count its exit again.
        self._out.append(ToNode(r.node_agent, StopReplica(r.instance)))
        if self._is_new(r):
            r.state = "exited"
            self._roll_back(f"replica {r.instance} failed to load: {error.message}")
        elif is_permanent(error):
            self._isolate(r, error.message)
        else:
            self._restart_later(r, error.message)
        return self._take()

    def exited(self, instance: str) -> list[Action]:
        """A replica's process exited (its node agent saw it)."""
        r = self.by_instance(instance)
        if r is not None:
            self._replica_gone(r, "its process exited")
        return self._take()

    def node_lost(self, node_id: str, instances: Iterable[str]) -> list[Action]:
        """A node is gone with these replica instances."""
        for instance in instances:
            r = self.by_instance(instance)
            if r is not None:
                self._replica_gone(r, f"node {node_id} was lost")
        return self._take()

    def _replica_gone(self, r: Replica, why: str) -> None:
        if r.state in ("restarting", "isolated", "exited"):
            return  # this instance's end was already handled (it failed to load, or was replaced)
        if self._is_new(r):
            r.state, r.address = "exited", None
            self._fail_over(r)
            self._roll_back(f"replica {r.instance} died while the new version started: {why}")
            return
        stopping = r.state == "stopping" or self.state == "draining" or self._retiring(r)
        # Not ready any more before its requests are re-queued, so none goes back to it.
        r.state, r.address = ("exited" if stopping else "restarting"), None
        self._fail_over(r)
        if stopping:
            self._maybe_drained()
            self._switch_progress()
        else:
            log.warning("replica died", deployment=self.name, replica=r.instance, why=why)
            self._restart_later(r, why)
        self._changed()

    def _restart_later(self, r: Replica, reason: str) -> None:
        """Place `r` again after a backoff, or isolate it past the restart intensity."""
        sup = self.dep.supervision
        if not sup.restart or self.state == "draining":
            self._isolate(r, reason)
            return
        now = self.clock()
        while r.restart_times and now - r.restart_times[0] > sup.window_s:
            r.restart_times.popleft()
        if len(r.restart_times) >= sup.max_restarts:
            self._isolate(r, f"{len(r.restart_times)} restarts within {sup.window_s:g} s; last failure: {reason}")
            return
        r.restart_times.append(now)
        r.restarts += 1
        self._out.append(Restarted(r.slot, self._metrics_version(r.slot)))
        r.state, r.error, r.address = "restarting", reason, None
        self._out.append(WakeUp(sup.backoff(len(r.restart_times)), ("restart", r.slot)))
        self._changed()

    def restart_due(self, slot: str) -> list[Action]:
        """A restart's backoff is over: ask the manager to place the slot's next incarnation."""
        r = self.replicas.get(slot)
        if r is None or r.state != "restarting" or self.state == "draining":
            return []
        n = int(r.instance.rpartition(".")[2]) + 1
        return [ToManager(PlaceReplica(self.dep, slot, f"{slot}.{n}"))]

    def placed(self, msg: ReplicaPlaced) -> list[Action]:
        """The manager placed a restarting replica (or found no node that can host it)."""
        r = self.replicas.get(msg.slot)
        if r is None or r.state != "restarting":
            return []
        if msg.node_id is None:
            self._isolate(r, f"{NO_NODE}: {msg.reason}")
            r.unplaced = True
            return self._take()
        r.place(msg)
        r.state = "starting"
        log.info("replica restarting", deployment=self.name, replica=r.instance, node=r.node_id)
        return self._take()

    def node_joined(self, node_id: str) -> list[Action]:
        """A new node may have room for the replicas that no node could host: place them again."""
        if self.state == "draining":
            return []
        for r in self.replicas.values():
            if r.state == "isolated" and r.unplaced and not self._is_new(r) and not self._retiring(r):
                log.info("node joined: placing replica again", deployment=self.name, replica=r.slot, node=node_id)
                r.state, r.unplaced = "restarting", False
                self._out.append(WakeUp(RESTART_SOON_S, ("restart", r.slot)))
        self._changed()
        return self._take()

    def _isolate(self, r: Replica, reason: str) -> None:
        log.error("replica isolated", deployment=self.name, replica=r.instance, reason=reason)
        r.state, r.error, r.address, r.unplaced = "isolated", reason, None, False
        self._fail_over(r)
        self._changed()

    def _stop(self, r: Replica) -> None:
        if r.state in LIVE and r.node_agent is not None:
            self._out.append(ToNode(r.node_agent, StopReplica(r.instance)))
            r.state = "stopping"

    def drain(self) -> list[Action]:
        """Undeploy: serve what is held, start nothing new, stop every replica, then report drained."""
        self.state = "draining"
        for r in self.replicas.values():
            if r.state == "restarting":
                r.state = "exited"
        self._maybe_drained()
        return self._take()

    def _maybe_drained(self) -> None:
        if self.state != "draining" or self.inflight or len(self.queue):
            return
        for r in self.replicas.values():
            self._stop(r)
        if all(r.state in ("exited", "isolated") for r in self.replicas.values()):
            self._out.append(ToManager(Drained(self.name)))

    def stop_all(self) -> list[Action]:
        """The coordinator exits: answer every request it holds."""
        for rid in list(self.inflight):
            self._answer(rid, RunnerCrashedError("deployment stopped").info())
        for item in self.queue.drain():
            self._finish(item, error_event(item, NotFoundError(f"deployment {self.name} stopped")))
        return self._take()

    def _changed(self) -> None:
        """Recompute the deployment state, serve what waits, and tell the manager."""
        before = self.state
        if self.state not in ("draining", "failed"):
            states = [r.state for r in self.replicas.values()]
            settled = all(s in ("ready", "isolated") for s in states)
            if self.state == "deploying" and not settled:
                pass
            elif "ready" in states:
                self.state = "degraded" if "isolated" in states else "ready"
            elif any(s in LIVE for s in states):
                self.state = "degraded"
            elif self.dep.fallbacks:
                self.state = "degraded"
            else:
                self.state = "failed" if before == "deploying" else "degraded"
                errors = [r.error for r in self.replicas.values() if r.error]
                self.error = f"no replica could start: {errors[0]}" if errors else "no replica could start"
        self._pump()
        self._report()

    # ---- requests ----

    def progress(self, msg: ReplicaProgress) -> list[Action]:
        """A replica's report: requests that started streaming, final answers, its health."""
        r = self.by_instance(msg.replica_id)
        if r is None:
            return []  # from an instance already given up on: its requests were answered or moved
        if msg.health is not None:
            r.health = msg.health
            self._report()
        self._record_progress(r, msg)
        if self._retiring(r) and not r.inflight:
            self._stop(r)
        self._pump()
        self._maybe_drained()
        return self._take()

    # ---- version switch (hot swap) ----

    def swap(self, dep: Deployment, placements: Iterable[ReplicaPlaced]) -> list[Action]:
        """Start version `dep` beside the serving one; it takes over once all its replicas are ready."""
        self.switch = VersionSwitch(dep, self.dep.version)
        for p in placements:
            r = Replica(p.slot, dep.version)
            self.replicas[p.slot] = r
            r.place(p)
        log.info("version switch", deployment=self.name, old=self.dep.version, new=dep.version)
        self._out.append(WakeUp(dep.rollout.ready_timeout_s, ("switch-timeout", dep.version)))
        self._report()
        return self._take()

    def switch_timer(self, kind: str, version: str) -> list[Action]:
        """A switch timer fired: the new version's ready timeout, or the end of its canary."""
        sw = self.switch
        step = sw.on_timer(kind, version) if sw is not None else None
        if sw is not None and step == ROLL_BACK:
            self._roll_back(f"the new replicas were not ready within {sw.dep.rollout.ready_timeout_s:g} s")
        elif step == SWITCH:
            self._switch_traffic()
        return self._take()

    def _is_new(self, r: Replica) -> bool:
        return self.switch is not None and self.switch.is_new(r)

    def _retiring(self, r: Replica) -> bool:
        return self.switch is not None and self.switch.retiring(r)

    def _switch_progress(self) -> None:
        sw = self.switch
        if sw is None:
            return
        step = sw.next_step(self.replicas.values())
        if step == CANARY:
            canary_s = sw.begin_canary()
            log.info("canary", deployment=self.name, version=sw.version, share=sw.dep.rollout.canary_share)
            self._out.append(WakeUp(canary_s, ("switch-canary", sw.version)))
            self._report()
        elif step == SWITCH:
            self._switch_traffic()
        elif step == DONE:
            old = sw.old_replicas(self.replicas.values())
            for r in old:
                del self.replicas[r.slot]
            self.switch = None
            log.info("version switch done", deployment=self.name, version=sw.version)
            self._changed()
            released = [r.slot for r in old]
            self._out.append(ToManager(SwapEnded(self.name, sw.version, True, "", released, self.info())))

    def _switch_traffic(self) -> None:
        """Every new request now goes to the new version; the old replicas stop once idle."""
        sw = self.switch
        assert sw is not None
        stop = sw.begin_draining(self.replicas.values())
        self.dep = sw.dep
        self._metered.add(sw.version)
        self._out.append(Serve(sw.dep))
        log.info("traffic switched", deployment=self.name, version=sw.version)
        for r in stop:
            self._stop(r)
        self._pump()
        self._switch_progress()
        self._report()

    def _roll_back(self, reason: str) -> None:
        """The new version failed before taking all traffic: stop it; the old one keeps serving."""
        sw = self.switch
        if sw is None:
            return
        log.error("version switch rolled back", deployment=self.name, version=sw.version, reason=reason)
        gone = sw.new_replicas(self.replicas.values())
        for r in gone:
            self._stop(r)
            self._fail_over(r)  # canary requests that had not started go back to the old version
            del self.replicas[r.slot]
        self.switch = None
        self._changed()
        released = [r.slot for r in gone]
        self._out.append(ToManager(SwapEnded(self.name, sw.version, False, reason, released, self.info())))

    # ---- reporting ----

    def info(self) -> DeploymentInfo:
        """The deployment as status shows it."""
        return DeploymentInfo(
            name=self.dep.name,
            model=self.dep.model,
            runtime=self.dep.runtime,
            version=self.dep.version,
            state=self.state,
            replicas=[
                ReplicaInfo(
                    r.slot,
                    r.node_id,
                    r.state,
                    r.pid,
                    list(r.gpu_ids),
                    len(r.inflight),
                    r.error,
                    r.restarts,
                    visible_devices=r.visible_devices,
                    health=dict(r.health),
                )
                for r in self.replicas.values()
            ],
            queued=len(self.queue),
            aliases=list(self.dep.aliases),
            error=self.error,
            swap=self.switch.text(self.replicas.values()) if self.switch is not None else None,
            coordinator_pid=os.getpid(),
            prompt_limit=self.prompt_limits.get(self.dep.version),
        )

    def load(self) -> tuple[Any, ...]:
        """Queue depth and each replica's in-flight count."""
        return len(self.queue), tuple(len(r.inflight) for r in self.replicas.values())

    def refresh(self) -> list[Action]:
        """Tell the manager again when the load changed since it was last told (status stays fresh)."""
        if self.load() != self.reported_load:
            self._report()
        return self._take()

    def _report(self) -> None:
        self.reported_load = self.load()  # what the manager now shows
        self._out.append(ToManager(DeploymentState(self.info())))
