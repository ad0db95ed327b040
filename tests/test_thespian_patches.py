"""atomr's Thespian transport patches (atomr/cluster/thespian_patches.py) in real actor systems.

Two multiprocTCPBase systems run for the module, each started by its own process on a free port:
one with the patches (``ATOMR_THESPIAN_PATCHES=1``), one without (``=0``). The checks run in
client processes with the switch set as each test needs, so that this pytest process never mixes
patched and unpatched Thespian code. The actors and the process entry points live in this module,
which every process imports under its own name.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
from thespian.actors import Actor, ActorAddress

from atomr.cluster.system import (
    connect_system,
    disconnect_system,
    end_processes,
    free_port,
    start_system,
    stop_system,
    system_processes,
)
from atomr.cluster.thespian_patches import ENV_VAR, PATCHES
from tests.conftest import REPO, node_env

ASK_TIMEOUT = 60.0

# --- messages and actors ------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    count: int
    report_to: ActorAddress


@dataclass(frozen=True)
class Blast:
    count: int
    sink: ActorAddress


@dataclass(frozen=True)
class Received:
    count: int
    in_order: bool


@dataclass(frozen=True)
class Requests:
    count: int
    outstanding: int
    echo: ActorAddress


@dataclass(frozen=True)
class Answered:
    count: int
    exactly_once: bool


@dataclass(frozen=True)
class Probe:
    port: int
    count: int
    max_period_s: float


@dataclass(frozen=True)
class Probed:
    seconds: float
    statuses: list[str]


class Sink(Actor):
    """Counts numbered messages; reports to whoever sent Expect once `count` arrived."""

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, Expect):
            self.expect, self.report_to, self.next, self.in_order = msg.count, msg.report_to, 0, True
        elif isinstance(msg, int):
            self.in_order = self.in_order and msg == self.next
            self.next += 1
            if self.next == self.expect:
                self.send(self.report_to, Received(self.next, self.in_order))


class Echo(Actor):
    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, int):
            self.send(sender, msg)


class Blaster(Actor):
    """Sends `count` numbered messages to a sink from one handler; answers with the sink's report."""

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, Blast):
            self.client = sender
            self.send(msg.sink, Expect(msg.count, self.myAddress))
            for i in range(msg.count):
                self.send(msg.sink, i)
        elif isinstance(msg, Received):
            self.send(self.client, msg)


class Requester(Actor):
    """Keeps `outstanding` requests in flight to an echo until `count` answers are back."""

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, Requests):
            self.client, self.echo, self.total, self.sent, self.answers = sender, msg.echo, msg.count, 0, []
            for _ in range(min(msg.outstanding, msg.count)):
                self._next()
        elif isinstance(msg, int):
            self.answers.append(msg)
            if self.sent < self.total:
                self._next()
            elif len(self.answers) == self.total:
                self.send(self.client, Answered(self.total, sorted(self.answers) == list(range(self.total))))

    def _next(self) -> None:
        self.send(self.echo, self.sent)
        self.sent += 1


class Prober(Actor):
    """Sends to an address through Thespian's own transmit path and reports how each send ended.

    ``Actor.send`` does not tell the sender about failures, so this uses the internal intent API
    (with per-intent callbacks and deadline) that ``send`` itself uses.
    """

    def receiveMessage(self, msg: Any, sender: ActorAddress) -> None:
        if isinstance(msg, Probe):
            from thespian.system.transport import TransmitIntent
            from thespian.system.transport.IPBase import TCPv4ActorAddress

            self.client, self.count = sender, msg.count
            self.statuses: list[str] = []
            self.started = time.monotonic()
            target = ActorAddress(TCPv4ActorAddress("127.0.0.1", msg.port, external=True))
            for i in range(msg.count):
                intent = TransmitIntent(
                    target, i, onSuccess=self._ended, onError=self._ended, maxPeriod=timedelta(seconds=msg.max_period_s)
                )
                self._myRef._send_intent(intent)

    def _ended(self, result: Any, intent: Any) -> None:
        self.statuses.append(str(result))
        if len(self.statuses) == self.count:
            self.send(self.client, Probed(time.monotonic() - self.started, self.statuses))


ACTORS: dict[str, type[Actor]] = {
    "sink": Sink,
    "echo": Echo,
    "blaster": Blaster,
    "requester": Requester,
    "prober": Prober,
}

