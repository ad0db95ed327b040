"""Nodes on real addresses: hosts made of network namespaces, for the tests that need several hosts.

`Hosts(["head", "gpu", ...])` makes one network namespace per host, each with its own address on
one /24 (a veth pair from each host to a bridge in a hub namespace; loopback up in each), and
removes them all on `close()`. Every node of the test runs in its host's namespace, binds that
address and uses the cluster key (required beyond loopback); traffic goes only to those
namespaces' own addresses. `run` executes a command (a client scenario) in a host's namespace.

Namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN): where they cannot be made, `Hosts`
skips the test with the reason. Names are short and unique per test run (interface names are
limited to 15 characters).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from atomr.cluster.keys import new_key_file
from atomr.cluster.system import end_processes
from tests.conftest import REPO, Node, node_env


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


class Hosts:
    """One network namespace per named host, joined by a bridge; see the module docstring."""

    def __init__(self, names: Sequence[str], folder: Path) -> None:
        self.tag = f"a{os.getpid() % 10000}{random.randrange(100, 999)}"
        self.names = list(names)
        self.net = f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}"
        self.hub = f"{self.tag}h"
        self.made: list[str] = []
        self.nodes: list[Node] = []
        self.key_file = folder / "cluster.key"
        if os.geteuid() != 0:
            pytest.skip("network namespaces need root")
        try:
            self._make()
        except (OSError, subprocess.CalledProcessError) as exc:
            self.close()
            detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) else str(exc)
            pytest.skip(f"network namespaces cannot be made here: {detail}")
        new_key_file(self.key_file)

    def _make(self) -> None:
        _ip("netns", "add", self.hub)
        self.made.append(self.hub)
        # entering a namespace needs more than making one (mounts): check it before relying on it
        subprocess.run(
            ["ip", "netns", "exec", self.hub, "true"], check=True, capture_output=True, text=True, timeout=30
        )
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, name in enumerate(self.names, start=1):
            ns = self.ns(name)
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
            inside, outside = f"{self.tag}i{i}", f"{self.tag}o{i}"
            _ip("link", "add", inside, "netns", ns, "type", "veth", "peer", "name", outside, "netns", self.hub)
            _ip("-n", ns, "addr", "add", f"{self.addr(name)}/24", "dev", inside)
            _ip("-n", ns, "link", "set", inside, "up")
            _ip("-n", self.hub, "link", "set", outside, "master", "br0")
            _ip("-n", self.hub, "link", "set", outside, "up")

    def cut(self, name: str) -> None:
        """Cut host `name` off the others (its link to the bridge down): a network partition."""
        _ip("-n", self.hub, "link", "set", f"{self.tag}o{self.names.index(name) + 1}", "down")

    def heal(self, name: str) -> None:
        _ip("-n", self.hub, "link", "set", f"{self.tag}o{self.names.index(name) + 1}", "up")

    def ns(self, name: str) -> str:
        return f"{self.tag}{self.names.index(name)}"

    def addr(self, name: str) -> str:
        return f"{self.net}.{self.names.index(name) + 1}"

    def processes(self, name: str) -> list[psutil.Process]:
        """Every process in host `name`'s namespace (one node runs there, and a test's client)."""
        return self._ns_processes(self.ns(name))

    @staticmethod
    def _ns_processes(ns: str) -> list[psutil.Process]:
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30).stdout
        found = []
        for pid in out.split():
            try:
                found.append(psutil.Process(int(pid)))
            except psutil.Error:
                continue
        return found

    def prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns(name)]

    def node(self, name: str, *args: str, port: int = 19500, bind: str | None = None, **kwargs: Any) -> Node:
        """A node in host `name`'s namespace, bound to its address (or to `bind`, e.g. 0.0.0.0,
        advertising its address), with the cluster key; its node id is the host's name
        (namespaces share the machine's hostname)."""
        where = ["--bind", self.addr(name)] if bind is None else ["--bind", bind, "--advertise", self.addr(name)]
        node = Node(
            *args,
            "--node-id",
            name,
            *where,
            "--cluster-key-file",
            str(self.key_file),
            port=port,
            prefix=self.prefix(name),
            host=self.addr(name),
            finder=lambda: self.processes(name),
            **kwargs,
        )
        self.nodes.append(node)
        return node

    def run(
        self, name: str, argv: Sequence[str], timeout: float = 120.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """`python argv...` in host `name`'s namespace (a test's client scenario), to its end."""
        return subprocess.run(
            [*self.prefix(name), sys.executable, *argv],
            cwd=REPO,
            env=node_env(ATOMR_CLUSTER_KEY_FILE=str(self.key_file), **dict(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def close(self) -> list[int]:
        """Stop every node, end what they left, remove the namespaces; the PIDs ended by force."""
        left: list[int] = []
        for node in self.nodes:
            left += node.stop()
        self.nodes.clear()
        for ns in reversed(self.made):
            left += end_processes(self._ns_processes(ns))
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.made.clear()
        return left
