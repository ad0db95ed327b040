"""Node agent actor: one per node. Spawns and supervises the runner hosts of its node.

The head's agent is created by the head process; the agent of a node that joins is created by
the deployment manager on that node's actor system (placed there by its `atomr.node_id`
capability). The agent registers the node's role and GPU ids, sends heartbeats to the manager,
creates one runner host child per replica instance placed here, and tells the replica's
coordinator when a runner host process exits (Thespian reports a dead child within
milliseconds). When a coordinator dies, its successor adopts the replicas through their agents.

A member node's agent outlives its head: it advertises its address as a capability of its actor
system (`AGENT_CAPABILITY`), so a head started again finds it when the node rejoins the
convention and sends it `NodeInit(adopt=True)`; the agent then registers with the new manager,
listing the replicas it still runs (`HeldReplica`), which the head adopts instead of loading
their engines again. Without a heartbeat acknowledged for `adopt_window_s`, it stops them.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import structlog
from thespian.actors import ActorExitRequest, ChildActorExited, WakeupMessage

from atomr.actors.messages import (
    AGENT_CAPABILITY,
    MANAGER_NAME,
    Address,
    AdoptReplica,
    Heartbeat,
    HeartbeatAck,
    HeldReplica,
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
from atomr.actors.sidecar import PlacedActor, SidecarActor
from atomr.runners.catalog import installed_runtimes

log = structlog.get_logger("atomr.node_agent")


class NodeAgent(PlacedActor, SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.info: NodeInfo | None = None
        self.manager: Address = None
        self.heartbeat_s = 1.0
        # replica instance id -> (runner host, coordinator); addresses compare with ==, never hashed
        self.replicas: dict[str, tuple[Address, Address]] = {}
        self.held: dict[str, HeldReplica] = {}  # what each replica is, for a new head to adopt
        self.init_requester: Address = None
        self.member = False  # created by the head's manager on another node's actor system
        self.adopt_window_s = 120.0
        self.last_ack = time.monotonic()
        self.abandoned = False  # its replicas were stopped: no head within the adopt window

    def receiveMsg_NodeInit(self, msg: NodeInit, sender: Address) -> None:
        self.last_ack = time.monotonic()
        if msg.adopt and self.info is not None:  # a new head found this agent: report to it
            self.manager = msg.manager
            self.abandoned = False
            log.warning("a new head adopts this node", node=self.info.node_id, replicas=len(self.held))
            self.send(self.manager, RegisterNode(self.info, list(self.held.values())))
            return
        self.info = NodeInfo(
            msg.node_id, msg.role, msg.gpu_ids, msg.host, msg.port, self.myAddress, os.getpid(), installed_runtimes()
        )
        self.heartbeat_s = msg.heartbeat_s
        self.adopt_window_s = msg.adopt_window_s
        if msg.manager is not None:
            self.manager = msg.manager
            self.member = True
            self.updateCapability(AGENT_CAPABILITY, self.myAddress)
        else:
            from atomr.actors.deployment_manager import DeploymentManager

            self.manager = self.createActor(DeploymentManager, globalName=MANAGER_NAME)
        self.send(self.manager, RegisterNode(self.info))
        self.init_requester = sender  # answered once the manager has registered this node
        self.wakeupAfter(timedelta(seconds=self.heartbeat_s))

    def receiveMsg_Reply(self, msg: Reply, sender: Address) -> None:
        if self.init_requester is not None:
            self.send(self.init_requester, self.info)
            self.init_requester = None

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Address) -> None:
        if self.info is not None and self.manager is not None:
            self.send(self.manager, Heartbeat(self.info.node_id))
            self.wakeupAfter(timedelta(seconds=self.heartbeat_s))
            silent = time.monotonic() - self.last_ack
            if self.member and not self.abandoned and self.replicas and silent > self.adopt_window_s:
                self.abandoned = True
                log.error("no head within the adopt window: stopping replicas", silent_s=round(silent, 1))
                for child, _ in self.replicas.values():
                    self.send(child, ActorExitRequest())

    def receiveMsg_HeartbeatAck(self, msg: HeartbeatAck, sender: Address) -> None:
        self.last_ack = time.monotonic()

    def receiveMsg_SpawnReplica(self, msg: SpawnReplica, sender: Address) -> None:
        assert self.info is not None
        child = self.createActor(RunnerHost)
        self.replicas[msg.replica_id] = (child, msg.coordinator)
        dep = msg.deployment
        self.held[msg.replica_id] = HeldReplica(msg.replica_id, dep.name, dep.version, list(msg.gpu_ids))
        self.send(child, LoadRunner(msg.deployment, msg.replica_id, msg.coordinator, msg.gpu_ids, self.info.node_id))

    def receiveMsg_AdoptReplica(self, msg: AdoptReplica, sender: Address) -> None:
        """A new coordinator replaces the replica's dead one: its exit and reports now go there."""
        entry = self.replicas.get(msg.replica_id)
        if entry is None:
            self.send(msg.coordinator, ReplicaExited(msg.replica_id))
            return
        self.replicas[msg.replica_id] = (entry[0], msg.coordinator)
        self.send(entry[0], msg)

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
                self.held.pop(replica_id, None)
                self.send(coordinator, ReplicaExited(replica_id))
