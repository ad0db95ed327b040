"""atomr's Thespian bug fixes (atomr/cluster/thespian_fixes.py) in a real actor system.

The scenario runs in its own process (``main``), which starts a multiprocTCPBase system on a free
port, so this pytest process never owns an admin. A parent actor starts children; the scenario
kills them with SIGKILL a few milliseconds apart, the way several runner hosts die when a node
goes down, and counts the ``ChildActorExited`` notices the parent receives.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

from thespian.actors import Actor, ActorAddress, ChildActorExited

from atomr.cluster.system import free_port, start_system, stop_system
from atomr.cluster.thespian_fixes import EXPECTED, apply_fixes, fixes_applied, mismatches
from tests.conftest import REPO, node_env

CHILDREN = 8
ROUNDS = 20


class Child(Actor):
    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if msg == "pid":
            self.send(sender, os.getpid())


class Parent(Actor):
    """("spawn", n) -> the n children's pids; "exits" -> how many exit notices so far."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exits = 0

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, tuple) and msg[0] == "spawn":
            self.client, self.expected, self.pids = sender, msg[1], []
            for _ in range(msg[1]):
                self.send(self.createActor(Child), "pid")
        elif isinstance(msg, int):
            self.pids.append(msg)
            if len(self.pids) == self.expected:
                self.send(self.client, list(self.pids))
        elif isinstance(msg, ChildActorExited):
            self.exits += 1
        elif msg == "exits":
            self.send(sender, self.exits)


def kill_rounds(rounds: int) -> dict[str, Any]:
    """Each round: start CHILDREN children, kill them a few ms apart, count the exit notices."""
    port = free_port()
    asys = start_system(port)
    reported: list[int] = []
    try:
        parent = asys.createActor(Parent)
        for _ in range(rounds):
            before = asys.ask(parent, "exits", 30)
            for pid in asys.ask(parent, ("spawn", CHILDREN), 60):
                os.kill(pid, signal.SIGKILL)
                time.sleep(random.uniform(0, 0.004))
            deadline = time.monotonic() + 3.0  # notices come within milliseconds; a lost one never
            while asys.ask(parent, "exits", 30) - before < CHILDREN and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)  # a duplicate notice would arrive now
            reported.append(asys.ask(parent, "exits", 30) - before)
    finally:
        leftover = stop_system(asys, port)
    return {"reported": reported, "applied": fixes_applied(), "leftover": leftover}


def main() -> None:
    print(json.dumps(kill_rounds(int(sys.argv[1]))))


def test_the_fixes_are_written_for_this_thespian() -> None:
    assert mismatches() == [], EXPECTED
    assert apply_fixes() and mismatches() == []  # Thespian's own code is what is checked, also once replaced


def test_children_killed_milliseconds_apart_are_each_reported_once() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.test_thespian_fixes import main; main()", str(ROUNDS)],
        capture_output=True,
        text=True,
        env=node_env(),
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["applied"] and result["leftover"] == []
    # Unfixed, 7 to 9 rounds in 20 lost at least one notice here (the parent never heard of that
    # child) and the system left processes behind; fixed, every child is reported exactly once.
    assert result["reported"] == [CHILDREN] * ROUNDS, result
