"""A node's actor system and its top-level actors, started and stopped as one unit.

Used by `python -m atomr.node` and by tests that need a node inside the test process tree.
"""

from __future__ import annotations

from typing import Any

from atomr.actors.messages import (
    GATEWAY_NAME,
    MANAGER_NAME,
    METRICS_NAME,
    REGISTRY_NAME,
    Deploy,
    DeploymentInfo,
    NodeInfo,
    NodeInit,
    SetTenants,
    StartHttp,
    node_agent_name,
    reply_value,
)
from atomr.core.deployment import Deployment
from atomr.core.errors import InferenceTimeoutError
from atomr.system import start_system, stop_system
from atomr.thespian_setup import DEFAULT_BIND


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

        host = self.bind if self.bind not in ("", "0.0.0.0") else "127.0.0.1"
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
        manager = self.asys.createActor(DeploymentManager, globalName=MANAGER_NAME)
        self.asys.createActor(Gateway, globalName=GATEWAY_NAME)
        agent = self.asys.createActor(NodeAgent, globalName=node_agent_name(self.node_id))
        init = NodeInit(self.node_id, self.role, self.gpu_ids, host, self.port, manager=manager)
        info = self.asys.ask(agent, init, 30)
        if not isinstance(info, NodeInfo):
            raise InferenceTimeoutError("node agent did not start")
        self.info = info

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
        return port

    def stop(self) -> list[int]:
        """Stop the actor system; returns PIDs of leftover processes that had to be ended."""
        if self.asys is None:
            return []
        asys, self.asys = self.asys, None
        return stop_system(asys, self.port)
