"""A light member of a cluster's convention, for a `Client` on a host that runs no node.

Thespian's external interface talks to an actor system admin on its own host. A process whose
cluster runs elsewhere therefore starts one admin of its own (`acquire`): a member of the head's
convention with the capability ``atomr.role: client`` and no node id, so the deployment manager
creates no node agent there and nothing is ever placed on it; it holds no GPU and serves no
HTTP. It binds the address this host reaches the head from, signs frames with the cluster key
like every node, and is shared by every `Client` of the process for that head: the last one to
close (`release`) stops it and ends, by PID, whatever it left.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Any

import psutil

from atomr.cluster.auth import ClusterKey
from atomr.cluster.system import free_port, start_system, stop_system
from atomr.core.errors import UnavailableError

CLIENT_ROLE = "client"
JOIN_TIMEOUT_S = 20.0


def local_address_towards(host: str, port: int) -> str:
    """This host's address on the route to `host` (what the head can reach us at)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))  # no packet is sent: the kernel picks the route and source
        return str(s.getsockname()[0])


def is_this_host(host: str) -> bool:
    """Whether `host` names this machine (loopback, or an address of one of its interfaces)."""
    try:
        addrs = {str(info[4][0]) for info in socket.getaddrinfo(host, None, socket.AF_INET)}
    except OSError:
        return False
    mine = {a.address for nics in psutil.net_if_addrs().values() for a in nics if a.family == socket.AF_INET}
    return all(a.startswith("127.") or a in mine for a in addrs)


@dataclass
class _Member:
    asys: Any
    port: int
    users: int


_lock = threading.Lock()
_members: dict[tuple[str, int], _Member] = {}


def acquire(head: str, head_port: int, key: ClusterKey) -> Any:
    """The light member joined to the head at `head`:`head_port` (started on first use)."""
    with _lock:
        member = _members.get((head, head_port))
        if member is None:
            member = _start(head, head_port, key)
            _members[(head, head_port)] = member
        member.users += 1
        return member.asys


def release(asys: Any) -> list[int]:
    """One user fewer; the last one stops the member. Returns PIDs that had to be ended."""
    with _lock:
        for where, member in list(_members.items()):
            if member.asys is asys:
                member.users -= 1
                if member.users > 0:
                    return []
                del _members[where]
                return _stop(member)
    return []


def _start(head: str, head_port: int, key: ClusterKey) -> _Member:
    try:
        local = local_address_towards(head, head_port)
    except OSError as exc:
        raise UnavailableError(f"no route to the head at {head}:{head_port}: {exc}") from None
    port = free_port(local)
    caps = {"atomr.role": CLIENT_ROLE, "atomr.host": local}
    asys = start_system(port, bind=local, capabilities=caps, join=(head, head_port), cluster_key=key)
    return _Member(asys, port, 0)


def _stop(member: _Member) -> list[int]:
    return stop_system(member.asys, member.port, own_children=False)