# --- process entry points (python -c "from tests.test_thespian_patches import main; main()" ...) ---


def serve(port: int, ready_file: str) -> None:
    """Start a system on `port` with its actors; stop it when stdin closes."""
    from atomr.cluster.thespian_patches import applied_patches

    asys = start_system(port)
    try:
        for name, cls in ACTORS.items():
            asys.createActor(cls, globalName=name)
        Path(ready_file).write_text(json.dumps({"applied": list(applied_patches())}))
        sys.stdin.read()
    finally:
        stop_system(asys, port)


def actors(asys: Any) -> dict[str, ActorAddress]:
    return {name: asys.createActor(cls, globalName=name) for name, cls in ACTORS.items()}


def blast(asys: Any, blaster: ActorAddress, sink: ActorAddress, count: int) -> dict[str, Any]:
    started = time.monotonic()
    reply = asys.ask(blaster, Blast(count, sink), ASK_TIMEOUT)
    assert isinstance(reply, Received), reply
    return {"count": reply.count, "in_order": reply.in_order, "seconds": time.monotonic() - started}


def requests(asys: Any, requester: ActorAddress, echo: ActorAddress, count: int) -> dict[str, Any]:
    reply = asys.ask(requester, Requests(count, 100, echo), ASK_TIMEOUT)
    assert isinstance(reply, Answered), reply
    return {"count": reply.count, "exactly_once": reply.exactly_once}


def client_outstanding(asys: Any, echo: ActorAddress, count: int) -> list[int]:
    """This client process keeps `count` requests outstanding to an echo, then collects them."""
    for i in range(count):
        asys.tell(echo, i)
    answers: list[int] = []
    deadline = time.monotonic() + ASK_TIMEOUT
    while len(answers) < count and time.monotonic() < deadline:
        msg = asys.listen(timedelta(seconds=5))
        if isinstance(msg, int):
            answers.append(msg)
    return sorted(answers)


def scenario(name: str, ports: list[int]) -> dict[str, Any]:
    """One check, run by a client process against the systems on `ports`."""
    from atomr.cluster.thespian_patches import applied_patches

    systems = [connect_system(p) for p in ports]
    try:
        addrs = [actors(s) for s in systems]
        out: dict[str, Any] = {"client_applied": list(applied_patches())}
        first_sys = systems[0]
        if name == "blast":
            out["blast"] = blast(first_sys, addrs[0]["blaster"], addrs[0]["sink"], 5000)
        elif name == "outstanding":
            out["actors"] = requests(first_sys, addrs[0]["requester"], addrs[0]["echo"], 1000)
            out["client"] = client_outstanding(first_sys, addrs[0]["echo"], 100)
        elif name == "dead":
            with socket.create_server(("127.0.0.1", 0), backlog=128) as hole:  # accepts, never answers
                out["blackhole"] = ask_probe(first_sys, addrs[0]["prober"], hole.getsockname()[1], 60, 2.0)
            out["refused"] = ask_probe(first_sys, addrs[0]["prober"], free_port(), 60, 30.0)
        elif name == "interop":
            first, second = addrs
            out["first_to_second"] = blast(first_sys, first["blaster"], second["sink"], 1500)
            out["second_to_first"] = blast(systems[1], second["blaster"], first["sink"], 1500)
            out["second_asks_first"] = requests(systems[1], second["requester"], first["echo"], 500)
            out["client"] = client_outstanding(first_sys, first["echo"], 100)
        else:
            raise ValueError(name)
        return out
    finally:
        for s in systems:
            disconnect_system(s)


def ask_probe(asys: Any, prober: ActorAddress, port: int, count: int, max_period_s: float) -> dict[str, Any]:
    reply = asys.ask(prober, Probe(port, count, max_period_s), ASK_TIMEOUT)
    assert isinstance(reply, Probed), reply
    return {"seconds": reply.seconds, "statuses": reply.statuses}


