"""`python -m atomr.node`: start one node (head, gpu or cpu) of an atomr cluster.

The head runs the deployment manager, registry and gateway and deploys what its config lists;
every node runs a node agent that reports its capabilities and hosts runner processes. The node
binds loopback unless told otherwise, prints where it listens, and on SIGINT/SIGTERM stops its
actor system and ends every process it started.

Every frame between the processes of a cluster carries an HMAC with the cluster key
(``atomr.cluster.auth``): ``--cluster-key-file`` (or ``node.cluster_key_file`` in the config, or
``$ATOMR_CLUSTER_KEY_FILE`` / ``$ATOMR_CLUSTER_KEY``) is required with a ``--bind`` beyond loopback.
A joining node first checks that the head accepts its key and exits (status 1) if it does not.
"""

from __future__ import annotations

import os

# Thespian notices a dead convention member after 22 minutes by default; atomr's own heartbeats
# notice it in seconds, and this makes Thespian's view follow soon after. Set before thespian loads.
os.environ.setdefault("CONVENTION_REREGISTRATION_PERIOD", "0:02")

import argparse
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atomr.client import DEFAULT_PORT
from atomr.cluster.admin_key import ADMIN_KEY_FILE_ENV, admin_key_path, read_admin_key
from atomr.cluster.auth import KEY_ENV, KEY_FILE_ENV, ClusterKey, ClusterKeyError, is_loopback, probe, resolve_key
from atomr.cluster.head_state import DesiredState, HeadState, default_state_dir
from atomr.cluster.system import ADVERTISE_ENV, port_open, reachable_host
from atomr.cluster.thespian_setup import DEFAULT_BIND
from atomr.config import load_deployments, load_policies, load_yaml
from atomr.core.errors import ConfigError, InferenceError
from atomr.core.policies import Cascade, Policies, RoutePolicy
from atomr.core.tenants import TenantTable, hash_key, tenants_from_config
from atomr.http.settings import HttpSettings, http_settings_from_config
from atomr.node.settings import NodeSettings, node_settings_from_config
from atomr.node.standby import Standby, follow, leading_standby
from atomr.observability import tracing
from atomr.observability.logs import configure_logging, get_logger

if TYPE_CHECKING:
    from atomr.core.deployment import Deployment
    from atomr.node.runtime import NodeRuntime

log = get_logger("atomr.node")
FD_HEADROOM = 256  # files and sockets of the node's own beyond the HTTP front's connections
WATCH_PERIOD_S = 0.5
JOIN_CHECK_S = 2.0  # while the head is not reachable yet, ask it this often whether it accepts our key
# a head started again waits this long at most for the member nodes it knew to rejoin (they
# re-register with the convention every 2 s), so that it adopts their replicas
REJOIN_WAIT_S = 15.0
# how often a head asks whether one of its standbys leads now (it took over while cut off from
# this head): then this head steps down and follows it
LEADER_CHECK_S = 2.0


