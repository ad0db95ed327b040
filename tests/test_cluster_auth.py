"""The authenticated cluster transport (atomr/cluster/auth.py) in real nodes and real processes.

A head node runs for the module with a cluster key file and the tiny model. Raw pickles (one would
create a file when unpickled), forged frames, oversized headers and garbage are sent to every port
its processes listen on (admin, logger, each actor): nothing is created, each is logged as
rejected, and the node keeps serving. A node or a client with another key is refused; one with the
right key joins. By default nothing listens beyond loopback, and binding beyond loopback without a
key is refused before anything starts.
"""

from __future__ import annotations

import hmac
import json
import os
import pickle
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from atomr.client import Client
from atomr.cluster import auth as ca
from atomr.cluster.system import end_processes, free_port, port_open, system_processes
from atomr.core.errors import AuthError, ConfigError
from tests.conftest import REPO, Node, node_env

KEY_VARS = (ca.KEY_FILE_ENV, ca.KEY_ENV)


class CreatesFile:
    """Unpickling this creates `path`: what an attacker would send to an unauthenticated port."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (self.path, "w")


def listening(procs: list[psutil.Process]) -> dict[int, set[tuple[str, int]]]:
    """pid -> the (ip, port) its TCP sockets listen on."""
    out: dict[int, set[tuple[str, int]]] = {}
    for p in procs:
        try:
            conns = p.net_connections(kind="inet")
        except psutil.Error:
            continue
        out[p.pid] = {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN and c.laddr}
    return out


def cluster_ports(node: Node) -> dict[int, str]:
    """Every port the node's actor system listens on: admin, logger, actor, or starter.

    "starter" is the endpoint of the node's own process (it started the system and talks to it as
    an outsider); the admin and every actor inherit that socket but only the starter accepts on it,
    while it waits for an answer from the system.
    """
    procs = system_processes(node.port)
    socks = {pid: {port for _, port in s} for pid, s in listening(procs).items()}
    starter = set().union(*listening([psutil.Process(node.proc.pid)]).values())
    starter_ports = {port for _, port in starter}
    admin = next(p for p in procs if p.ppid() not in socks)  # the top of the tree
    children = sorted((p for p in procs if p.ppid() == admin.pid), key=lambda p: (p.create_time(), p.pid))
    logger = children[0]  # the admin starts its logger before any actor
    named: dict[int, str] = {port: "starter" for port in starter_ports}
    named[node.port] = "admin"
    for port in socks[logger.pid] - {node.port} - starter_ports:
        named[port] = "logger"
    for p in children[1:]:
        for port in socks[p.pid] - starter_ports:
            named.setdefault(port, "actor")
    return named


def send_and_read(port: int, payload: bytes, timeout: float = 10.0) -> bytes | None:
    """Send `payload` on a new connection; what came back before the peer closed it (None: no
    answer within `timeout`)."""
    got = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(payload)
            while more := s.recv(4096):
                got += more
        except (ConnectionResetError, BrokenPipeError):
            pass
        except TimeoutError:
            return None
    return got


def rejections(output: str) -> list[dict[str, Any]]:
    found = []
    for line in output.splitlines():
        line = line.strip()
        if line.startswith("{") and "cluster frame rejected" in line:
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout:g} s"
        time.sleep(0.1)


def env_without_keys(**extra: str) -> dict[str, str]:
    env = node_env(**extra)
    for var in KEY_VARS:
        env.pop(var, None)
    return env


def run_module(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m <args>` with no cluster key in its environment, to its end."""
    return subprocess.run(
        [sys.executable, "-m", *args],
        env=env_without_keys(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def non_loopback_ipv4() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith("127."):
                return str(a.address)
    return None


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("keys")
    right, wrong = folder / "cluster.key", folder / "other.key"
    ca.new_key_file(right)
    ca.new_key_file(wrong)
    return right, wrong


@pytest.fixture(scope="module")
def head(keys: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    cfg = tmp_path_factory.mktemp("head") / "head.yaml"
    dep = {"name": "tiny", "model": "builtin:tiny-llama", "engine": {"intra_op_threads": 1}}
    cfg.write_text(yaml.safe_dump({"deployments": [dep]}))
    node = Node("--cluster-key-file", str(keys[0]), "--node-id", "head", config=cfg)
    yield node
    assert node.stop() == []


# --- the mechanism, in this process -------------------------------------------------------------


def test_frames_carry_an_hmac_checked_before_unpickling(tmp_path: Path) -> None:
    key = ca.key_from_text("k" * 32, "test")
    other = ca.key_from_text("o" * 32, "test")
    signer = ca.SignedPickle(key)
    for data in (b"", b"x" * 100, os.urandom(70000)):
        assert signer.tag(data) == hmac.digest(key.mac_key, data, "sha256")
    body = signer.dumps({"a": 1})
    assert signer.loads(body) == {"a": 1}
    marker = tmp_path / "created"
    evil = pickle.dumps(CreatesFile(marker))
    for bad in (evil, b"\0" * ca.TAG_BYTES + evil, ca.SignedPickle(other).dumps(CreatesFile(marker)), body[:-1]):
        with pytest.raises(ca.FrameRejected):
            signer.loads(bad)
    assert not marker.exists()
    pickle.loads(evil)  # the payload is real: unpickled unchecked, it creates the file
    assert marker.exists()
    with pytest.raises(ca.FrameTooLarge):
        ca.SignedPickle(key, limit=1000).dumps(b"x" * 1000)


@pytest.mark.parametrize(
    ("head_bytes", "why"),
    [
        (b"GET / HTTP/1.1", "not a number"),
        (b"99999999999>", "exceeds"),
        (b"1" * 25, "no length header"),
        (b">", "empty"),
        (b"-5>", "not a number"),
        (b"12>", "too short"),
    ],
)
def test_length_headers_are_checked_before_the_body_is_read(head_bytes: bytes, why: str) -> None:
    with pytest.raises(ca.FrameRejected, match=why):
        ca.check_header(b"", head_bytes, 64 * 1024 * 1024)
    ca.check_header(b"12", b"34>", 64 * 1024 * 1024)  # split headers are fine
    ca.check_header(b"", b"1234", 64 * 1024 * 1024)


def test_key_sources_and_their_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "k"
    key = ca.new_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ca.load_key_file(path) == key and key.secret.decode() not in repr(key)
    assert len(key.key_id) == 12 and key.key_id not in key.secret.decode()
    path.chmod(0o644)
    with pytest.raises(ca.ClusterKeyError, match="chmod 600"):
        ca.load_key_file(path)
    short = tmp_path / "short"
    short.write_text("abc")
    short.chmod(0o600)
    with pytest.raises(ca.ClusterKeyError, match="too short"):
        ca.load_key_file(short)
    with pytest.raises(ca.ClusterKeyError, match="cluster-key-file"):
        ca.resolve_key("0.0.0.0")
    with pytest.raises(ConfigError, match=ca.KEY_FILE_ENV):
        Client("192.0.2.77:1")  # beyond loopback with no key: refused before connecting
    monkeypatch.setenv(ca.KEY_ENV, "e" * 20)
    assert ca.resolve_key("0.0.0.0").source == f"${ca.KEY_ENV}"
    path.chmod(0o600)
    monkeypatch.setenv(ca.KEY_FILE_ENV, str(path))
    with pytest.raises(ca.ClusterKeyError, match="set one"):
        ca.resolve_key()
    monkeypatch.delenv(ca.KEY_ENV)
    assert ca.resolve_key("10.1.2.3") == key
    monkeypatch.delenv(ca.KEY_FILE_ENV)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    first = ca.resolve_key("127.0.0.1")
    assert first.secret == ca.resolve_key("localhost").secret  # created once, then reused
    assert stat.S_IMODE(ca.default_key_path().stat().st_mode) == 0o600
    assert stat.S_IMODE(ca.default_key_path().parent.stat().st_mode) == 0o700


def test_a_different_thespian_is_refused_not_left_unauthenticated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ca.EXPECTED, "ReceiveBuffer.addMore", "0" * 16)
    with pytest.raises(RuntimeError, match="refusing to run unauthenticated"):
        ca._patch(ca.SignedPickle(ca.key_from_text("k" * 32, "test")))


# --- 1. raw pickles and garbage on every port ---------------------------------------------------


def test_raw_pickles_and_garbage_on_every_cluster_port_run_nothing(head: Node, keys: tuple[Path, Path]) -> None:
    ports = cluster_ports(head)
    assert {"actor", "admin", "logger"} <= set(ports.values()), ports
    pids_before = {p.pid for p in system_processes(head.port)}
    logged_before = len(rejections(head.output()))
    created: list[Path] = []
    limit = ca.DEFAULT_MAX_FRAME_BYTES
    for port, role in ports.items():
        marker = Path(head.log_path).with_name(f"atomr-pwned-{head.port}-{port}")
        created.append(marker)
        raw = pickle.dumps((None, CreatesFile(marker)))
        attacks = {
            "framed raw pickle": b"%d>" % len(raw) + raw,
            "forged hmac": b"%d>" % (len(raw) + ca.TAG_BYTES) + os.urandom(ca.TAG_BYTES) + raw,
            "bare pickle": raw,
            "oversized header": b"%d>" % (limit + 1) + raw,
            "garbage": b"\x16\x03\x01" + os.urandom(3000),
        }
        for name, payload in attacks.items():
            # the starter accepts only while it waits on the system: its backlog is read later
            reply = send_and_read(port, payload, timeout=0.5 if role == "starter" else 10.0)
            assert reply in ((b"", None) if role == "starter" else (b"",)), (
                f"{role} port {port} answered {name}: {reply!r}"
            )
    time.sleep(1.0)
    assert not [m for m in created if m.exists()], "a raw pickle ran code"
    # every port logged its rejections (peer address, local port, reason) before unpickling anything
    served = {str(p) for p, role in ports.items() if role != "starter"}
    wait_until(
        lambda: served <= {r["port"] for r in rejections(head.output())[logged_before:]},
        20,
        "a rejection logged for every port",
    )
    logged = rejections(head.output())[logged_before:]
    assert all(r["peer"].startswith("127.0.0.1:") and r["level"] == "warning" for r in logged)
    reasons = " | ".join(r["reason"] for r in logged)
    for why in ("HMAC mismatch", "not a number", "exceeds the"):
        assert why in reasons, reasons
    # the node still serves, with the same processes
    assert pids_before <= {p.pid for p in system_processes(head.port)}
    with Client(head.address, cluster_key_file=keys[0]) as client:
        result = client.generate("tiny", prompt="The actor", max_tokens=4)
        assert result.usage.completion_tokens > 0
    assert not [m for m in created if m.exists()]


# --- 2. a wrong key cannot join; a client with a wrong key is refused ---------------------------


ROGUE = """
import sys
from atomr.cluster.auth import load_key_file
from atomr.cluster.system import start_system, stop_system
port, head_port, key_file = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
caps = {"atomr.role": "cpu", "atomr.node_id": "rogue", "atomr.gpus": "", "atomr.host": "127.0.0.1"}
asys = start_system(port, capabilities=caps, join=("127.0.0.1", head_port), cluster_key=load_key_file(key_file))
print("started", flush=True)
try:
    sys.stdin.read()
finally:
    stop_system(asys, port)
"""


def node_ids(head: Node, key_file: Path) -> set[str]:
    with Client(head.address, cluster_key_file=key_file) as client:
        return {n.node_id for n in client.status()["nodes"]}


def test_a_node_with_another_key_is_refused_and_one_with_the_key_joins(head: Node, keys: tuple[Path, Path]) -> None:
    right, wrong = keys
    # a node started with another key says it cannot join, and exits
    port = free_port()
    started = time.monotonic()
    run = run_module(
        [
            "atomr.node",
            "--role",
            "cpu",
            "--node-id",
            "wrong",
            "--port",
            str(port),
            "--join",
            head.address,
            "--cluster-key-file",
            str(wrong),
        ],
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert f"could not join {head.address}" in run.stderr and "different cluster key" in run.stderr
    assert time.monotonic() - started < 60
    assert not port_open("127.0.0.1", port)
    # a member that skips that check and registers anyway is never let in
    logged_before = len(rejections(head.output()))
    rogue_port = free_port()
    rogue = subprocess.Popen(
        [sys.executable, "-c", ROGUE, str(rogue_port), str(head.port), str(wrong)],
        env=env_without_keys(CONVENTION_REREGISTRATION_PERIOD="0:01"),
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert rogue.stdout is not None and rogue.stdout.readline().strip() == "started"
        rogue_pids = {p.pid for p in system_processes(rogue_port)}
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            assert "rogue" not in node_ids(head, right)
            time.sleep(1)
        rejected = rejections(head.output())[logged_before:]
        assert any(r["reason"].startswith("HMAC mismatch") for r in rejected), rejected
    finally:
        assert rogue.stdin is not None
        rogue.stdin.close()
        try:
            rogue.wait(30)
        except subprocess.TimeoutExpired:
            rogue.kill()
            rogue.wait(5)
        if rogue.stdout is not None:
            rogue.stdout.close()
        end_processes([p for pid in rogue_pids if (p := _process(pid)) is not None])
        end_processes(system_processes(rogue_port))
    # clients: another key (or this user's default key) is refused at once, the right one works
    for key_file in (wrong, None):
        started = time.monotonic()
        with pytest.raises(AuthError, match="refused this client's cluster key"):
            Client(head.address, cluster_key_file=key_file)
        assert time.monotonic() - started < 10
    # a node with the key joins
    good = Node("--role", "cpu", "--node-id", "good", "--join", head.address, "--cluster-key-file", str(right))
    try:
        wait_until(lambda: "good" in node_ids(head, right), 60, "the node with the right key joined")
    finally:
        assert good.stop() == []


def start_node(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "atomr.node", *args], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT
        )


def stop_node(proc: subprocess.Popen[bytes], port: int) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    end_processes(system_processes(port))


def test_a_node_that_started_before_its_head_exits_when_the_head_refuses_its_key(
    keys: tuple[Path, Path], tmp_path: Path
) -> None:
    right, wrong = keys
    head_port, member_port = free_port(), free_port()
    member_log, head_log = tmp_path / "member.log", tmp_path / "head.log"
    member = start_node(
        [
            "--role",
            "cpu",
            "--node-id",
            "early",
            "--port",
            str(member_port),
            "--join",
            f"127.0.0.1:{head_port}",
            "--cluster-key-file",
            str(wrong),
        ],
        member_log,
        env_without_keys(),
    )
    head = None
    try:
        wait_until(lambda: "\nready\n" in member_log.read_text(), 120, "the member started (its head not up yet)")
        head = start_node(["--port", str(head_port), "--cluster-key-file", str(right)], head_log, env_without_keys())
        wait_until(lambda: "\nready\n" in head_log.read_text(), 120, "the head started")
        assert member.wait(60) == 1
        out = member_log.read_text()
        assert f"could not join 127.0.0.1:{head_port}" in out and "different cluster key" in out, out
    finally:
        stop_node(member, member_port)
        if head is not None:
            stop_node(head, head_port)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None


# --- 3. nothing listens beyond loopback by default ----------------------------------------------


def test_a_default_node_listens_on_loopback_only(head: Node) -> None:
    node = Node()  # no --bind, no key: loopback with this user's default key
    try:
        for n in (node, head):
            procs = system_processes(n.port)
            assert len(procs) >= 4  # admin, logger, the head's actors
            socks = set().union(*listening(procs).values())
            assert socks and {ip for ip, _ in socks} == {"127.0.0.1"}, socks
            assert not [s for s in socks if s[0] in ("0.0.0.0", "::")]
        assert "default key file" in node.output()
    finally:
        assert node.stop() == []


def test_a_node_bound_to_a_cluster_interface_listens_there_only(keys: tuple[Path, Path]) -> None:
    ip = non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    node = Node("--bind", ip, "--cluster-key-file", str(keys[0]))
    try:
        socks = set().union(*listening(system_processes(node.port)).values())
        assert socks and {a for a, _ in socks} == {ip}, socks
        check = ca.probe(ip, node.port, ca.load_key_file(keys[0]))
        assert check.accepted is True, check.detail
        assert ca.probe(ip, node.port, ca.load_key_file(keys[1])).accepted is False
        for key_file, rc, says in ((keys[0], 0, "accepts this cluster key"), (keys[1], 1, "different cluster key")):
            run = run_module(["atomr.cluster.auth", "check", f"{ip}:{node.port}", "--key-file", str(key_file)], 60)
            assert run.returncode == rc and says in run.stdout, run.stdout + run.stderr
    finally:
        assert node.stop() == []


# --- 4. binding beyond loopback without a key is refused ----------------------------------------


def test_binding_beyond_loopback_without_a_key_is_refused() -> None:
    for address in ("0.0.0.0", non_loopback_ipv4() or "192.0.2.1"):
        port = free_port()
        run = run_module(["atomr.node", "--bind", address, "--port", str(port)], 120)
        assert run.returncode == 2, run.stdout + run.stderr
        assert "--cluster-key-file" in run.stderr and ca.KEY_FILE_ENV in run.stderr, run.stderr
        assert "ready" not in run.stdout
        assert not port_open("127.0.0.1", port) and not port_open(
            address if address != "0.0.0.0" else "127.0.0.1", port
        )
