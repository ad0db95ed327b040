"""A node's actor system and its top-level actors, started and stopped as one unit.

Used by `python -m atomr.node` and by tests that need a node inside the test process tree.

The head's own top-level actors are children of its actor system's admin, so no atomr actor hears
of their death. `watch` (called periodically by the node process) looks the gateways and the
head's node agent up by global name; Thespian frees the name of an actor whose process died, so a
lookup that returns a new address has just started a successor, which is then set up as its
predecessor was (the agent registers again; a gateway serves its HTTP worker again on the same
port).

An HTTP front of several workers (`http.workers`) is one gateway per worker, the first the head's
own; they share a folder this runtime makes and removes when it stops (`atomr.http.workers`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from typing import Any

import structlog

from atomr.actors.messages import (
    GATEWAY_NAME,
    KEYS_NAME,
    MANAGER_NAME,
    METRICS_NAME,
    RATE_LIMITER_NAME,
    REGISTRY_NAME,
    Deploy,
    GetStatus,
    HeadStarted,
    NodeInfo,
    NodeInit,
    RestoreDone,
    SetTenants,
    StartHttp,
    StartKeys,
    UseState,
    gateway_name,
    node_agent_name,
    reply_value,
)
from atomr.cluster.system import reachable_host, start_system, stop_system
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
        state_dir: str | None = None,
        adopt_window_s: float = 120.0,
    ) -> None:
        self.node_id, self.role, self.port, self.bind = node_id, role, port, bind
        self.state_dir = state_dir  # the head records its desired state here (None: it does not)
        self.adopt_window_s = adopt_window_s
        self.heads: list[tuple[str, int]] = [join] if join is not None else []  # a member's heads
        self.took_over_at: float | None = None  # a standby that took over: its last snapshot (wall time)
        self.stepped_down_to: tuple[str, int] | None = None  # a head that found a standby leading
        self.failover_after_s = 5.0
        self.gpu_ids = list(gpu_ids or [])
        self.join = join
        self.asys: Any = None
        self.info: NodeInfo | None = None
        self.host = ""
        self.gateway: Any = None
        self.agent: Any = None
        self.http: tuple[Any, list[Any]] | None = None  # HTTP settings (with the port bound) and tenants
        self.workers: list[Any] = []  # the gateway of each HTTP worker, with its place
        self.shared_dir: str | None = None  # what the HTTP workers share
        self.admin_sha256: str | None = None  # the admin key's hash: runtime keys are on (head only)
        self.keeper: Any = None
        self.spend_retention_days = 90.0

    def start(self) -> None:
        """Start this node's actor system; the head also starts the global actors and its agent.

        A node that joins only starts its actor system: the head's deployment manager notices it
        through the convention and creates its node agent there.
        """
        from atomr.actors.gateway import Gateway
        from atomr.actors.metrics_collector import MetricsCollector
        from atomr.actors.node_agent import NodeAgent
        from atomr.actors.rate_limiter import RateLimiter
        from atomr.actors.registry import Registry

        host = self.host = reachable_host(self.bind)
        caps = {
            "atomr.role": self.role,
            "atomr.node_id": self.node_id,
            "atomr.gpus": ",".join(self.gpu_ids),
            "atomr.host": host,
        }
        self.asys = start_system(self.port, bind=self.bind, capabilities=caps, join=self.join)
        if self.join is not None:
            return
        registry = self.asys.createActor(Registry, globalName=REGISTRY_NAME)
        self.asys.createActor(MetricsCollector, globalName=METRICS_NAME)
        manager = self._manager()
        limiter = self.asys.createActor(RateLimiter, globalName=RATE_LIMITER_NAME)
        if self.state_dir is not None:
            use = UseState(self.state_dir, self.adopt_window_s, self.took_over_at)
            for keeper in (manager, registry, limiter):
                reply_value(self.asys.ask(keeper, use, 30.0), "state directory", 30.0)
        self._start_keeper()
        self.gateway = self.asys.createActor(Gateway, globalName=GATEWAY_NAME)
        self.agent = self.asys.createActor(NodeAgent, globalName=node_agent_name(self.node_id))
        self.info = self._init_agent(self.agent)

    def _start_keeper(self, timeout: float = 30.0) -> None:
        from atomr.actors.key_keeper import KeyKeeper

        self.keeper = self.asys.createActor(KeyKeeper, globalName=KEYS_NAME)
        start_keys = StartKeys(self.state_dir, self.admin_sha256, self.spend_retention_days)
        reply_value(self.asys.ask(self.keeper, start_keys, timeout), "key keeper start", timeout)

    def _manager(self) -> Any:
        from atomr.actors.deployment_manager import DeploymentManager

        return self.asys.createActor(DeploymentManager, globalName=MANAGER_NAME)

    def _ask_manager(self, msg: Any, asked: str, timeout: float) -> Any:
        """The value of the deployment manager's answer to `msg` (its error raised)."""
        return reply_value(self.asys.ask(self._manager(), msg, timeout), asked, timeout)

    def _init_agent(self, agent: Any, timeout: float = 30.0) -> NodeInfo:
        init = NodeInit(self.node_id, self.role, self.gpu_ids, self.host, self.port, manager=self._manager())
        info = self.asys.ask(agent, init, timeout)
        if not isinstance(info, NodeInfo):
            raise InferenceTimeoutError("node agent did not start")
        return info

    def deploy(self, dep: Deployment, timeout: float = 600.0, restore: bool = False) -> DeploymentInfo:
        """Deploy `dep` and wait until it serves; `restore`: it is brought back at head start
        (running replicas of its version on member nodes are adopted first)."""
        value: DeploymentInfo = self._ask_manager(Deploy(dep, True, restore), f"deploy of {dep.name}", timeout)
        return value

    def rejoin(self, head: tuple[str, int]) -> None:
        """A member node: make `head` its convention leader (the head it joined is gone)."""
        self.asys.updateCapability("Convention Address.IPv4", head)
        self.join = head

    def wait_for_nodes(self, node_ids: list[str], timeout: float) -> list[str]:
        """Wait until these member nodes have registered (at most `timeout` s); the missing ones."""
        deadline = time.monotonic() + timeout
        while True:
            status = self._ask_manager(GetStatus(), "status", 30.0)
            missing = sorted(set(node_ids) - {n.node_id for n in status["nodes"]})
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)

    def restore_done(self, timeout: float = 30.0) -> None:
        """Every deployment is back: replicas held for adoption and not adopted are stopped."""
        self._ask_manager(RestoreDone(), "restore", timeout)

    def set_tenants(self, tenants: list[Any], timeout: float = 30.0) -> None:
        """Give the deployment manager the tenants (weights, quotas) for every coordinator's queue."""
        self._ask_manager(SetTenants(list(tenants)), "tenants", timeout)

    def started(self, timeout: float = 30.0) -> None:
        """The head has brought back everything it had: requests for names still unknown are
        refused from now on (until then they wait: see `HeadStarted`)."""
        from atomr.actors.registry import Registry

        registry = self.asys.createActor(Registry, globalName=REGISTRY_NAME)
        reply_value(self.asys.ask(registry, HeadStarted(), timeout), "head start", timeout)

    def start_http(self, settings: Any, tenants: list[Any], timeout: float = 30.0) -> int:
        """Have the head's gateway serve the HTTP front (and, with `settings.workers` > 1, as many
        gateways each one worker of it, on the same port); returns the port it listens on."""
        from atomr.http.workers import WorkerPlace

        if settings.workers > 1:
            self.shared_dir = tempfile.mkdtemp(prefix="atomr-http-")  # 0700
        places = [WorkerPlace(i, settings.workers, self.shared_dir) for i in range(settings.workers)]
        port = self._start_worker(places[0], settings, tenants, timeout)
        settings = settings.model_copy(update={"port": port})  # the others, and successors, bind this port
        self.http = (settings, list(tenants))
        for place in places[1:]:
            self._start_worker(place, settings, tenants, timeout)
        return port

    def _start_worker(self, place: Any, settings: Any, tenants: list[Any], timeout: float) -> int:
        from atomr.actors.gateway import Gateway

        gateway = self.asys.createActor(Gateway, globalName=gateway_name(place.worker))
        port: int = reply_value(
            self.asys.ask(gateway, StartHttp(settings, tenants, place, self.admin_sha256 is not None), timeout),
            "HTTP start",
            timeout,
        )
        if place.worker < len(self.workers):
            self.workers[place.worker] = (gateway, place)
        else:
            self.workers.append((gateway, place))
        return port

    def watch(self, timeout: float = 30.0) -> list[str]:
        """Start again the head's gateway, node agent and key keeper if their processes died;
        returns which."""
        from atomr.actors.gateway import Gateway
        from atomr.actors.key_keeper import KeyKeeper
        from atomr.actors.node_agent import NodeAgent

        if self.asys is None or self.join is not None:
            return []
        restarted = []
        if self.asys.createActor(KeyKeeper, globalName=KEYS_NAME) != self.keeper:
            log.error("key keeper process died; starting it again")
            self._start_keeper(timeout)  # (gateways watch it again within 5 s)
            restarted.append("key keeper")
        gateway = self.asys.createActor(Gateway, globalName=GATEWAY_NAME)
        if gateway != self.gateway:
            log.error("gateway process died; starting it again")
            if self.http is not None:
                settings, tenants = self.http
                self._start_worker(self.workers[0][1], settings, tenants, timeout)
            self.gateway = gateway  # set up: not done again by the next call
            restarted.append("gateway")
        for i, (known, place) in enumerate(self.workers[1:], start=1):
            if self.asys.createActor(Gateway, globalName=gateway_name(i)) != known:
                log.error("HTTP worker process died; starting it again", worker=i)
                assert self.http is not None
                self._start_worker(place, *self.http, timeout)
                restarted.append(f"http worker {i}")
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
        try:
            return stop_system(asys, self.port)
        finally:
            if self.shared_dir is not None:
                shutil.rmtree(self.shared_dir, ignore_errors=True)
