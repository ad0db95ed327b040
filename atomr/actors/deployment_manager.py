"""Deployment manager actor (global name on the head): deploy, undeploy, list and status.

It knows the cluster's nodes (the head's own agent registers; for every node that joins the
convention it creates a node agent on that node's actor system), places replicas by role and
free GPUs (one runner host per GPU), starts one coordinator per deployment, publishes ready
deployments to the registry, and answers admin requests once the outcome is known. Node agents
send heartbeats; a node silent for `node_timeout_s` is declared lost: its replicas'
coordinators are told, and they start the replicas again elsewhere through
`PlaceReplica` when a node has room; replicas that found none are placed again when a node
joins (`NodeJoined`).

A head started again on its state directory finds the agents of member nodes that outlived it
(their address is a capability of their actor system, `AGENT_CAPABILITY`): it sends them
`NodeInit(adopt=True)`, and they register with the replicas they still run. A deployment brought
back from the state (`Deploy.restore`) adopts the running replicas of its version before it
starts any anew; those no deployment wants are stopped when the restore is done (`RestoreDone`).
The member nodes that held replicas are recorded, so the head waits for them to rejoin before it
brings deployments back.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ActorSystemConventionUpdate, ChildActorExited, WakeupMessage

from atomr.actors.coordinator import Coordinator
from atomr.actors.messages import (
    AGENT_CAPABILITY,
    REGISTRY_NAME,
    STANDBY_ADDRESS_CAPABILITY,
    STATE_DIR_CAPABILITY,
    Address,
    Deploy,
    DeploymentState,
    Drain,
    Drained,
    Follow,
    GetStatus,
    Heartbeat,
    HeartbeatAck,
    HeldReplica,
    ListDeployments,
    NodeInfo,
    NodeInit,
    NodeJoined,
    NodeLost,
    PlaceReplica,
    RegisterNode,
    ReplicaPlaced,
    Reply,
    RestoreDone,
    RouteTable,
    SetRoutes,
    SetTenants,
    SpawnReplica,
    StartCoordinator,
    StateSnapshot,
    StopReplica,
    SwapEnded,
    SwapVersion,
    Undeploy,
    UseState,
)
from atomr.actors.registry import Registry
from atomr.actors.sidecar import SidecarActor
from atomr.cluster.head_state import HeadState, open_state, record
from atomr.core.deployment import Deployment, shared_limit_clash
from atomr.core.errors import ConfigError, InferenceError, InternalError, NotFoundError, UnavailableError
from atomr.core.routes import Route
from atomr.core.runner import PromptLimit
from atomr.core.status import DeploymentInfo
from atomr.runners.catalog import install_hint

log = structlog.get_logger("atomr.manager")

NODE_TIMEOUT_ENV = "ATOMR_NODE_TIMEOUT_S"
CHECK_PERIOD_S = 0.5
LATE_HEARTBEAT_S = 2.5  # node agents beat every second: a node silent this long shows as "late"
ADOPT_ANSWER_S = 5.0  # an advertised agent that has not registered by then is taken for dead


@dataclass(slots=True)
class Record:
    dep: Deployment
    coordinator: Address
    info: DeploymentInfo
    slots: dict[str, tuple[str, list[str], str]] = field(default_factory=dict)  # slot -> (node, GPUs, instance)
    deploy_waiters: list[Address] = field(default_factory=list)
    undeploy_waiters: list[Address] = field(default_factory=list)
    swap_to: Deployment | None = None  # the new version being started beside the serving one
    since: float = 0.0  # when its coordinator replaced one that died (time.time(); 0: the first)
    published_limit: PromptLimit | None = None  # the prompt limit its route was last published with


class DeploymentManager(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes: dict[str, NodeInfo] = {}
        # Deployments whose deploy failed: shown (state "failed", the engine's reason) until they
        # are deployed again or undeployed, so a failure at startup is visible in status.
        self.failed: dict[str, DeploymentInfo] = {}
        self.tenants: list[Any] = []  # from the node config: weights and quotas for fair queues
        self.last_seen: dict[str, float] = {}
        self.records: dict[str, Record] = {}
        self.registry: Address = None
        self.watching = False
        self.node_timeout_s = float(os.environ.get(NODE_TIMEOUT_ENV, "5"))
        self.exiting = False
        self.state: HeadState | None = None  # deployments and tenants are recorded here (UseState)
        # replicas member nodes still run, reported when their agent was adopted: node -> instances
        self.held: dict[str, dict[str, HeldReplica]] = {}
        self.adopting: dict[str, tuple[float, ActorSystemConventionUpdate]] = {}  # node -> asked at
        self.restored = False  # RestoreDone: replicas held from now on are not adopted
        self.adopt_window_s = 120.0  # member nodes keep their replicas this long without a head
        self.followers: dict[str, tuple[Address, str]] = {}  # standby node -> (follower, its address)
        self.pushed_at = 0.0

    def _registry(self) -> Address:
        if self.registry is None:
            self.registry = self.createActor(Registry, globalName=REGISTRY_NAME)
        return self.registry

    # ---- nodes ----

    def receiveMsg_RegisterNode(self, msg: RegisterNode, sender: Address) -> None:
        before = self.nodes.get(msg.info.node_id)
        self.nodes[msg.info.node_id] = msg.info
        self.last_seen[msg.info.node_id] = time.monotonic()
        self.adopting.pop(msg.info.node_id, None)
        self.send(sender, Reply(True))
        log.info("node registered", node=msg.info.node_id, role=msg.info.role, gpus=msg.info.gpu_ids)
        if msg.info.role != "head":
            self._record(lambda s: s.put_node(msg.info.node_id, msg.info.role))
        if msg.held:
            if self.restored:  # too late to be adopted: their deployments run without them
                self._stop_held({msg.info.node_id: {h.replica_id: h for h in msg.held}})
            else:
                self.held[msg.info.node_id] = {h.replica_id: h for h in msg.held}
        if before is not None and before.address != msg.info.address:
            # A new agent on a known node: its predecessor died, and the runner hosts it had
            # started end with it (they exit when orphaned). Their coordinators start them again,
            # here: the node is alive.
            self._replicas_lost(msg.info.node_id, "its node agent died", keep_node=True)
        if before is None:  # room for replicas that were waiting for a node
            for rec in self.records.values():
                self.send(rec.coordinator, NodeJoined(msg.info.node_id))
        if not self.watching:
            self.watching = True
            self.notifyOnSystemRegistrationChanges(True)
            self.wakeupAfter(timedelta(seconds=CHECK_PERIOD_S))

    def receiveMsg_ActorSystemConventionUpdate(self, msg: ActorSystemConventionUpdate, sender: Address) -> None:
        caps = msg.remoteCapabilities or {}
        node_id = caps.get("atomr.node_id")
        if not node_id:
            return
        if caps.get("atomr.role") == "standby":  # a standby head: follows this one's state, runs nothing
            self._standby_changed(node_id, caps, msg.remoteAdded)
            return
        if msg.remoteAdded:
            if node_id in self.nodes or node_id in self.adopting:
                return
            agent = caps.get(AGENT_CAPABILITY)
            if agent is not None:  # an agent that outlived its head: adopt it, and its replicas
                self.adopting[node_id] = (time.monotonic(), msg)
                self.send(agent, dataclasses.replace(self._node_init(caps, node_id), adopt=True))
                return
            self._new_agent(caps, node_id)
        elif node_id in self.nodes:
            # Thespian drops a member that misses re-registrations, which happens to live but busy
            # nodes too; only missing heartbeats declare a node lost.
            log.warning("node left the convention", node=node_id)

    def _standby_changed(self, node_id: str, caps: dict[str, Any], added: bool) -> None:
        if not added:
            if self.followers.pop(node_id, None) is not None:
                log.warning("standby head left", standby=node_id)
            return
        if node_id in self.followers:
            return
        from atomr.actors.follower import Follower

        follower = self.createActor(Follower, targetActorRequirements={"atomr.node_id": node_id})
        self.send(follower, Follow(str(caps.get(STATE_DIR_CAPABILITY, ""))))
        address = str(caps.get(STANDBY_ADDRESS_CAPABILITY, ""))
        log.info("standby head following", standby=node_id, address=address)
        self.followers[node_id] = (follower, address)
        standbys = sorted({a for _, a in self.followers.values() if a})
        self._record(lambda s: s.set_standbys(standbys))
        self._push_state()

    def _push_state(self) -> None:
        """The whole state to every standby head (twice a second, and when one joins)."""
        if not self.followers or self.state is None:
            return
        try:
            snapshot = StateSnapshot(self.state.snapshot())
        except (InferenceError, sqlite3.Error) as exc:
            log.error("could not read the state for the standbys", error=str(exc))
            return
        self.pushed_at = time.monotonic()
        for follower, _ in self.followers.values():
            self.send(follower, snapshot)

    def _node_init(self, caps: dict[str, Any], node_id: str) -> NodeInit:
        gpus = [g for g in str(caps.get("atomr.gpus", "")).split(",") if g]
        return NodeInit(
            node_id,
            str(caps.get("atomr.role", "cpu")),
            gpus,
            str(caps.get("atomr.host", "")),
            int(caps.get("Admin Port", 0)),
            manager=self.myAddress,
            adopt_window_s=self.adopt_window_s,
        )

    def _new_agent(self, caps: dict[str, Any], node_id: str) -> None:
        from atomr.actors.node_agent import NodeAgent

        agent = self.createActor(NodeAgent, targetActorRequirements={"atomr.node_id": node_id})
        self.send(agent, self._node_init(caps, node_id))

    def receiveMsg_Heartbeat(self, msg: Heartbeat, sender: Address) -> None:
        if msg.node_id in self.nodes:
            self.last_seen[msg.node_id] = time.monotonic()
            self.send(sender, HeartbeatAck())

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Address) -> None:
        now = time.monotonic()
        for node_id, seen in list(self.last_seen.items()):
            if now - seen > self.node_timeout_s:
                self._node_lost(node_id, f"no heartbeat for {now - seen:.1f} s")
        self._push_state()
        for node_id, (asked, update) in list(self.adopting.items()):
            if now - asked > ADOPT_ANSWER_S:  # the advertised agent is gone: a new one, no replicas kept
                del self.adopting[node_id]
                log.warning("the agent a rejoining node advertised did not answer; starting another", node=node_id)
                self._new_agent(update.remoteCapabilities or {}, node_id)
        self.wakeupAfter(timedelta(seconds=CHECK_PERIOD_S))

    def receiveMsg_Reply(self, msg: Reply, sender: Address) -> None:
        """A joined node's agent finished registering (nothing else to do)."""

    def receiveMsg_UseState(self, msg: UseState, sender: Address) -> None:
        self.adopt_window_s = msg.adopt_window_s
        self.state, error = open_state(msg.state_dir)
        self.send(sender, Reply(error is None, error=error))

    def _refused_unrecorded(self, change: Callable[[HeadState], None], sender: Address) -> bool:
        """Record `change` in the durable state; when that fails, answer `sender` with the error
        (and the caller must not carry the change out)."""
        failed = self._record(change)
        if failed is not None:
            self.send(sender, Reply(False, error=failed.info()))
        return failed is not None

    def receiveMsg_SetTenants(self, msg: SetTenants, sender: Address) -> None:
        """Tenants for the fair queues of deployments started from now on."""
        if self._refused_unrecorded(lambda s: s.set_tenants(list(msg.tenants)), sender):
            return
        self.tenants = list(msg.tenants)
        self.send(sender, Reply(True))

    def _node_lost(self, node_id: str, why: str) -> None:
        self.nodes.pop(node_id, None)
        self.last_seen.pop(node_id, None)
        self.held.pop(node_id, None)
        self._record(lambda s: s.remove_node(node_id))
        log.error("node lost", node=node_id, why=why)
        self._replicas_lost(node_id, why)

    def _replicas_lost(self, node_id: str, why: str, keep_node: bool = False) -> None:
        """Tell coordinators that their replicas on `node_id` are gone (placed anew unless `keep_node`)."""
        for rec in self.records.values():
            lost = [inst for node, _, inst in rec.slots.values() if node == node_id]
            if not keep_node:
                for slot, (node, _, inst) in list(rec.slots.items()):
                    if node == node_id:
                        rec.slots[slot] = ("", [], inst)
            if lost:
                log.warning("replicas lost", node=node_id, why=why, replicas=lost)
                self.send(rec.coordinator, NodeLost(node_id, lost))

    def _agent_died(self, node: NodeInfo) -> None:
        """A joined node's agent (our child, on that node's actor system) died: start another there.

        The node's actor system is alive (a dead node is noticed by its missing heartbeats); the
        new agent registers like the first, which restarts the replicas the old one hosted.
        """
        from atomr.actors.node_agent import NodeAgent

        log.error("node agent died; starting another", node=node.node_id)
        agent = self.createActor(NodeAgent, targetActorRequirements={"atomr.node_id": node.node_id})
        self.send(agent, NodeInit(node.node_id, node.role, node.gpu_ids, node.host, node.port, manager=self.myAddress))

    # ---- deploy ----

    def receiveMsg_Deploy(self, msg: Deploy, sender: Address) -> None:
        dep = msg.deployment
        current = self.records.get(dep.name)
        if current is not None and current.dep.version != dep.version:
            self._swap(current, dep, msg.wait, sender)
            return
        adopted = self._held_of(dep) if msg.restore else []
        try:
            self._check_no_clash(dep)
            taken = {node_id: h.gpu_ids for node_id, h in adopted}
            missing = dep.replicas - len(adopted)
            plan = self._plan(dep.model_copy(update={"replicas": missing}), taken) if missing > 0 else []
        except InferenceError as exc:
            self.send(sender, Reply(False, error=exc.info()))
            return
        if self._refused_unrecorded(lambda s: s.put_deployment(dep), sender):
            return
        self.failed.pop(dep.name, None)
        coordinator = self.createActor(Coordinator)
        info = DeploymentInfo(dep.name, dep.model, dep.runtime, dep.version, "deploying", aliases=list(dep.aliases))
        rec = Record(dep, coordinator, info)
        self.records[dep.name] = rec
        placements = []
        for node_id, h in adopted:
            slot = h.replica_id.rpartition(".")[0]
            rec.slots[slot] = (node_id, h.gpu_ids, h.replica_id)
            agent = self.nodes[node_id].address
            placements.append(ReplicaPlaced(slot, h.replica_id, node_id, agent, h.gpu_ids, adopt=True))
        if adopted:
            log.warning("running replicas adopted", deployment=dep.name, replicas=[h.replica_id for _, h in adopted])
        free = (i for i in range(dep.replicas + len(adopted)) if f"{dep.name}-v{dep.version}-r{i}" not in rec.slots)
        for i, (node_id, gpus) in zip(free, plan, strict=False):
            slot = f"{dep.name}-v{dep.version}-r{i}"
            placements.append(self._spawn(rec, slot, f"{slot}.0", node_id, gpus))
        self.send(coordinator, StartCoordinator(dep, self.myAddress, placements, list(self.tenants)))
        if msg.wait:
            rec.deploy_waiters.append(sender)
        else:
            self.send(sender, Reply(True, info))

    def _spawn(
        self, rec: Record, slot: str, instance: str, node_id: str, gpus: list[str], dep: Deployment | None = None
    ) -> ReplicaPlaced:
        node = self.nodes[node_id]
        rec.slots[slot] = (node_id, gpus, instance)
        self.send(node.address, SpawnReplica(dep or rec.dep, instance, rec.coordinator, gpus))
        return ReplicaPlaced(slot, instance, node_id, node.address, gpus)

    # ---- hot swap: a new version of a deployment that is serving ----

    def _swap(self, rec: Record, dep: Deployment, wait: bool, sender: Address) -> None:
        """Start `dep`'s replicas beside the serving ones; its coordinator switches when they are ready."""
        try:
            if rec.info.state not in ("ready", "degraded") or rec.swap_to is not None:
                busy = "already switching versions" if rec.swap_to is not None else rec.info.state
                raise ConfigError(
                    f"{dep.name!r} is {busy}; a new version can replace a serving deployment only",
                    field="version",
                )
            self._check_no_clash(dep, ignore=dep.name)
            plan = self._plan(dep)
        except InferenceError as exc:
            self.send(sender, Reply(False, error=exc.info()))
            return
        if self._refused_unrecorded(lambda s: s.set_switch(dep.name, dep), sender):
            return
        rec.swap_to = dep
        placements = []
        for i, (node_id, gpus) in enumerate(plan):
            slot = f"{dep.name}-v{dep.version}-r{i}"
            placements.append(self._spawn(rec, slot, f"{slot}.0", node_id, gpus, dep))
        log.info("version switch started", deployment=dep.name, old=rec.dep.version, new=dep.version)
        self.send(rec.coordinator, SwapVersion(dep, placements))
        if wait:
            rec.deploy_waiters.append(sender)
        else:
            self.send(sender, Reply(True, rec.info))

    def receiveMsg_SwapEnded(self, msg: SwapEnded, sender: Address) -> None:
        rec = self.records.get(msg.name)
        if rec is None or rec.coordinator != sender or rec.swap_to is None:
            return
        new, rec.swap_to = rec.swap_to, None
        if msg.info is not None:
            rec.info = msg.info
        for slot in msg.released_slots:
            rec.slots.pop(slot, None)
        if msg.ok:
            self._record(lambda s: s.put_deployment(new))
            old_names = set(rec.dep.names) - set(new.names)
            rec.dep = new
            if old_names:
                self.send(self._registry(), SetRoutes(sorted(old_names), None))
            self._publish_route(rec)
            log.info("version switch done", deployment=msg.name, version=msg.version)
            self._answer(rec.deploy_waiters, Reply(True, rec.info))
        else:
            self._record(lambda s: s.set_switch(msg.name, None))
            log.error("version switch rolled back", deployment=msg.name, version=msg.version, reason=msg.reason)
            err = InternalError(
                f"version {msg.version} of {msg.name!r} was rolled back; version {rec.dep.version} keeps serving: "
                f"{msg.reason}",
                field="version",
            )
            self._answer(rec.deploy_waiters, Reply(False, rec.info, err.info()))

    def _check_no_clash(self, dep: Deployment, ignore: str | None = None) -> None:
        """`dep`'s names are free and a rate-limit key it shares has the same limits everywhere."""
        taken = {n: r.dep.name for r in self.records.values() if r.dep.name != ignore for n in r.dep.names}
        for n in dep.names:
            if n in taken:
                raise ConfigError(
                    f"name {n!r} is already served by deployment {taken[n]!r}; undeploy it first", field="name"
                )
        clash = shared_limit_clash(dep, (r.dep for r in self.records.values() if r.dep.name != ignore))
        if clash is not None:
            raise clash

    def _candidates(self, dep: Deployment) -> list[NodeInfo]:
        want_role = dep.placement.role
        found = [
            n
            for n in self.nodes.values()
            if (want_role is None or n.role == want_role)
            and all(_node_capability(n, k) == v for k, v in dep.placement.require.items())
        ]
        if found and not any(dep.runtime in n.runtimes for n in found):
            raise ConfigError(
                f"no node that matches the placement of {dep.name!r} can run it: {install_hint(dep.runtime)}",
                field="runtime",
            )
        found = [n for n in found if dep.runtime in n.runtimes]
        if dep.gpus_per_replica > 0:
            found = [n for n in found if n.gpu_ids]
        if not found:
            raise UnavailableError(
                f"no registered node matches the placement of {dep.name!r} "
                f"(role={want_role}, gpus_per_replica={dep.gpus_per_replica})",
                field="placement",
            )
        return found

    def _plan(self, dep: Deployment, taken: dict[str, list[str]] | None = None) -> list[tuple[str, list[str]]]:
        """(node id, GPU ids) for each replica: spread over matching nodes, one GPU set each
        (`taken`: GPUs of replicas being adopted, not free)."""
        candidates = self._candidates(dep)
        load = {n.node_id: self._replicas_on(n.node_id) for n in candidates}
        free = {n.node_id: self._free_gpus(n.node_id, taken) for n in candidates}
        plan: list[tuple[str, list[str]]] = []
        for _ in range(dep.replicas):
            fits = [n for n in candidates if len(free[n.node_id]) >= dep.gpus_per_replica]
            if not fits:
                raise UnavailableError(
                    f"not enough free GPUs for {dep.replicas} replicas x {dep.gpus_per_replica} GPU of {dep.name!r}",
                    field="gpus_per_replica",
                )
            node = min(fits, key=lambda n: (load[n.node_id], n.node_id))
            gpus = free[node.node_id][: dep.gpus_per_replica]
            del free[node.node_id][: dep.gpus_per_replica]
            load[node.node_id] += 1
            plan.append((node.node_id, gpus))
        return plan

    def _replicas_on(self, node_id: str) -> int:
        return sum(1 for r in self.records.values() for node, _, _ in r.slots.values() if node == node_id)

    def _free_gpus(self, node_id: str, taken: dict[str, list[str]] | None = None) -> list[str]:
        held = {g for r in self.records.values() for node, gpus, _ in r.slots.values() if node == node_id for g in gpus}
        held.update((taken or {}).get(node_id, []))
        return [g for g in self.nodes[node_id].gpu_ids if g not in held]

    # ---- adopting the replicas that member nodes kept through a head restart ----

    def _held_of(self, dep: Deployment) -> list[tuple[str, HeldReplica]]:
        """The held replicas of `dep`'s version (at most its replica count), taken for adoption."""
        found: list[tuple[str, HeldReplica]] = []
        for node_id, held in self.held.items():
            if node_id not in self.nodes:
                continue
            for replica_id, h in sorted(held.items()):
                if h.deployment == dep.name and h.version == dep.version and len(found) < dep.replicas:
                    found.append((node_id, h))
                    del held[replica_id]
        return found

    def receiveMsg_RestoreDone(self, msg: RestoreDone, sender: Address) -> None:
        self.restored = True
        held, self.held = self.held, {}
        self._stop_held(held)
        self.send(sender, Reply(True))

    def _stop_held(self, held: dict[str, dict[str, HeldReplica]]) -> None:
        for node_id, replicas in held.items():
            node = self.nodes.get(node_id)
            for replica_id in replicas:
                log.warning("a held replica is no longer wanted: stopping it", node=node_id, replica=replica_id)
                if node is not None:
                    self.send(node.address, StopReplica(replica_id))

    def receiveMsg_PlaceReplica(self, msg: PlaceReplica, sender: Address) -> None:
        """A coordinator restarts a replica: same node if it is alive, else any node with room."""
        rec = self.records.get(msg.deployment.name)
        if rec is None:
            return
        node_id, gpus, _ = rec.slots.get(msg.slot, ("", [], ""))
        if node_id in self.nodes:
            self.send(sender, self._spawn(rec, msg.slot, msg.instance, node_id, gpus, msg.deployment))
            return
        rec.slots[msg.slot] = ("", [], msg.instance)
        try:
            candidates = self._candidates(rec.dep)
            fits = [n for n in candidates if len(self._free_gpus(n.node_id)) >= rec.dep.gpus_per_replica]
            if not fits:
                raise UnavailableError("no live node has a free GPU for it")
        except InferenceError as exc:
            self.send(sender, ReplicaPlaced(msg.slot, msg.instance, None, reason=exc.message))
            return
        node = min(fits, key=lambda n: (self._replicas_on(n.node_id), n.node_id))
        gpus = self._free_gpus(node.node_id)[: rec.dep.gpus_per_replica]
        log.info("replica re-placed", replica=msg.instance, node=node.node_id, gpus=gpus)
        self.send(sender, self._spawn(rec, msg.slot, msg.instance, node.node_id, gpus, msg.deployment))

    def receiveMsg_DeploymentState(self, msg: DeploymentState, sender: Address) -> None:
        rec = self.records.get(msg.info.name)
        if rec is None or rec.coordinator != sender:
            return
        previous = rec.info.state
        rec.info = msg.info
        for r in msg.info.replicas:
            node = self.nodes.get(r.node_id)
            r.host = node.host if node is not None else ""
        if previous == "deploying" and msg.info.state in ("ready", "degraded"):
            self._publish_route(rec)
        elif msg.info.prompt_limit != rec.published_limit and msg.info.state in ("ready", "degraded"):
            self._publish_route(rec)  # its runners told their limit after it was published
        elif previous == "deploying" and msg.info.state == "failed":
            # Stop what did start; the deploy is answered (with the engine's reason) once it is gone.
            self.send(rec.coordinator, Drain())

    def _publish_route(self, rec: Record) -> None:
        """Point the deployment's names (and aliases) at its coordinator in the registry."""
        dep = rec.dep
        limit = rec.published_limit = rec.info.prompt_limit
        route = Route(dep.name, dep.version, dep.runtime, rec.coordinator, dep.rate_budgets, dep, rec.since, limit)
        self.send(self._registry(), SetRoutes(list(rec.dep.names), route))

    def receiveMsg_RouteTable(self, msg: RouteTable, sender: Address) -> None:
        # The registry acknowledged a change: answer the deploys that it made visible.
        for rec in self.records.values():
            if rec.info.state in ("ready", "degraded") and rec.dep.name in msg.routes:
                self._answer(rec.deploy_waiters, Reply(True, rec.info))

    # ---- undeploy ----

    def receiveMsg_Undeploy(self, msg: Undeploy, sender: Address) -> None:
        rec = self.records.get(msg.name)
        # also a deployment the state file holds but that did not start again (no node had room)
        if self._refused_unrecorded(lambda s: s.remove_deployment(msg.name), sender):
            return
        gone = self.failed.pop(msg.name, None)
        if rec is None and gone is not None:
            self.send(sender, Reply(True, gone))
            return
        if rec is None:
            err = NotFoundError(f"no deployment named {msg.name!r}", field="name")
            self.send(sender, Reply(False, error=err.info()))
            return
        if rec.info.state != "failed":
            rec.info.state = "draining"
        self.send(self._registry(), SetRoutes(list(rec.dep.names), None))
        self.send(rec.coordinator, Drain())
        if msg.wait:
            rec.undeploy_waiters.append(sender)
        else:
            self.send(sender, Reply(True, rec.info))

    def receiveMsg_Drained(self, msg: Drained, sender: Address) -> None:
        rec = self.records.get(msg.name)
        if rec is None or rec.coordinator != sender:
            return
        del self.records[msg.name]
        self.send(sender, ActorExitRequest())
        self._answer(rec.undeploy_waiters, Reply(True, rec.info))
        if rec.info.state == "failed" and not rec.undeploy_waiters:
            rec.info.replicas = []
            self.failed[msg.name] = rec.info
        if rec.deploy_waiters:  # a failed deploy: its replicas are gone now
            err = InternalError(rec.info.error or "deployment failed", field="model", details={"deployment": msg.name})
            self._answer(rec.deploy_waiters, Reply(False, rec.info, err.info()))

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Address) -> None:
        if self.exiting:
            return
        for node in list(self.nodes.values()):
            if node.address == msg.childAddress:
                self._agent_died(node)
        for rec in list(self.records.values()):
            if rec.coordinator == msg.childAddress:
                self._coordinator_died(rec)

    def _coordinator_died(self, rec: Record) -> None:
        """Start another coordinator that adopts the running replicas, and route to it.

        The requests the dead one held in flight are still on their replicas, which report them
        to the new one; those it held in its queue are sent again by their callers (the route's
        `since` tells them). A deployment being removed is finished here instead.
        """
        name = rec.dep.name
        if rec.info.state in ("draining", "failed"):
            log.warning("coordinator exited while draining", deployment=name)
            for node_id, _, instance in rec.slots.values():
                if node_id in self.nodes:
                    self.send(self.nodes[node_id].address, StopReplica(instance))
            self.receiveMsg_Drained(Drained(name), rec.coordinator)  # the usual end of a removal
            return
        log.error("coordinator died; starting another", deployment=name)
        if rec.swap_to is not None:  # the new version was not serving yet: give it up
            new = rec.swap_to
            for slot in [s for s in rec.slots if s.startswith(f"{name}-v{new.version}-")]:
                node_id, _, instance = rec.slots.pop(slot)
                if node_id in self.nodes:
                    self.send(self.nodes[node_id].address, StopReplica(instance))
            rec.swap_to = None
            self._record(lambda s: s.set_switch(name, None))
            err = InternalError(
                f"version {new.version} of {name!r} was rolled back: its coordinator died", field="version"
            )
            self._answer(rec.deploy_waiters, Reply(False, rec.info, err.info()))
        rec.coordinator = self.createActor(Coordinator)
        rec.since = time.time()
        placements = [
            ReplicaPlaced(
                slot, instance, node_id or None, self.nodes[node_id].address if node_id in self.nodes else None, gpus
            )
            for slot, (node_id, gpus, instance) in rec.slots.items()
        ]
        start = StartCoordinator(rec.dep, self.myAddress, placements, list(self.tenants), adopt=True, previous=rec.info)
        self.send(rec.coordinator, start)
        if rec.info.state in ("ready", "degraded"):
            self._publish_route(rec)

    def _record(self, change: Callable[[HeadState], None]) -> InternalError | None:
        """Record a change in the durable state; the error (logged) when that failed."""
        failed = record(self.state, change)
        if failed is not None:
            log.error("a change could not be recorded", error=failed.message)
        return failed

    def on_exit(self) -> None:
        self.exiting = True  # children that exit now are not replaced
        super().on_exit()

    # ---- queries ----

    def receiveMsg_ListDeployments(self, msg: ListDeployments, sender: Address) -> None:
        self.send(sender, Reply(True, self._infos()))

    def receiveMsg_GetStatus(self, msg: GetStatus, sender: Address) -> None:
        now = time.monotonic()
        nodes = []
        for node in self.nodes.values():
            age = now - self.last_seen.get(node.node_id, now)
            health = "ok" if age <= LATE_HEARTBEAT_S else "late"
            nodes.append(dataclasses.replace(node, health=health, heartbeat_age_s=round(age, 2)))
        head = {
            "term": self.state.term() if self.state is not None else 1,
            "standbys": [
                {"node_id": n, "address": a, "last_sync_s": round(now - self.pushed_at, 2)}
                for n, (_, a) in sorted(self.followers.items())
            ],
        }
        self.send(sender, Reply(True, {"nodes": nodes, "deployments": self._infos(), "head": head}))

    def _infos(self) -> list[DeploymentInfo]:
        return [r.info for r in self.records.values()] + list(self.failed.values())

    def _answer(self, waiters: list[Address], reply: Reply) -> None:
        for w in waiters:
            self.send(w, reply)
        waiters.clear()


def _node_capability(node: NodeInfo, key: str) -> Any:
    return {"role": node.role, "node_id": node.node_id, "host": node.host}.get(key)