def say(line: str) -> None:
    """One status line on stdout, in one write (actor processes share the stream and log to it)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m atomr.node", description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=("head", "gpu", "cpu"), default="head")
    p.add_argument("--port", type=int, default=None, help=f"admin port (default {DEFAULT_PORT}, or the config's)")
    p.add_argument("--bind", default=None, help=f"address to listen on (default {DEFAULT_BIND})")
    p.add_argument(
        "--advertise",
        default=None,
        metavar="HOST",
        help="the address other hosts reach this node at, where the bound one is not (e.g. --bind 0.0.0.0)",
    )
    p.add_argument(
        "--join",
        default=None,
        metavar="HOST:PORT[,HOST:PORT]",
        help="the head node to join; with several (a head and its standbys), the one that leads",
    )
    p.add_argument(
        "--standby",
        default=None,
        metavar="HOST:PORT",
        help="(a head) follow the head at HOST:PORT and take over when it is gone",
    )
    p.add_argument(
        "--cluster-key-file",
        default=None,
        metavar="PATH",
        help=f"the cluster key shared by every node and client (required with a --bind beyond loopback;"
        f" default ${KEY_FILE_ENV}, else a per-user key on loopback)",
    )
    p.add_argument("--config", default=None, help="YAML file: node settings and deployments")
    p.add_argument(
        "--gpus", default=None, help="GPU ids of this node, e.g. 0,1 (default: CUDA_VISIBLE_DEVICES or nvidia-smi)"
    )
    p.add_argument("--node-id", default=None, help="name of this node (default: hostname-port)")
    p.add_argument(
        "--state-dir",
        default=None,
        metavar="PATH",
        help="where a head keeps its desired state (default: node.state_dir, else under the user's data"
        " directory, per node id)",
    )
    p.add_argument(
        "--admin-key-file",
        default=None,
        metavar="PATH",
        help=f"(a head) the admin key of /admin and atomr-keys; turns on runtime keys (default:"
        f" http.admin_key_file, else ${ADMIN_KEY_FILE_ENV})",
    )
    p.add_argument("--log-level", default=None, help="debug, info, warning or error")
    p.add_argument(
        "--http-port", type=int, default=None, help="serve the OpenAI-compatible HTTP front here (0: any free port)"
    )
    return p.parse_args(argv)


def detect_gpus(flag: str | None) -> list[str]:
    """GPU ids: --gpus, else CUDA_VISIBLE_DEVICES, else what nvidia-smi lists (never imports CUDA)."""
    if flag is not None:
        return [g.strip() for g in flag.split(",") if g.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout
            return [line.strip() for line in out.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            return []
    return []


def check_join(join: tuple[str, int], key: ClusterKey, quiet: bool = False) -> bool | None:
    """Whether the head accepts this node's cluster key (None: it gave no verdict yet).

    A refusal is printed on stderr. A head that is not reachable yet is asked again while the node
    runs (Thespian keeps trying to register with it meanwhile).
    """
    check = probe(join[0], join[1], key)
    if check.accepted is False:
        print(f"atomr node: could not join {join[0]}:{join[1]}: {check.detail}", file=sys.stderr, flush=True)
    elif check.accepted is None and not quiet:
        log.warning("head not reachable yet; will join when it is", head=f"{join[0]}:{join[1]}", detail=check.detail)
    return check.accepted


@dataclass(frozen=True)
class NodeConfig:
    """What the config file (and the command line's --http-port) asks of the node."""

    settings: NodeSettings  # the `node:` section
    deployments: list[Deployment]
    policies: Policies
    http: HttpSettings | None
    tenants: TenantTable
    sections: frozenset[str] = frozenset()  # the top-level keys the file has
    traces: tracing.TracingSettings | None = None  # the `tracing:` section (None: off)

    def relative(self, path: str, args: argparse.Namespace) -> str:
        """`path` from the config file, made relative to the file's folder."""
        return os.path.join(os.path.dirname(str(args.config)), os.path.expanduser(path))


def read_config(args: argparse.Namespace) -> NodeConfig:
    """The node's config file, or an empty config without one; raises InferenceError when invalid."""
    deployments: list[Deployment] = []
    policies = Policies()
    raw: Any = {}
    if args.config:
        raw = load_yaml(args.config)
        deployments = load_deployments(args.config) if isinstance(raw, dict) and raw.get("deployments") else []
        policies = load_policies(args.config, deployments if deployments else None)
    raw = raw if isinstance(raw, dict) else {}
    where = str(args.config or "command line")
    settings = node_settings_from_config(raw.get("node"), where)
    http = http_settings_from_config(raw.get("http"), where)
    if args.http_port is not None:
        http = (http or HttpSettings()).model_copy(update={"port": args.http_port})
    tenants = tenants_from_config(raw.get("tenants"), where)
    traces = tracing.tracing_settings_from_config(raw.get("tracing"), where)
    return NodeConfig(settings, deployments, policies, http, tenants, frozenset(raw), traces)


def node_key(args: argparse.Namespace, config: NodeConfig, bind: str) -> ClusterKey:
    """The cluster key for `bind`; a key file given here is passed on to the actor system through
    the environment. Raises ClusterKeyError."""
    key_file = args.cluster_key_file
    if not key_file and config.settings.cluster_key_file:
        key_file = config.relative(config.settings.cluster_key_file, args)
    key = resolve_key(bind, key_file=key_file)
    if key_file:  # the actor system (started later) resolves the same key
        os.environ[KEY_FILE_ENV] = os.path.abspath(os.path.expanduser(str(key_file)))
        os.environ.pop(KEY_ENV, None)
    return key


def admin_key_hash(args: argparse.Namespace, config: NodeConfig) -> str | None:
    """The SHA-256 of the admin key, when one is set (the key itself is not kept). Raises ConfigError."""
    configured = config.http.admin_key_file if config.http is not None else None
    path = admin_key_path(args.admin_key_file, config.relative(configured, args) if configured else None)
    if path is None:
        return None
    field = "--admin-key-file" if args.admin_key_file else "http.admin_key_file" if configured else ADMIN_KEY_FILE_ENV
    return hash_key(read_admin_key(path, field))


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files to its hard limit (every process the node
    starts inherits it); warns when it stays below `wanted`. Returns the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit", soft=soft, hard=hard, error=str(exc))
    if soft < wanted:
        log.warning(
            "the open-files limit is below what the HTTP front's connection cap needs", limit=soft, needs=wanted
        )
        say(f"warning: open-files limit {soft} is below the {wanted} the HTTP front's connection cap needs")
    return soft


def check_open_relay(config: NodeConfig, admin_sha256: str | None) -> None:
    """A front that would serve anyone beyond loopback (no tenants, no admin key) is refused unless
    the config says ``http.allow_unauthenticated: true`` (then it warns). Raises ConfigError."""
    http = config.http
    if http is None or is_loopback(http.bind) or not config.tenants.open or admin_sha256 is not None:
        return
    if not http.allow_unauthenticated:
        raise ConfigError(
            f"http.bind {http.bind} serves beyond loopback with no API keys: anyone who reaches it spends the"
            " deployments' provider keys; add tenants: (or an admin key for runtime keys), bind 127.0.0.1,"
            " or set http.allow_unauthenticated: true",
            field="http.bind",
        )
    log.warning("the HTTP front serves beyond loopback without authentication", bind=http.bind)
    say(f"warning: the HTTP front on {http.bind} asks no API key (http.allow_unauthenticated)")


def parse_joins(joins: str | None) -> list[tuple[str, int]]:
    """--join HOST:PORT[,HOST:PORT...]: the head and its standbys, in order."""
    return [j for j in (parse_join(part.strip()) for part in (joins or "").split(",")) if j is not None]


def pick_head(heads: list[tuple[str, int]], key: ClusterKey) -> tuple[tuple[str, int], bool | None]:
    """The head to join among `heads`: the first that accepts the key (a standby is not reachable
    at its address until it leads); the first of the list when none answers yet."""
    if len(heads) == 1:
        return heads[0], check_join(heads[0], key)
    for head in heads:
        verdict = check_join(head, key, quiet=True)
        if verdict is not None:
            return head, verdict
    return heads[0], check_join(heads[0], key)


def parse_join(join: str | None) -> tuple[str, int] | None:
    """--join HOST:PORT as (host, port); None for a head."""
    if not join:
        return None
    host, _, jport = join.rpartition(":")
    return (host or "127.0.0.1", int(jport))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = read_config(args)
    except InferenceError as exc:
        print(f"atomr node: {exc.message}", file=sys.stderr)
        return 2
    if (args.role == "head") == bool(args.join):
        print("atomr node: a head node takes no --join; gpu and cpu nodes need --join HEAD:PORT", file=sys.stderr)
        return 2
    if args.standby and args.role != "head":
        print("atomr node: --standby makes a standby head: it needs --role head", file=sys.stderr)
        return 2
    configure_logging(args.log_level or config.settings.log_level or "info")
    raise_fd_limit(FD_HEADROOM + (config.http.max_connections if config.http is not None else 0))
    tracing.install(config.traces)  # before the actor system starts: its processes inherit it
    port = args.port or config.settings.port or DEFAULT_PORT
    bind = args.bind or config.settings.bind or DEFAULT_BIND
    advertise = args.advertise or config.settings.advertise
    if advertise:  # read by every process of the node (they inherit it)
        os.environ[ADVERTISE_ENV] = advertise
    try:
        key = node_key(args, config, bind)
    except ClusterKeyError as exc:
        print(f"atomr node: {exc.message}", file=sys.stderr)
        return 2
    try:
        admin_sha256 = admin_key_hash(args, config) if args.role == "head" else None
        if args.role == "head":
            check_open_relay(config, admin_sha256)
    except InferenceError as exc:
        print(f"atomr node: {exc.message}", file=sys.stderr)
        return 2
    heads = parse_joins(args.join)
    join: tuple[str, int] | None = None
    joined: bool | None = True
    if heads:
        join, joined = pick_head(heads, key)
        if joined is False:
            return 1
    node_id = args.node_id or f"{socket.gethostname()}-{port}"
    gpus = detect_gpus(args.gpus)
    from atomr.node.runtime import NodeRuntime

    if join is not None:
        node = NodeRuntime(node_id=node_id, role=args.role, port=port, bind=bind, gpu_ids=gpus, join=join)
        node.heads = heads
        node.failover_after_s = config.settings.failover_after_s
        return run_node(node, config, key, joined)
    # a head: its desired state, checked before anything starts
    relative = config.relative(config.settings.state_dir, args) if config.settings.state_dir else None
    state_dir = str(args.state_dir or relative or default_state_dir(node_id))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        state = HeadState(state_dir)  # read here; the head's actors and its follower write it
        leader = parse_join(args.standby) if args.standby else leading_standby(state, key)
    except InferenceError as exc:
        print(f"atomr node: {exc.message}", file=sys.stderr)
        return 2
    try:
        while True:  # lead; or follow a head that leads, and lead once it is gone
            try:
                if leader is not None:
                    failover = config.settings.failover_after_s
                    standby = Standby(node_id, leader, reachable_host(bind), port, bind, state_dir, failover)
                    if not follow(standby, state, stop, say):
                        say("atomr node stopped")
                        return 0
                desired = state.load()
            except InferenceError as exc:
                print(f"atomr node: {exc.message}", file=sys.stderr)
                return 2
            node = NodeRuntime(
                node_id=node_id,
                role=args.role,
                port=port,
                bind=bind,
                gpu_ids=gpus,
                state_dir=state_dir,
                adopt_window_s=config.settings.adopt_window_s,
            )
            node.took_over_at = state.synced_at() if leader is not None else None
            node.admin_sha256 = admin_sha256
            node.spend_retention_days = config.settings.spend_retention_days
            code = run_node(node, config, key, joined, desired, stop, state)
            if node.stepped_down_to is None:
                return code
            leader = node.stepped_down_to
    finally:
        state.close()


def run_node(
    node: NodeRuntime,
    config: NodeConfig,
    key: ClusterKey,
    joined: bool | None,
    desired: DesiredState | None = None,
    stop: threading.Event | None = None,
    state: HeadState | None = None,
) -> int:
    """Start the node, serve until SIGINT/SIGTERM (0), a refused join (1) or, for a head, until
    one of its standbys leads (`node.stepped_down_to`), then stop it."""
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
        say(f"atomr node {node.node_id} ({node.role}) listening on {node.bind}:{node.port}")
        say(f"cluster key id {key.key_id} ({key.source})")
        if node.join is None:
            if node.state_dir is not None:
                say(f"state directory {node.state_dir}")
            start_head(node, config, desired)
        say("ready")
        return watch_node(node, stop, key, joined, state)
    except InferenceError as exc:
        print(f"atomr node: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        ended = node.stop()
        if ended:
            log.warning("ended leftover processes", pids=ended)
        say("atomr node stopped")


def start_head(node: NodeRuntime, config: NodeConfig, desired: DesiredState | None = None) -> None:
    """On the head: tenants, the HTTP front, deployments, routes and cascades, from the state
    directory's desired state and the config (`merge_desired`)."""
    plan = merge_desired(config, desired)
    for note in plan.notes:
        say(note)
    if plan.nodes:  # member nodes whose replicas may have outlived the last head: adopt, not reload
        say(f"waiting up to {REJOIN_WAIT_S:g} s for member nodes to rejoin: {', '.join(plan.nodes)}")
        missing = node.wait_for_nodes(plan.nodes, REJOIN_WAIT_S)
        if missing:
            say(f"not rejoined: {', '.join(missing)}")
    if plan.tenants is not None:
        node.set_tenants(plan.tenants)
    if config.http is not None:
        http_port = node.start_http(config.http, plan.tenants or [])
        say(f"http front on http://{config.http.bind}:{http_port}")
    for dep in plan.deployments:
        try:
            infos = node.deploy(dep, restore=True)
        except InferenceError as exc:  # one bad deployment must not take the node down
            say(f"deploy of {dep.name} failed: {exc.kind}: {exc.message}")
            log.error("deploy failed", deployment=dep.name, error=exc.message)
            continue
        say(f"deployed {dep.name} ({dep.runtime}, {dep.replicas} replica(s)): {infos.state}")
    if plan.policies:
        from atomr.actors.registry import publish_policies

        try:
            publish_policies(node.asys, plan.policies)
            say(f"routes and cascades: {', '.join(plan.policies.names)}")
        except InferenceError as exc:
            say(f"routes and cascades refused: {exc.kind}: {exc.message}")
    node.restore_done()
    node.started()


@dataclass(frozen=True)
class HeadPlan:
    """What a head starts with: deployments in the order to deploy them (a version switch that was
    under way follows its deployment), routes and cascades, tenants (None: none set), and notes
    on config entries that the state directory overrides."""

    deployments: list[Deployment]
    policies: Policies
    tenants: list[Any] | None
    notes: list[str]
    nodes: list[str] = field(default_factory=list)  # member nodes to wait for


def merge_desired(config: NodeConfig, desired: DesiredState | None) -> HeadPlan:
    """The state directory's desired state, with the config's entries that it does not name.

    The state directory records every change made while the head ran (deployments added, new
    versions, undeploys), so where both name a deployment, route or cascade, the recorded one
    is kept and a note says so: a config file edited for an existing name does not undo a change
    made at runtime (deploy a new version to change it). Tenants come from the config when it has
    a ``tenants:`` section, else from the state."""
    desired = desired or DesiredState([], Policies(), None)
    notes: list[str] = []
    deployments: list[Deployment] = []
    kept: dict[str, Deployment] = {}
    for dep, switching_to in desired.deployments:
        deployments.append(dep)
        kept[dep.name] = dep
        if switching_to is not None:  # the switch was under way: start it again
            deployments.append(switching_to)
    for dep in config.deployments:
        have = kept.get(dep.name)
        if have is None:
            deployments.append(dep)
        elif have != dep:
            notes.append(
                f"deployment {dep.name}: version {have.version} as the state directory records it is kept; "
                "the config's differs (deploy a new version to change it)"
            )
    held: dict[str, RoutePolicy | Cascade] = {r.name: r for r in desired.policies.routes}
    held.update((c.name, c) for c in desired.policies.cascades)
    routes, cascades = list(desired.policies.routes), list(desired.policies.cascades)
    for route in config.policies.routes:
        if route.name not in held:
            routes.append(route)
        elif held[route.name] != route:
            notes.append(f"route {route.name}: kept as the state directory records it; the config's differs")
    for cascade in config.policies.cascades:
        if cascade.name not in held:
            cascades.append(cascade)
        elif held[cascade.name] != cascade:
            notes.append(f"cascade {cascade.name}: kept as the state directory records it; the config's differs")
    policies = Policies(routes=tuple(routes), cascades=tuple(cascades))
    tenants = list(config.tenants.tenants) if "tenants" in config.sections else desired.tenants
    return HeadPlan(deployments, policies, tenants, notes, list(desired.nodes))


def follow_leader(node: NodeRuntime, heard: float) -> float:
    """A member given several heads: when the one it joined has not answered for the failover
    time, re-point to the first other that answers (the standby that took over). Returns when the
    joined head last answered."""
    assert node.join is not None
    now = time.monotonic()
    if port_open(*node.join):
        return now
    if now - heard < node.failover_after_s:
        return heard
    for head in node.heads:
        if head != node.join and port_open(*head):
            log.warning(
                "the head is gone: joining the one that leads now",
                gone=f"{node.join[0]}:{node.join[1]}",
                leader=f"{head[0]}:{head[1]}",
            )
            node.rejoin(head)
            return now
    return heard


def watch_node(
    node: NodeRuntime, stop: threading.Event, key: ClusterKey, joined: bool | None, state: HeadState | None = None
) -> int:
    """Until `stop` is set: restart the head's dead actors, ask a head that gave no verdict on
    this node's key yet (`joined` None) again, and (a head, with its `state`) step down when one
    of its standbys leads; 1 when the key is refused, 0 when stopped or stepping down."""
    next_join_check = time.monotonic() + JOIN_CHECK_S
    heard = time.monotonic()
    next_leader_check = time.monotonic() + LEADER_CHECK_S
    while not stop.wait(WATCH_PERIOD_S):
        if node.join is not None and len(node.heads) > 1:
            heard = follow_leader(node, heard)
        if state is not None and time.monotonic() >= next_leader_check:
            next_leader_check = time.monotonic() + LEADER_CHECK_S
            leading = leading_standby(state, key)
            if leading is not None:  # a standby took over while this head was cut off from it
                say(f"a standby leads at {leading[0]}:{leading[1]}: this head steps down and follows it")
                node.stepped_down_to = leading
                return 0
        if joined is None and node.join is not None and time.monotonic() >= next_join_check:
            joined = check_join(node.join, key, quiet=True)
            if joined is False:
                return 1
            next_join_check = time.monotonic() + JOIN_CHECK_S
        try:
            node.watch()  # the head's gateway and node agent are started again if they died
        except InferenceError as exc:
            log.error("restarting a dead actor failed; trying again", error=exc.message)
    return 0
