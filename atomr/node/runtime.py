"""A node's actor system and its top-level actors, started and stopped as one unit.

Used by `python -m atomr.node` and by tests that need a node inside the test process tree.

The head's own top-level actors are children of its actor system's admin, so no atomr actor hears
of their death. `watch` (called periodically by the node process) looks the gateway and the
head's node agent up by global name; Thespian frees the name of an actor whose process died, so a
lookup that returns a new address has just started a successor, which is then set up as its
predecessor was (the agent registers again; the gateway serves the HTTP front again on the same
port).
"""

from __future__ import annotations

from typing import Any

import structlog

from atomr.actors.messages import (
    GATEWAY_NAME,
    MANAGER_NAME,
    METRICS_NAME,
    REGISTRY_NAME,
    Deploy,
    NodeInfo,
    NodeInit,
    SetTenants,
    StartHttp,
    node_agent_name,
    reply_value,
)
from atomr.cluster.system import start_system, stop_system
from atomr.cluster.thespian_setup import DEFAULT_BIND
from atomr.core.deployment import Deployment
from atomr.core.errors import InferenceTimeoutError
from atomr.core.status import DeploymentInfo

log = structlog.get_logger("atomr.node")


class NodeRuntime:
    def __init__(
        self,
        *,
        node_id: str,
        role: str = "head",
        port: int,
        bind: str = DEFAULT_BIND,
        gpu_ids: list[str] | None = None,
        join: tuple[str, int] | None = None,
    ) -> None:
        self.node_id, self.role, self.port, self.bind = node_id, role, port, bind
        self.gpu_ids = list(gpu_ids or [])
        self.join = join
        self.asys: Any = None
        self.info: NodeInfo | None = None
        self.host = ""
        self.gateway: Any = None
        self.agent: Any = None
        self.http: tuple[Any, list[Any]] | None = None  # HTTP settings (with the port bound) and tenants

    def start(self) -> None:
        """Start this node's actor system; the head also starts the global actors and its agent.

        A node that joins only starts its actor system: the head's deployment manager notices it
        through the convention and creates its node agent there.
        """
        from atomr.actors.deployment_manager import DeploymentManager
        from atomr.actors.gateway import Gateway
        from atomr.actors.metrics_collector import MetricsCollector
        from atomr.actors.node_agent import NodeAgent
        from atomr.actors.registry import Registry

        host = self.host = self.bind if self.bind not in ("", "0.0.0.0") else "127.0.0.1"
        caps = {
            "atomr.role": self.role,
            "atomr.node_id": self.node_id,
            "atomr.gpus": ",".join(self.gpu_ids),
            "atomr.host": host,
        }
        self.asys = start_system(self.port, bind=self.bind, capabilities=caps, join=self.join)
        if self.join is not None:
            return
        self.asys.createActor(Registry, globalName=REGISTRY_NAME)
        self.asys.createActor(MetricsCollector, globalName=METRICS_NAME)
        self.asys.createActor(DeploymentManager, globalName=MANAGER_NAME)
        self.gateway = self.asys.createActor(Gateway, globalName=GATEWAY_NAME)
        self.agent = self.asys.createActor(NodeAgent, globalName=node_agent_name(self.node_id))
        self.info = self._init_agent(self.agent)

    def _init_agent(self, agent: Any, timeout: float = 30.0) -> NodeInfo:
        from atomr.actors.deployment_manager import DeploymentManager

        manager = self.asys.createActor(DeploymentManager, globalName=MANAGER_NAME)
        init = NodeInit(self.node_id, self.role, self.gpu_ids, self.host, self.port, manager=manager)
        info = self.asys.ask(agent, init, timeout)
        if not isinstance(info, NodeInfo):
            raise InferenceTimeoutError("node agent did not start")
        return info

    def deploy(self, dep: Deployment, timeout: float = 600.0) -> DeploymentInfo:
        from atomr.actors.deployment_manager import DeploymentManager

        manager = self.asys.createActor(DeploymentManager, globalName=MANAGER_NAME)
        value: DeploymentInfo = reply_value(
            self.asys.ask(manager, Deploy(dep, True), timeout), f"deploy of {dep.name}", timeout
        )
        return value

    def set_tenants(self, tenants: list[Any], timeout: float = 30.0) -> None:
        """Give the deployment manager the tenants (weights, quotas) for every coordinator's queue."""
        from atomr.actors.deployment_manager import DeploymentManager

        manager = self.asys.createActor(DeploymentManager, globalName=MANAGER_NAME)
        reply_value(self.asys.ask(manager, SetTenants(list(tenants)), timeout), "tenants", timeout)

    def start_http(self, settings: Any, tenants: list[Any], timeout: float = 30.0) -> int:
        """Have the head's gateway serve the HTTP front; returns the port it listens on."""
        from atomr.actors.gateway import Gateway

        gateway = self.asys.createActor(Gateway, globalName=GATEWAY_NAME)
        port: int = reply_value(self.asys.ask(gateway, StartHttp(settings, tenants), timeout), "HTTP start", timeout)
        self.http = (settings.model_copy(update={"port": port}), list(tenants))  # a successor binds the same port
        return port

    def watch(self, timeout: float = 30.0) -> list[str]:
        """Start again the head's gateway and node agent if their processes died; returns which."""
        from atomr.actors.gateway import Gateway
        from atomr.actors.node_agent import NodeAgent

        if self.asys is None or self.join is not None:
            return []
        restarted = []
        gateway = self.asys.createActor(Gateway, globalName=GATEWAY_NAME)
        if gateway != self.gateway:
            log.error("gateway process died; starting it again")
            if self.http is not None:
                settings, tenants = self.http
                reply_value(self.asys.ask(gateway, StartHttp(settings, tenants), timeout), "HTTP start", timeout)
            self.gateway = gateway  # set up: not done again by the next call
            restarted.append("gateway")
        agent = self.asys.createActor(NodeAgent, globalName=node_agent_name(self.node_id))
        if agent != self.agent:
            log.error("node agent process died; starting it again", node=self.node_id)
            self.info = self._init_agent(agent, timeout)
            self.agent = agent
            restarted.append("node agent")
        return restarted

    def stop(self) -> list[int]:
        """Stop the actor system; returns PIDs of leftover processes that had to be ended."""
        if self.asys is None:
            return []
        asys, self.asys = self.asys, None
        return stop_system(asys, self.port)
