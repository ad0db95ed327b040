"""The process-wide Thespian settings: loopback binding and the short re-send period."""

from __future__ import annotations

from datetime import timedelta

import psutil

from atomr.cluster.system import system_processes
from atomr.cluster.thespian_setup import TRANSMIT_RETRY_S, configure_thespian
from tests.conftest import Node


def test_a_default_node_listens_on_loopback_only() -> None:
    node = Node()
    try:
        procs = system_processes(node.port)
        assert len(procs) >= 4  # admin, logger and the head's actors
        pids = {p.pid for p in procs}
        listening = [c for c in psutil.net_connections(kind="inet") if c.pid in pids and c.status == psutil.CONN_LISTEN]
        assert listening
        ips = {c.laddr.ip for c in listening if c.laddr}
        assert ips == {"127.0.0.1"}, ips
    finally:
        assert node.stop() == []


def test_unacknowledged_messages_are_resent_quickly() -> None:
    configure_thespian()
    from thespian.system.transport import TransmitIntent

    assert TransmitIntent.__init__.__defaults__[-1] == timedelta(seconds=TRANSMIT_RETRY_S)
