"""Every message exchanged between atomr actors and clients, as small picklable dataclasses.

Busy hops carry lists (several requests or events per message): Thespian moves a few thousand
messages per second per actor pair, so batching is what makes the request path fast.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from atomr.core.budgets import Hold
from atomr.core.deployment import Deployment
from atomr.core.errors import ErrorInfo
from atomr.core.keys import ApiKey
from atomr.core.policies import Cascade, Policies, RoutePolicy
from atomr.core.routes import DeploymentStats, Route
from atomr.core.runner import PromptLimit
from atomr.core.spend import SpendRecord
from atomr.core.status import DeploymentInfo
from atomr.core.types import InferenceRequest, StreamEvent, Usage

# Thespian ActorAddress objects are typed Any here: they are opaque handles.
Address = Any

# Global actor names (one per actor system / convention).
MANAGER_NAME = "atomr-deployment-manager"
REGISTRY_NAME = "atomr-registry"
GATEWAY_NAME = "atomr-gateway"
RATE_LIMITER_NAME = "atomr-rate-limiter"
METRICS_NAME = "atomr-metrics"
KEYS_NAME = "atomr-keys"


def node_agent_name(node_id: str) -> str:
    return f"atomr-node-agent-{node_id}"


def gateway_name(worker: int) -> str:
    """The global name of the gateway serving HTTP worker `worker` (0: the head's own gateway)."""
    return GATEWAY_NAME if worker == 0 else f"{GATEWAY_NAME}-{worker}"


MAX_FALLBACK_HOPS = 3  # a request moves to a fallback deployment at most this many times

# ---- request path --------------------------------------------------------------------------


@dataclass(slots=True)
class WorkItem:
    request: InferenceRequest
    reply_to: Address
    hops: int = 0  # fallback forwards so far (bounded, so fallbacks cannot loop)
    fallbacks: tuple[str, ...] | None = None  # what is left of the first deployment's fallback list
    # (rate-limit key, tokens estimated) of each budget it was admitted from, to settle when done
    debits: tuple[tuple[str, int], ...] = ()
    # Sent again by its caller, who may have lost it to a dead process: a coordinator already
    # serving this request id ignores it (a new request reusing an id in service is refused).
    resent: bool = False

    def onward(self, fallbacks: tuple[str, ...]) -> WorkItem | None:
        """This request for the next deployment of its fallback list (`fallbacks`, the failing
        deployment's own, until it has one of its own), or None: none left, too many hops, or
        its deadline has passed."""
        chain = self.fallbacks if self.fallbacks is not None else fallbacks
        deadline = self.request.deadline
        if not chain or self.hops >= MAX_FALLBACK_HOPS or (deadline is not None and time.time() > deadline):
            return None
        request = dataclasses.replace(self.request, model=chain[0])
        return WorkItem(request, self.reply_to, self.hops + 1, tuple(chain[1:]))


@dataclass(slots=True)
class Submit:
    """Requests entering a gateway or a coordinator."""

    items: list[WorkItem]


@dataclass(slots=True)
class Dispatch:
    """Requests a coordinator hands to one replica."""

    items: list[WorkItem]


@dataclass(slots=True)
class Events:
    """Stream events for one requester (chunks and final answers of many requests)."""

    events: list[StreamEvent]


@dataclass(slots=True)
class ReplicaProgress:
    """Since a replica's last report: requests that started streaming, and final answers.

    Final answers travel through the coordinator (chunks go straight to the requester), so a
    request is forgotten by its coordinator exactly when its answer is on its way: a replica
    killed between the two can never leave a request both forgotten and unanswered.
    """

    replica_id: str
    started: list[str]
    finals: list[tuple[Address, StreamEvent]]
    health: dict[str, Any] | None = None  # the runner's status (e.g. circuit breaker) when it changed


@dataclass(slots=True)
class Cancel:
    request_ids: list[str]
    model: str = ""


@dataclass(slots=True)
class Hello:
    """Asked by a client endpoint to learn its own address as actors see it."""


@dataclass(slots=True)
class HelloReply:
    address: Address


# ---- replica lifecycle ---------------------------------------------------------------------


@dataclass(slots=True)
class NodeInit:
    node_id: str
    role: str
    gpu_ids: list[str]
    host: str
    port: int
    manager: Address = None
    heartbeat_s: float = 1.0
    # Sent to a member's agent that outlived its head (a head started again, `AGENT_CAPABILITY`):
    # it reports to `manager` from now on, with the replicas it still runs (`RegisterNode.held`).
    adopt: bool = False
    adopt_window_s: float = 120.0  # a member's replicas outlive a lost head this long


# A member node's actor system advertises its node agent's address under this capability, so
# that a head started again finds the agent (and its running replicas) when the node rejoins.
AGENT_CAPABILITY = "atomr.agent"
# A standby head's actor system (role "standby") advertises its state folder and the address it
# will serve on when it leads under these capabilities.
STATE_DIR_CAPABILITY = "atomr.state_dir"
STANDBY_ADDRESS_CAPABILITY = "atomr.standby_address"


@dataclass(slots=True)
class Follow:
    """Standby node -> its follower actor: write the leader's snapshots into this state folder."""

    state_dir: str


@dataclass(slots=True)
class StateSnapshot:
    """Manager -> a standby head's follower, twice a second: the head's whole state
    (`atomr.cluster.head_state.Snapshot`)."""

    snapshot: Any


@dataclass(slots=True)
class HeldReplica:
    """A replica a node agent runs, as it reports it to a new head for adoption."""

    replica_id: str  # the instance, e.g. "chat-v2-r0.0"
    deployment: str
    version: str
    gpu_ids: list[str]


@dataclass(slots=True)
class NodeInfo:
    node_id: str
    role: str
    gpu_ids: list[str]
    host: str
    port: int
    address: Address = None
    pid: int = 0
    runtimes: list[str] = field(default_factory=list)  # runtimes whose package this node has
    # Filled in by the manager for status: "ok", or "late" when a heartbeat is overdue (a node
    # silent for ATOMR_NODE_TIMEOUT_S is lost and leaves the list); seconds since the last one.
    health: str = ""
    heartbeat_age_s: float | None = None


@dataclass(slots=True)
class RegisterNode:
    info: NodeInfo
    held: list[HeldReplica] = field(default_factory=list)  # an adopted agent's running replicas


@dataclass(slots=True)
class SpawnReplica:
    deployment: Deployment
    replica_id: str
    coordinator: Address
    gpu_ids: list[str] = field(default_factory=list)


@dataclass(slots=True)
class LoadRunner:
    deployment: Deployment
    replica_id: str
    coordinator: Address
    gpu_ids: list[str]
    node_id: str


@dataclass(slots=True)
class ReplicaReady:
    replica_id: str
    address: Address
    node_id: str
    pid: int
    gpu_ids: list[str]
    visible_devices: str | None = None  # CUDA_VISIBLE_DEVICES as the runner host process sees it
    # Answering `AdoptReplica`: the requests in progress (and whether each has sent a chunk), and
    # the error finals of the last moments, which may have died with the previous coordinator.
    inflight: list[tuple[WorkItem, bool]] = field(default_factory=list)
    finals: list[tuple[WorkItem, StreamEvent]] = field(default_factory=list)
    prompt_limit: PromptLimit | None = None  # the runner's, for gateways' early refusals


@dataclass(slots=True)
class AdoptReplica:
    """A new coordinator (its predecessor died) -> node agent -> runner host: report to me now.

    The runner host answers with `ReplicaReady` once it is loaded; a node agent that no longer
    has the instance answers `ReplicaExited`.
    """

    replica_id: str
    coordinator: Address


@dataclass(slots=True)
class ReplicaFailed:
    replica_id: str
    error: ErrorInfo


@dataclass(slots=True)
class ReplicaExited:
    replica_id: str


@dataclass(slots=True)
class StopReplica:
    replica_id: str


@dataclass(slots=True)
class PlaceReplica:
    """Coordinator -> manager: start replica `slot` again as `instance`, on a live node."""

    deployment: Deployment
    slot: str
    instance: str


@dataclass(slots=True)
class ReplicaPlaced:
    """Manager -> coordinator: where `instance` is starting (node None: nowhere it fits)."""

    slot: str
    instance: str
    node_id: str | None
    node_agent: Address = None
    gpu_ids: list[str] = field(default_factory=list)
    reason: str = ""
    adopt: bool = False  # a running replica a head started again takes over (no engine load)


@dataclass(slots=True)
class Heartbeat:
    node_id: str


@dataclass(slots=True)
class HeartbeatAck:
    """Manager -> node agent: the head is alive (an agent without one for its adopt window stops
    its replicas)."""


@dataclass(slots=True)
class NodeLost:
    """Manager -> coordinator: these replica instances were on a node that is gone."""

    node_id: str
    instances: list[str]


@dataclass(slots=True)
class NodeJoined:
    """Manager -> coordinator: a new node registered; replicas no node could host may fit now."""

    node_id: str


# ---- deployment lifecycle ------------------------------------------------------------------


@dataclass(slots=True)
class Deploy:
    deployment: Deployment
    wait: bool = True
    # Brought back by a head started again: running replicas of this version that member nodes
    # report are adopted (no engine reload) before any is started anew.
    restore: bool = False


@dataclass(slots=True)
class RestoreDone:
    """Head start -> manager: every deployment is back; replicas still held for adoption and not
    adopted (their deployment or version is no longer wanted) are stopped. Answered with a Reply."""


@dataclass(slots=True)
class Undeploy:
    name: str
    wait: bool = True


@dataclass(slots=True)
class ListDeployments:
    pass


@dataclass(slots=True)
class GetStatus:
    pass


@dataclass(slots=True)
class Reply:
    """Answer to an admin request: ok with a value, or an error."""

    ok: bool
    value: Any = None
    error: ErrorInfo | None = None


def reply_value(reply: Any, asked: str, timeout: float) -> Any:
    """The value of an admin `Reply`; its error (or a missing answer) raised as an InferenceError."""
    from atomr.core.errors import InferenceError, InferenceTimeoutError, InternalError

    if reply is None:
        raise InferenceTimeoutError(f"{asked} got no answer within {timeout:.0f} s")
    if not isinstance(reply, Reply):
        raise InternalError(f"{asked}: unexpected answer {type(reply).__name__}")
    if not reply.ok:
        raise InferenceError.from_info(reply.error or ErrorInfo("internal", f"{asked} failed"))
    return reply.value


@dataclass(slots=True)
class StartCoordinator:
    deployment: Deployment
    manager: Address
    placements: list[ReplicaPlaced]  # where each replica slot's first instance is starting
    tenants: list[Any] = field(default_factory=list)  # atomr.core.tenants.Tenant: weights and quotas
    # Set when this coordinator replaces one that died: the placements are running replicas to
    # adopt (node_agent None: a replica that was waiting for a node), `previous` what was known.
    adopt: bool = False
    previous: DeploymentInfo | None = None


@dataclass(slots=True)
class UseState:
    """Head start -> manager and registry: record every change of the desired state in the state
    file of this folder (`atomr.cluster.head_state`) before acknowledging it; member nodes keep
    their replicas through a head loss for `adopt_window_s`. Answered with a Reply."""

    state_dir: str
    adopt_window_s: float = 120.0
    # A standby that took over: the leader may have granted rate-limit budget after this time
    # (wall clock: its last snapshot), which no snapshot carried; the limiter counts it as spent.
    unknown_since: float | None = None


@dataclass(slots=True)
class SetTenants:
    """Head start -> manager: the tenants of the node config, for every coordinator's fair queue."""

    tenants: list[Any]


@dataclass(slots=True)
class DeploymentState:
    info: DeploymentInfo


@dataclass(slots=True)
class Drain:
    pass


@dataclass(slots=True)
class Drained:
    name: str


# ---- routing -------------------------------------------------------------------------------


@dataclass(slots=True)
class SetRoutes:
    """Registry update: these names now route to `route` (None removes them)."""

    names: list[str]
    route: Route | None


@dataclass(slots=True)
class Subscribe:
    pass


@dataclass(slots=True)
class RouteTable:
    routes: dict[str, Route]
    full: bool = True  # False for the answer to a Lookup (only the names asked for)
    # False while the head is starting (bringing its deployments back): a request for a name
    # with no route yet waits for it instead of being refused as unknown
    settled: bool = True


@dataclass(slots=True)
class HeadStarted:
    """Head start -> registry: every deployment, route and cascade the head brings back is back;
    a name still unknown is refused from now on. Answered with a Reply."""


@dataclass(slots=True)
class Lookup:
    names: list[str]


@dataclass(slots=True)
class GetRoutes:
    """Asks the registry for the routes of these names (a Reply: name -> Route, known ones only)."""

    names: list[str]


@dataclass(slots=True)
class SetPolicies:
    """Routes and cascades to add or replace (by name) in the registry; `remove` drops names.

    Answered with a `Reply` (its error names the field when a name is already a deployment's).
    """

    policies: Policies
    remove: list[str] = field(default_factory=list)


@dataclass(slots=True)
class PolicyTable:
    """Registry -> gateways: every route and cascade, by name (sent whole on each change)."""

    routes: dict[str, RoutePolicy]
    cascades: dict[str, Cascade]


@dataclass(slots=True)
class RouteStats:
    """Registry -> gateways: deployment name -> its stats (sent when something changed)."""

    stats: dict[str, DeploymentStats]


# ---- rate limiting ------------------------------------------------------------------------


@dataclass(slots=True)
class AcquireLease:
    key: str
    rpm: int | None
    tpm: int | None
    window_s: float
    requests: int
    tokens: int


@dataclass(slots=True)
class Lease:
    key: str
    requests: int
    tokens: int
    retry_after: float  # when nothing was granted: seconds until something frees up


@dataclass(slots=True)
class ReleaseLease:
    key: str
    requests: int
    tokens: int


@dataclass(slots=True)
class Settle:
    """A request's token estimates, corrected with what it really used (`actual`), per budget."""

    debits: tuple[tuple[str, int], ...]  # (key, tokens estimated)
    actual: int

    @classmethod
    def of(cls, debits: tuple[tuple[str, int], ...], usage: Usage | None) -> Settle | None:
        """What settles the token-limited `debits` once `usage` is known (None: nothing to settle)."""
        owed = tuple(d for d in debits if d[1])
        return cls(owed, usage.total_tokens if usage is not None else 0) if owed else None


@dataclass(slots=True)
class MetricsSnapshot:
    """A process's metric families (absolute values) for the head's /metrics."""

    source: str
    families: list[Any]


@dataclass(slots=True)
class MetricsDrop:
    source: str


@dataclass(slots=True)
class GetMetrics:
    """Asks the metrics collector for the Prometheus text exposition (answered with a Reply)."""


@dataclass(slots=True)
class StartHttp:
    """Asks a gateway to serve the OpenAI-compatible HTTP front (answered with Reply(port))."""

    settings: Any  # atomr.http.settings.HttpSettings
    tenants: list[Any]  # atomr.core.tenants.Tenant
    place: Any = None  # atomr.http.workers.WorkerPlace: which of the front's worker processes
    runtime_keys: bool = False  # keys made at runtime authenticate too (the head has an admin key)


@dataclass(slots=True)
class SwapVersion:
    """Manager -> coordinator: start the new version's replicas beside the old, then switch."""

    deployment: Deployment
    placements: list[ReplicaPlaced]


@dataclass(slots=True)
class SwapEnded:
    """Coordinator -> manager: a version switch finished (ok) or was rolled back."""

    name: str
    version: str
    ok: bool
    reason: str = ""
    released_slots: list[str] = field(default_factory=list)  # slots whose replicas are gone
    info: DeploymentInfo | None = None  # the deployment as it stands after the switch


# ---- runtime keys, budgets and spend (the key keeper, `atomr.actors.key_keeper`) -------------


@dataclass(slots=True)
class StartKeys:
    """Head start -> key keeper: keep keys and spend in the state file of `state_dir` (None: a
    file of its own that ends with it); `admin_sha256`: the admin key's hash (None: no admin
    API). Answered with a Reply."""

    state_dir: str | None
    admin_sha256: str | None
    retention_days: float = 90.0


@dataclass(slots=True)
class WatchKeys:
    """Gateway -> key keeper: send me the key table now and whenever it changes (answered with a
    `KeyTable` when `version` is not the keeper's current one)."""

    version: tuple[str, int] | None = None


@dataclass(slots=True)
class KeyTable:
    """Key keeper -> gateways: every runtime key (revoked ones too, so they are dropped)."""

    version: tuple[str, int]  # (the keeper's boot id, its change count)
    keys: tuple[ApiKey, ...]


@dataclass(slots=True)
class Reserve:
    """Gateway -> key keeper: places in their keys' budgets for these runs (answered `Reserved`)."""

    holds: list[Hold]


@dataclass(slots=True)
class Reserved:
    """Key keeper -> gateway: the runs (request id, deployment) that hold a place, and those refused."""

    granted: list[tuple[str, str]]
    refused: list[tuple[str, str, ErrorInfo]]


@dataclass(slots=True)
class SpendRecords:
    """Coordinators and gateways -> key keeper: runs that ended, for the spend log and budgets."""

    records: list[SpendRecord]


@dataclass(slots=True)
class KeysAdmin:
    """An admin operation on keys or spend (`atomr.actors.key_keeper.OPS`), with the admin key
    the caller presented; answered with a Reply."""

    op: str
    args: dict[str, Any]
    admin_key: str | None


@dataclass(slots=True)
class SpendTotals:
    """Spend summed by tenant and by deployment (what atomr-status shows); answered with a Reply."""


@dataclass(slots=True)
class Locate:
    """Client -> portal on the head: the addresses of these global actors (a Reply: name -> address)."""

    names: list[str]


@dataclass(slots=True)
class Identify:
    """Portal -> an actor it found by global name: tell me your own address (the one found is
    only this host's handle until the admin has answered)."""

    name: str


@dataclass(slots=True)
class Identity:
    name: str
    address: Address
