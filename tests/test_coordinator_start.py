"""A coordinator answers requests that reach it before its StartCoordinator.

When a coordinator dies, the manager starts another, sends it StartCoordinator and publishes its
route; a gateway that sees the route sends its requests straight to the new process, and they can
arrive before the manager's message (Thespian orders messages per sender only). Those requests
must be served once the coordinator starts, not lost.

The scenario runs in its own process (``main``), which starts a multiprocTCPBase system on a free
port, so this pytest process never owns an admin. A probe actor makes the order certain: it sends
the Submit first and StartCoordinator after it, from the one sender, and reports the events the
coordinator sent back.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

from thespian.actors import ActorAddress, ActorTypeDispatcher

from atomr.actors.coordinator import Coordinator
from atomr.actors.messages import Events, StartCoordinator, Submit, WorkItem
from atomr.cluster.system import free_port, start_system, stop_system
from atomr.core.deployment import Deployment
from atomr.core.types import InferenceRequest
from tests.conftest import REPO, node_env


class Probe(ActorTypeDispatcher):
    """ "go" -> makes a coordinator, sends it a Submit before its StartCoordinator, and answers the
    asker with the request ids and errors of the events that came back."""

    def receiveMsg_str(self, msg: str, sender: ActorAddress) -> None:
        self.asker = sender
        coordinator = self.createActor(Coordinator)
        dep = Deployment(name="d", model="m", runtime="ort")
        # deadline passed: the replica set answers it at admission, with no replica needed
        late = InferenceRequest(model="d", prompt="hi", request_id="early-1", deadline=time.time() - 1)
        self.send(coordinator, Submit([WorkItem(late, self.myAddress)]))
        self.send(coordinator, StartCoordinator(dep, self.myAddress, placements=[]))

    def receiveMsg_Events(self, msg: Events, sender: ActorAddress) -> None:
        self.send(self.asker, [(e.request_id, e.final, e.error and e.error.kind) for e in msg.events])

    def receiveUnrecognizedMessage(self, msg: Any, sender: ActorAddress) -> None:
        pass  # the coordinator's messages for its manager


def scenario() -> dict[str, Any]:
    port = free_port()
    asys = start_system(port)
    try:
        probe = asys.createActor(Probe)
        events = asys.ask(probe, "go", 30)
    finally:
        leftover = stop_system(asys, port)
    return {"events": events, "leftover": leftover}


def main() -> None:
    print(json.dumps(scenario()))


def test_a_submit_that_overtakes_start_coordinator_is_answered() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.test_coordinator_start import main; main()"],
        cwd=REPO,
        env=node_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["events"] == [["early-1", True, "timeout"]], proc.stderr
    assert result["leftover"] == []
