"""Node agent actor: one per node process tree. Spawns and supervises the runner hosts here.

It registers the node's capabilities (role, GPU ids) with the deployment manager, creates one
runner host child per replica placed on this node, and tells the replica's coordinator when a
runner host process exits (Thespian reports a dead child within milliseconds).
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ChildActorExited

from atomr.actors.messages import (
    MANAGER_NAME,
    Address,
    LoadRunner,
    NodeInfo,
    NodeInit,
    RegisterNode,
    ReplicaExited,
    Reply,
    SpawnReplica,
    StopReplica,
)
from atomr.actors.runner_host import RunnerHost
from atomr.actors.sidecar import SidecarActor

log = structlog.get_logger("atomr.node_agent")


class NodeAgent(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info: NodeInfo | None = None
        # replica id -> (runner host, coordinator); addresses are compared with ==, not hashed
        self.replicas: dict[str, tuple[Address, Address]] = {}
        self.init_requester: Address = None

    def receiveMsg_NodeInit(self, msg: NodeInit, sender: Address) -> None:
        from atomr.actors.deployment_manager import DeploymentManager

        self.info = NodeInfo(msg.node_id, msg.role, msg.gpu_ids, msg.host, msg.port, self.myAddress, os.getpid())
        manager = self.createActor(DeploymentManager, globalName=MANAGER_NAME)
        self.send(manager, RegisterNode(self.info))
        self.init_requester = sender  # answered once the manager has registered this node

    def receiveMsg_Reply(self, msg: Reply, sender: Address) -> None:
        if self.init_requester is not None:
            self.send(self.init_requester, self.info)
            self.init_requester = None

    def receiveMsg_SpawnReplica(self, msg: SpawnReplica, sender: Address) -> None:
        assert self.info is not None
        child = self.createActor(RunnerHost)
        self.replicas[msg.replica_id] = (child, msg.coordinator)
        self.send(child, LoadRunner(msg.deployment, msg.replica_id, msg.coordinator, msg.gpu_ids, self.info.node_id))

    def receiveMsg_StopReplica(self, msg: StopReplica, sender: Address) -> None:
        entry = self.replicas.get(msg.replica_id)
        if entry is not None:
            self.send(entry[0], ActorExitRequest())
        else:
            self.send(sender, ReplicaExited(msg.replica_id))

    def receiveMsg_ChildActorExited(self, msg: ChildActorExited, sender: Address) -> None:
        for replica_id, (child, coordinator) in list(self.replicas.items()):
            if child == msg.childAddress:
                del self.replicas[replica_id]
                self.send(coordinator, ReplicaExited(replica_id))