def switch_state() -> dict[str, Any]:
    """Which Thespian functions are atomr's after the normal setup, and what was skipped."""
    import selectors
    import warnings

    from atomr.cluster import thespian_patches as tp

    if len(sys.argv) > 2:  # pretend one function differs from the one its patch was written for
        tp.EXPECTED[sys.argv[2]] = "0" * 16
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from atomr.cluster.thespian_setup import configure_thespian

        configure_thespian()
    from thespian.system import systemCommon
    from thespian.system.transport import ReceiveEnvelope, TransmitIntent
    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport.asyncTransportBase import asyncTransportBase

    return {
        "applied": list(tp.applied_patches()),
        "patched": {
            "expiry": tp.is_patched(asyncTransportBase._complete_expired_intents),
            "read": tp.is_patched(tcp.TCPTransport._handleReadableIncoming),
            "lazy": tp.is_patched(TransmitIntent.identify) and tp.is_patched(ReceiveEnvelope.identify),
            "poll": tcp.selectors is not selectors,
            "throttle": systemCommon.RATE_THROTTLE != tp.THESPIAN_RATE_THROTTLE,
        },
        # the code each patch replaces is Thespian's own (the source it was written for)
        "original": {name: not tp.mismatches(name) for name in tp.PATCHES},
        "warnings": [str(w.message) for w in caught],
    }


def main() -> None:
    role = sys.argv[1]
    if role == "serve":
        serve(int(sys.argv[2]), sys.argv[3])
    elif role == "scenario":
        result = scenario(sys.argv[2], [int(p) for p in sys.argv[3].split(",")])
        print(json.dumps(result))
    elif role == "switch":
        print(json.dumps(switch_state()))


# --- test side ----------------------------------------------------------------------------------

ENTRY = [sys.executable, "-c", "from tests.test_thespian_patches import main; main()"]


