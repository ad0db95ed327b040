"""Deployment manager actor (global name): deploy, undeploy, list and status for the cluster.

It places replicas on registered nodes by their capabilities (role, free GPUs), starts one
coordinator per deployment, publishes ready deployments to the registry, and answers admin
requests once the outcome is known (all replicas ready, or the engine's reason for failing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ChildActorExited

from atomr.actors.coordinator import Coordinator
from atomr.actors.messages import (
    REGISTRY_NAME,
    Address,
    Deploy,
    DeploymentInfo,
    DeploymentState,
    Drain,
    Drained,
    GetStatus,
    ListDeployments,
    NodeInfo,
    RegisterNode,
    Reply,
    Route,
    RouteTable,
    SetRoutes,
    SpawnReplica,
    StartCoordinator,
    Undeploy,
)
from atomr.actors.registry import Registry
from atomr.actors.sidecar import SidecarActor
from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError, InferenceError, InternalError, NotFoundError, UnavailableError

log = structlog.get_logger("atomr.manager")


@dataclass(slots=True)
class Record:
    dep: Deployment
    coordinator: Address
    info: DeploymentInfo
    gpus: dict[str, list[str]]  # node id -> GPU ids held
    deploy_waiters: list[Address] = field(default_factory=list)
    undeploy_waiters: list[Address] = field(default_factory=list)


class DeploymentManager(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nodes: dict[str, NodeInfo] = {}
        self.records: dict[str, Record] = {}
        self.registry: Address = None

    def _registry(self) -> Address:
        if self.registry is None:
            self.registry = self.createActor(Registry, globalName=REGISTRY_NAME)
        return self.registry

    def receiveMsg_RegisterNode(self, msg: RegisterNode, sender: Address) -> None:
        self.nodes[msg.info.node_id] = msg.info
        self.send(sender, Reply(True))
        log.info("node registered", node=msg.info.node_id, role=msg.info.role, gpus=msg.info.gpu_ids)

    # ---- deploy ----

    def receiveMsg_Deploy(self, msg: Deploy, sender: Address) -> None:
        dep = msg.deployment
        try:
            self._check_names_free(dep)
            placements = self._place(dep)
        except InferenceError as exc:
            self.send(sender, Reply(False, error=exc.info()))
            return
        coordinator = self.createActor(Coordinator)
        held: dict[str, list[str]] = {}
        for _, node_id, gpus in placements:
            held.setdefault(node_id, []).extend(gpus)
        info = DeploymentInfo(dep.name, dep.model, dep.runtime, dep.version, "deploying", aliases=list(dep.aliases))
        rec = Record(dep, coordinator, info, held)
        self.records[dep.name] = rec
        self.send(
            coordinator,
            StartCoordinator(dep, self.myAddress, [(rid, self.nodes[n].address, g) for rid, n, g in placements]),
        )
        for rid, node_id, gpus in placements:
            self.send(self.nodes[node_id].address, SpawnReplica(dep, rid, coordinator, gpus))
        if msg.wait:
            rec.deploy_waiters.append(sender)
        else:
            self.send(sender, Reply(True, info))

    def _check_names_free(self, dep: Deployment) -> None:
        taken = {n: r.dep.name for r in self.records.values() for n in r.dep.names}
        for n in dep.names:
            if n in taken:
                raise ConfigError(
                    f"name {n!r} is already served by deployment {taken[n]!r}; undeploy it first",
                    field="name",
                )

    def _place(self, dep: Deployment) -> list[tuple[str, str, list[str]]]:
        """(replica id, node id, GPU ids) for each replica, spreading over matching nodes."""
        want_role = dep.placement.role
        candidates = [
            n
            for n in self.nodes.values()
            if (want_role is None or n.role == want_role)
            and all(_node_capability(n, k) == v for k, v in dep.placement.require.items())
        ]
        if not candidates:
            raise UnavailableError(
                f"no registered node matches the placement of {dep.name!r} (role={want_role})", field="placement"
            )
        load = {n.node_id: 0 for n in candidates}
        for r in self.records.values():
            for replica in r.info.replicas:
                if replica.node_id in load:
                    load[replica.node_id] += 1
        free_gpus = {n.node_id: self._free_gpus(n) for n in candidates}
        out: list[tuple[str, str, list[str]]] = []
        for i in range(dep.replicas):
            fits = [n for n in candidates if len(free_gpus[n.node_id]) >= dep.gpus_per_replica]
            if not fits:
                raise UnavailableError(
                    f"not enough free GPUs for {dep.replicas} replicas x {dep.gpus_per_replica} GPU of {dep.name!r}",
                    field="gpus_per_replica",
                )
            node = min(fits, key=lambda n: load[n.node_id])
            gpus = free_gpus[node.node_id][: dep.gpus_per_replica]
            del free_gpus[node.node_id][: dep.gpus_per_replica]
            load[node.node_id] += 1
            out.append((f"{dep.name}-v{dep.version}-r{i}", node.node_id, gpus))
        return out

    def _free_gpus(self, node: NodeInfo) -> list[str]:
        held = {g for r in self.records.values() for g in r.gpus.get(node.node_id, [])}
        return [g for g in node.gpu_ids if g not in held]

    def receiveMsg_DeploymentState(self, msg: DeploymentState, sender: Address) -> None:
        rec = self.records.get(msg.info.name)
        if rec is None or rec.coordinator != sender:
            return
        previous = rec.info.state
        rec.info = msg.info
        if msg.info.state == "ready" and previous == "deploying":
            self.send(
                self._registry(),
                SetRoutes(list(rec.dep.names), Route(rec.dep.name, rec.dep.version, rec.dep.runtime, sender)),
            )
        elif msg.info.state == "failed" and previous == "deploying":
            # Stop what did start; the deploy is answered (with the engine's reason) once it is gone.
            self.send(rec.coordinator, Drain())

    def receiveMsg_RouteTable(self, msg: RouteTable, sender: Address) -> None:
        # The registry acknowledged a change: answer the deploys that it made visible.
        for rec in self.records.values():
            if rec.info.state == "ready" and rec.dep.name in msg.routes:
                self._answer(rec.deploy_waiters, Reply(True, rec.info))

    # ---- undeploy ----

    def receiveMsg_Undeploy(self, msg: Undeploy, sender: Address) -> None:
        rec = self.records.get(msg.name)
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
        if rec.deploy_waiters:  # a failed deploy: its replicas are gone now
            err = InternalError(rec.info.error or "deployment failed", field="model", details={"deployment": msg.name})
            self._answer(rec.deploy_waiters, Reply(False, rec.info, err.info()))

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Address) -> None:
        for name, rec in list(self.records.items()):
            if rec.coordinator == msg.childAddress:
                log.warning("coordinator exited", deployment=name)
                del self.records[name]
                self.send(self._registry(), SetRoutes(list(rec.dep.names), None))

    # ---- queries ----

    def receiveMsg_ListDeployments(self, msg: ListDeployments, sender: Address) -> None:
        self.send(sender, Reply(True, [r.info for r in self.records.values()]))

    def receiveMsg_GetStatus(self, msg: GetStatus, sender: Address) -> None:
        nodes = [n for n in self.nodes.values()]
        self.send(sender, Reply(True, {"nodes": nodes, "deployments": [r.info for r in self.records.values()]}))

    def _answer(self, waiters: list[Address], reply: Reply) -> None:
        for w in waiters:
            self.send(w, reply)
        waiters.clear()


def _node_capability(node: NodeInfo, key: str) -> Any:
    return {"role": node.role, "node_id": node.node_id, "host": node.host}.get(key)
