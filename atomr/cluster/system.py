"""Starting, joining and connecting to a Thespian actor system, and ending its processes.

Every atomr process talks to Thespian through here: the node starts the admin (and binds the
chosen address), clients connect to an existing admin (never starting one by accident), and
whoever started a system can end every process it left behind, by PID.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import psutil

from atomr.cluster.thespian_setup import DEFAULT_BIND, configure_thespian

if TYPE_CHECKING:
    from atomr.cluster.auth import ClusterKey

SYSTEM_BASE = "multiprocTCPBase"


def free_port(host: str = DEFAULT_BIND) -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


ADVERTISE_ENV = "ATOMR_ADVERTISE"  # the address others use, for a node bound to a wildcard address


def reachable_host(bind: str) -> str:
    """The address to reach a system bound to `bind` at: itself, or for a wildcard bind the
    address it advertises (``--advertise``), else loopback."""
    if bind not in ("", "0.0.0.0"):
        return bind
    return os.environ.get(ADVERTISE_ENV) or "127.0.0.1"


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def thespian_log_defs(level: int = logging.WARNING) -> dict[str, Any]:
    """Thespian's own log records (they go through its logger process) at `level`, to stderr."""
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s thespian %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "level": level}},
        "root": {"handlers": ["stderr"], "level": level},
        "disable_existing_loggers": False,
    }


def start_system(
    port: int,
    *,
    bind: str = DEFAULT_BIND,
    capabilities: dict[str, Any] | None = None,
    join: tuple[str, int] | None = None,
    cluster_key: ClusterKey | None = None,
) -> Any:
    """Start this node's actor system admin on `port` (joining a convention if `join`).

    Frames are signed with `cluster_key` (default: ``atomr.cluster.auth.resolve_key(bind)``).
    """
    configure_thespian(bind, cluster_key)
    from thespian.actors import ActorSystem

    if port_open(reachable_host(bind), port):
        raise RuntimeError(f"port {port} is already in use")
    caps: dict[str, Any] = {"Admin Port": port, **(capabilities or {})}
    if join is not None:
        caps["Convention Address.IPv4"] = join
    asys = ActorSystem(SYSTEM_BASE, caps, logDefs=thespian_log_defs(), transientUnique=True)
    reap_exited_children()
    return asys


def reap_exited_children() -> None:
    """Collect children that have exited: Thespian starts its admin through a child that exits
    at once and that nothing waits for (it would stay a zombie for the process's lifetime)."""
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


def check_node(host: str, port: int, cluster_key: ClusterKey | None = None) -> ClusterKey:
    """Ask the node at `host`:`port` whether it accepts the cluster key (`cluster_key`, default
    ``atomr.cluster.auth.resolve_key(host)``); returns the key. UnavailableError naming the
    address when nothing answers there, AuthError at once when the key is refused."""
    from atomr.cluster.auth import probe, resolve_key
    from atomr.core.errors import AuthError, UnavailableError

    key = cluster_key or resolve_key(host)
    check = probe(host, port, key)
    if not check.reachable:
        raise UnavailableError(f"no atomr node is listening on {host}:{port} ({check.detail})")
    if check.accepted is False:
        raise AuthError(
            f"the node at {host}:{port} refused this client's cluster key: {check.detail}; use the node's key"
            " (Client(cluster_key_file=PATH) or $ATOMR_CLUSTER_KEY_FILE)"
        )
    return key


def connect_system(port: int, host: str = DEFAULT_BIND, cluster_key: ClusterKey | None = None) -> Any:
    """Connect to a running node's actor system as an external client.

    The node is first asked whether it accepts the cluster key (`check_node`).
    """
    key = check_node(host, port, cluster_key)
    configure_thespian(host, key)
    from thespian.actors import ActorSystem

    return ActorSystem(SYSTEM_BASE, {"Admin Port": port}, logDefs=thespian_log_defs(), transientUnique=True)


def disconnect_system(asys: Any) -> None:
    """Close a client's endpoint without stopping the system (`shutdown()` would stop the node)."""
    with contextlib.suppress(Exception):
        asys._systemBase.transport.close()


def descendants(pid: int | None = None) -> list[psutil.Process]:
    try:
        return psutil.Process(pid or os.getpid()).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def end_processes(procs: list[psutil.Process], grace: float = 3.0) -> list[int]:
    """Terminate, then kill, the given processes; returns the PIDs that had to be ended."""
    psutil.wait_procs([p for p in procs if not _alive(p)], timeout=0)  # reap our zombies
    alive = [p for p in procs if _alive(p)]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, still = psutil.wait_procs(alive, timeout=grace)
    for p in still:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(still, timeout=grace)
    return [p.pid for p in alive]


def processes_on_port(port: int) -> list[psutil.Process]:
    """Processes holding a listening socket on `port` (a system's admin or its logger)."""
    found = []
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(conn.pid))
    return found


def system_processes(port: int) -> list[psutil.Process]:
    """The admin listening on `port` and every process below it (its actors, its logger)."""
    found: dict[int, psutil.Process] = {}
    me = os.getpid()
    for holder in processes_on_port(port):
        top = holder
        with contextlib.suppress(psutil.Error):
            # Climb to the admin: the highest ancestor of the same program below init and us.
            while (parent := top.parent()) is not None and parent.pid not in (1, me) and parent.exe() == top.exe():
                top = parent
        found[top.pid] = top
        for child in descendants(top.pid):
            found[child.pid] = child
    found.pop(me, None)
    return list(found.values())


def stop_system(asys: Any, port: int, grace: float = 5.0, *, own_children: bool = True) -> list[int]:
    """Shut the system down; end by PID whatever is still running after `grace` seconds.

    Thespian's admin detaches from its starter, so its processes are found through the admin
    port (which every actor process inherits) rather than as children of this process.
    `own_children`: also end this process's own children still running (a node's; not those of
    a program that only uses a client's light member).
    """
    tree = system_processes(port)
    with contextlib.suppress(Exception):
        asys.shutdown()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    left = {p.pid: p for p in alive}
    mine = [c for c in descendants() if c.is_running()] if own_children else []
    for p in system_processes(port) + mine:
        left[p.pid] = p
    ended = end_processes(list(left.values()))
    reap_exited_children()
    return ended