def run_role(patches: str, *args: str, timeout: float = 90.0) -> dict[str, Any]:
    """Run one client process with the switch at `patches`; its JSON answer (last stdout line)."""
    proc = subprocess.Popen(
        [*ENTRY, *args],
        env=node_env(**{ENV_VAR: patches}),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            end_processes([psutil.Process(proc.pid)])
    assert proc.returncode == 0, err[-3000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


@dataclass
class Served:
    port: int
    proc: subprocess.Popen[bytes]
    applied: list[str]


def start_served(patches: str, tmp: Path) -> Served:
    port = free_port()
    ready = tmp / f"ready-{port}.json"
    log = open(tmp / f"serve-{port}.log", "wb")  # not a pipe: Thespian's admin inherits it
    proc = subprocess.Popen(
        [*ENTRY, "serve", str(port), str(ready)],
        env=node_env(**{ENV_VAR: patches}),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    served = Served(port, proc, [])
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_served(served)
            raise RuntimeError((tmp / f"serve-{port}.log").read_text(errors="replace")[-3000:])
        time.sleep(0.05)
    time.sleep(0.05)  # the ready file is written in one call; let it land
    served.applied = json.loads(ready.read_text())["applied"]
    return served


def stop_served(served: Served) -> list[int]:
    """Close the serve process's stdin (it stops its system); end by PID whatever is left."""
    tree = system_processes(served.port)
    try:
        if served.proc.stdin:
            served.proc.stdin.close()
        served.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        pass
    finally:
        left = [p for p in tree if p.is_running()] + system_processes(served.port)
        if served.proc.poll() is None:
            left.append(psutil.Process(served.proc.pid))
        ended = end_processes(left)
    return ended


@pytest.fixture(scope="module")
def systems(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Served]]:
    tmp = tmp_path_factory.mktemp("thespian_patches")
    started: list[Served] = []
    try:
        started.append(start_served("1", tmp))
        started.append(start_served("0", tmp))
        patched, unpatched = started
        assert patched.applied == list(PATCHES)
        assert unpatched.applied == []
        yield patched, unpatched
    finally:
        leftovers = [pid for s in started for pid in stop_served(s)]
        assert leftovers == [], f"processes that had to be ended: {leftovers}"


def test_a_blast_arrives_complete_and_in_order(systems: tuple[Served, Served]) -> None:
    patched, _ = systems
    result = run_role("1", "scenario", "blast", str(patched.port))
    assert result["client_applied"] == list(PATCHES)
    assert result["blast"]["count"] == 5000
    assert result["blast"]["in_order"]


def test_100_outstanding_requests_lose_nothing(systems: tuple[Served, Served]) -> None:
    patched, _ = systems
    result = run_role("1", "scenario", "outstanding", str(patched.port))
    assert result["actors"] == {"count": 1000, "exactly_once": True}
    assert result["client"] == list(range(100))


def test_sends_to_dead_or_silent_addresses_still_end_in_bounded_time(systems: tuple[Served, Served]) -> None:
    patched, _ = systems
    result = run_role("1", "scenario", "dead", str(patched.port))
    # A peer that accepts but never acknowledges: 20 sends are in flight, 40 wait in the queue the
    # expiry patch scans; every one fails once its 2 s deadline passes, none before.
    hole = result["blackhole"]
    assert len(hole["statuses"]) == 60
    assert not any(s.startswith("+") for s in hole["statuses"]), hole
    assert 1.8 <= hole["seconds"] <= 6.0, hole
    # A closed port: refused at once, long before the 30 s deadline.
    refused = result["refused"]
    assert len(refused["statuses"]) == 60
    assert not any(s.startswith("+") for s in refused["statuses"]), refused
    assert refused["seconds"] <= 10.0, refused


def test_patched_and_unpatched_processes_interoperate(systems: tuple[Served, Served]) -> None:
    patched, unpatched = systems
    # an unpatched client talks to both; actors of each system send to the other's
    result = run_role("0", "scenario", "interop", f"{patched.port},{unpatched.port}")
    assert result["client_applied"] == []
    for direction in ("first_to_second", "second_to_first"):
        assert result[direction]["count"] == 1500, direction
        assert result[direction]["in_order"], direction
    assert result["second_asks_first"] == {"count": 500, "exactly_once": True}
    assert result["client"] == list(range(100))


def test_the_switch_switches() -> None:
    on = run_role("1", "switch")
    assert on["applied"] == list(PATCHES)
    assert all(on["patched"].values()), on
    assert not any(on["original"].values()), on
    off = run_role("0", "switch")
    assert off["applied"] == []
    assert not any(off["patched"].values()), off
    assert all(off["original"].values()), off
    some = run_role("expiry,lazy", "switch")
    assert some["applied"] == ["expiry", "lazy"]
    assert [k for k, v in some["patched"].items() if v] == ["expiry", "lazy"]
    assert [k for k, v in some["original"].items() if not v] == ["expiry", "lazy"]


def test_a_patch_whose_target_changed_skips_itself_with_a_warning() -> None:
    state = run_role("1", "switch", "TCPTransport._handleReadableIncoming")
    assert state["applied"] == [p for p in PATCHES if p != "read"]
    assert not state["patched"]["read"]
    assert any("'read' skipped" in w and "TCPTransport._handleReadableIncoming" in w for w in state["warnings"])


def test_the_poll_selector_reports_like_epoll_merges_repeats_and_refuses_closed_descriptors() -> None:
    import os
    import selectors

    from atomr.cluster.thespian_patches import OneShotPollSelector

    a, b = socket.socketpair()
    try:
        sel = OneShotPollSelector()
        sel.register(a.fileno(), selectors.EVENT_READ)
        sel.register(b, selectors.EVENT_WRITE)
        assert [(k.fd, ev) for k, ev in sel.select(0)] == [(b.fileno(), selectors.EVENT_WRITE)]
        b.send(b"x")
        assert {(k.fd, ev) for k, ev in sel.select(1.0)} == {
            (a.fileno(), selectors.EVENT_READ),
            (b.fileno(), selectors.EVENT_WRITE),
        }
        # registered again for writing (Thespian may list a socket for both): watched for both
        sel.register(a.fileno(), selectors.EVENT_WRITE)
        assert {(k.fd, ev) for k, ev in sel.select(1.0)} == {
            (a.fileno(), selectors.EVENT_READ | selectors.EVENT_WRITE),
            (b.fileno(), selectors.EVENT_WRITE),
        }
        sel.close()
        # Thespian finds a bad watched descriptor by the EBADF epoll raised; poll must raise it too.
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        bad = OneShotPollSelector()
        bad.register(r, selectors.EVENT_READ)
        with pytest.raises(OSError) as err:
            bad.select(0)
        assert err.value.errno == errno.EBADF
    finally:
        a.close()
        b.close()


def test_lazy_debug_text_is_formatted_only_when_used_and_pickles_as_text() -> None:
    import pickle

    from atomr.cluster.thespian_patches import LazyText

    calls: list[object] = []

    def make(obj: object) -> str:
        calls.append(obj)
        return f"identify({obj})"

    text = LazyText(make, 7)
    assert calls == []
    assert "got %s" % text == "got identify(7)"  # noqa: UP031 (thesplog formats with %)
    assert pickle.loads(pickle.dumps(text)) == "identify(7)"
