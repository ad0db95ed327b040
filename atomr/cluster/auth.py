"""Authenticated frames on atomr's Thespian transport: a cluster key, checked before unpickling.

Thespian's TCP transport sends every message as one frame, ``<length>>`` followed by a pickle,
and unpickles whatever arrives on any of its sockets: whoever can reach a port of an actor system
(its admin, an actor, its logger, a client's endpoint) can run code there. This module is the one
place that closes that hole. Once installed in a process (``atomr.cluster.thespian_setup`` does it, before
the first actor system starts; the admin, logger and actor processes Thespian forks inherit it.
Thespian's default 'fork' start method is required: a 'spawn' child would start unpatched):

* every frame it sends carries an HMAC-SHA256 of the pickle, ahead of it, computed with a key
  derived from the cluster key; so do the transport's ACK frames, which Thespian pickles once at
  import and sends as prepared bytes (they are re-signed here, otherwise every send would be
  dropped as unacknowledged);
* every frame it receives is checked before anything is unpickled: the length header must be
  digits and at most ``ATOMR_MAX_FRAME_BYTES`` (default 64 MiB; checked before the body is read),
  and the HMAC must match. A frame that fails is dropped, its connection closed, and one warning
  ``cluster frame rejected`` is logged with the peer's address, the local port and the reason
  (at most ``WARN_BURST`` warnings per ``WARN_WINDOW_S`` per process; the next one counts those
  left out). An authenticated frame is unpickled as before: every holder of the key is trusted;
* an outgoing message larger than the limit raises ``FrameTooLarge`` in the sender (a peer would
  drop it).

The cluster key, in order of precedence: an explicit key or key file (``--cluster-key-file`` of
``python -m atomr.node``, the node config's ``node.cluster_key_file``, or
``Client(cluster_key_file=...)`` / ``Client(cluster_key=...)``); ``$ATOMR_CLUSTER_KEY_FILE``; the
key text in ``$ATOMR_CLUSTER_KEY`` (setting both variables is an error); and only for a loopback
address, a per-user default key file, ``$XDG_STATE_HOME/atomr/cluster.key`` (else
``~/.local/state/atomr/cluster.key``), created on first use with mode 0600 in a 0700 folder. A
process binding or connecting beyond loopback without a configured key refuses to start
(``ClusterKeyError`` names the option). The per-user default means that on a shared machine
another local user can neither talk to nor impersonate your node (a well-known loopback key would
let every local user run code as you), while your own nodes and clients find the key with no
set-up. A key file must not be readable or writable by other users, nor writable by its group
(like an SSH private key); its content (surrounding whitespace stripped) is the key, at least
``MIN_KEY_BYTES`` bytes; ``python -m atomr.cluster.auth new-key PATH`` writes a random one.
``python -m atomr.cluster.auth check HOST:PORT`` says whether a node accepts your key. A key's
``key_id`` (a hash prefix, safe to print) lets operators compare keys without showing them.

A process uses one cluster key at a time (it is a property of the process's transport): installing
another, e.g. a ``Client`` given a different key, switches the whole process.

Not covered: no encryption (anyone on the path reads the traffic: run clusters on a private
network or a VPN/WireGuard link), no replay protection (a captured frame can be sent again), and
Thespian's UDP transport (atomr uses TCP only). A joining node or a client first sends a
``KeyProbe`` frame (dropped by the receiver's transport after its ACK), so that a wrong key is
reported at once rather than as a silent wait.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import inspect
import ipaddress
import os
import pickle
import secrets
import socket
import stat
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from atomr.core.errors import ConfigError

KEY_FILE_ENV = "ATOMR_CLUSTER_KEY_FILE"
KEY_ENV = "ATOMR_CLUSTER_KEY"
MAX_FRAME_ENV = "ATOMR_MAX_FRAME_BYTES"
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
MIN_KEY_BYTES = 16
TAG_BYTES = 32  # HMAC-SHA256
MAX_HEADER_DIGITS = 20
WARN_WINDOW_S = 10.0
WARN_BURST = 20
_MAC_CONTEXT = b"atomr cluster frame v1"
_ID_CONTEXT = b"atomr cluster key id v1"
_KEY_OPTIONS = (
    f"pass --cluster-key-file PATH to python -m atomr.node (or node.cluster_key_file in its config), "
    f"Client(cluster_key_file=PATH), or set {KEY_FILE_ENV}; create a key with "
    f"`python -m atomr.cluster.auth new-key PATH` and give every node and client of the cluster the same one"
)

log = structlog.get_logger("atomr.cluster_auth")


class ClusterKeyError(ConfigError):
    """The cluster key is missing where one is required, or cannot be used (the message says why)."""


class FrameRejected(Exception):
    """An incoming frame failed the size or HMAC check (the message is the reason)."""


class FrameTooLarge(ValueError):
    """An outgoing message is larger than the frame limit its receiver enforces."""


@dataclass(frozen=True)
class ClusterKey:
    """A cluster key and where it came from (the secret never appears in repr or logs)."""

    secret: bytes = field(repr=False)
    source: str

    @property
    def key_id(self) -> str:
        """A short hash of the key, safe to print: equal ids mean equal keys."""
        return hmac.digest(self.secret, _ID_CONTEXT, "sha256").hex()[:12]

    @property
    def mac_key(self) -> bytes:
        return hmac.digest(self.secret, _MAC_CONTEXT, "sha256")


# --- the key ------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """True when `host` (an address or a name) means this machine's loopback interface only."""
    if host in ("", "0.0.0.0", "::"):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0])).is_loopback for i in infos)


def key_from_text(text: str | bytes, source: str) -> ClusterKey:
    """A key from its text (surrounding whitespace stripped); refuses keys that are too short."""
    secret = (text.encode() if isinstance(text, str) else bytes(text)).strip()
    if len(secret) < MIN_KEY_BYTES:
        raise ClusterKeyError(
            f"the cluster key from {source} is too short ({len(secret)} bytes; at least {MIN_KEY_BYTES}):"
            " create one with `python -m atomr.cluster.auth new-key PATH`",
            field="cluster_key",
        )
    return ClusterKey(secret, source)


def load_key_file(path: str | Path) -> ClusterKey:
    """Read a key file; refuses one that other users may read or write (or its group may write)."""
    p = Path(path).expanduser()
    try:
        st = p.stat()
        if not stat.S_ISREG(st.st_mode):
            raise ClusterKeyError(f"cluster key file {p} is not a regular file", field="cluster_key_file")
        if st.st_mode & 0o027:
            raise ClusterKeyError(
                f"cluster key file {p} is open to other users (mode {stat.S_IMODE(st.st_mode):04o});"
                f" run `chmod 600 {p}`",
                field="cluster_key_file",
            )
        data = p.read_bytes()
    except OSError as exc:
        raise ClusterKeyError(
            f"cannot read cluster key file {p}: {exc.strerror or exc}", field="cluster_key_file"
        ) from None
    return key_from_text(data, f"file {p}")


def new_key_file(path: str | Path) -> ClusterKey:
    """Write a new random key to `path` (mode 0600); refuses to replace an existing file."""
    p = Path(path).expanduser()
    text = secrets.token_hex(32) + "\n"
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return key_from_text(text, f"file {p}")


def default_key_path() -> Path:
    """The per-user default key file used on loopback when no key is configured."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "atomr" / "cluster.key"


def default_key() -> ClusterKey:
    """The per-user loopback key: created once (atomically, 0600), then read by every process."""
    path = default_key_path()
    if not path.exists():
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
            new_key_file(tmp)
            try:
                os.link(tmp, path)  # fails if another process created it first: use theirs
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        except OSError as exc:
            raise ClusterKeyError(
                f"cannot create the default cluster key file {path} ({exc.strerror or exc}); {_KEY_OPTIONS}",
                field="cluster_key_file",
            ) from None
    key = load_key_file(path)
    return ClusterKey(key.secret, f"default key file {path}")


def resolve_key(
    host: str = "127.0.0.1", *, key_file: str | Path | None = None, key: str | bytes | None = None
) -> ClusterKey:
    """The cluster key for a process that binds or connects to `host` (see the module docstring)."""
    if key_file and key:
        raise ClusterKeyError("give a cluster key or a cluster key file, not both", field="cluster_key")
    if key_file:
        return load_key_file(key_file)
    if key:
        return key_from_text(key, "the cluster_key argument")
    env_file, env_key = os.environ.get(KEY_FILE_ENV), os.environ.get(KEY_ENV)
    if env_file and env_key:
        raise ClusterKeyError(f"both {KEY_FILE_ENV} and {KEY_ENV} are set; set one", field="cluster_key")
    if env_file:
        return load_key_file(env_file)
    if env_key:
        return key_from_text(env_key, f"${KEY_ENV}")
    if not is_loopback(host):
        raise ClusterKeyError(
            f"a cluster key is required to listen on or connect to {host or 'every interface'}"
            f" (beyond loopback): {_KEY_OPTIONS}",
            field="cluster_key_file",
        )
    return default_key()


def max_frame_bytes() -> int:
    """The frame size limit, from ``$ATOMR_MAX_FRAME_BYTES`` (default 64 MiB)."""
    raw = os.environ.get(MAX_FRAME_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FRAME_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= TAG_BYTES:
        raise ClusterKeyError(f"{MAX_FRAME_ENV}={raw!r} is not a byte count above {TAG_BYTES}", field=MAX_FRAME_ENV)
    return value


# --- signing ------------------------------------------------------------------------------------


class SignedPickle:
    """Stands in for the ``pickle`` module as Thespian's TCP serializer: HMAC tag, then pickle."""

    def __init__(self, key: ClusterKey, limit: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        self.set_key(key, limit)

    def set_key(self, key: ClusterKey, limit: int | None = None) -> None:
        # HMAC (RFC 2104) with the padded key's hash states computed once: each tag then costs two
        # hash copies, about half of what hmac.digest() costs on a small frame.
        mac_key = key.mac_key.ljust(64, b"\0")  # 32 bytes: within SHA-256's 64-byte block
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in mac_key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in mac_key))
        self.key = key
        if limit is not None:
            self.limit = limit

    def tag(self, data: bytes | memoryview) -> bytes:
        """HMAC-SHA256 of `data` with the frame key (equal to ``hmac.digest(key.mac_key, data, "sha256")``)."""
        inner = self._inner.copy()
        inner.update(data)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def dumps(self, obj: Any) -> bytes:
        data = pickle.dumps(obj)
        if len(data) + TAG_BYTES > self.limit:
            raise FrameTooLarge(
                f"message of {len(data) + TAG_BYTES} bytes exceeds the {self.limit}-byte frame limit ({MAX_FRAME_ENV})"
            )
        return self.tag(data) + data

    def check(self, body: bytes) -> None:
        """Raise FrameRejected unless `body` (tag + pickle) carries this key's tag."""
        if len(body) <= TAG_BYTES:
            raise FrameRejected("frame too short to carry an HMAC")
        if not hmac.compare_digest(bytes(body[:TAG_BYTES]), self.tag(memoryview(body)[TAG_BYTES:])):
            raise FrameRejected("HMAC mismatch: the sender does not hold this cluster's key")

    def loads(self, body: bytes) -> Any:
        self.check(body)
        return _unpickle_checked(body)


def _unpickle_checked(body: bytes) -> Any:
    """Unpickle a frame body whose tag was already checked."""
    return pickle.loads(memoryview(body)[TAG_BYTES:])


def check_header(previous: bytes, more: bytes, limit: int) -> None:
    """Raise FrameRejected if the length header read so far (`previous` + `more`) is not acceptable."""
    head = bytes(previous) + bytes(more)
    pos = head.find(b">")
    digits = head if pos < 0 else head[:pos]
    if digits and not digits.isdigit():
        raise FrameRejected("not a frame: the length header is not a number")
    if pos < 0:
        if len(digits) > MAX_HEADER_DIGITS:
            raise FrameRejected(f"not a frame: no length header in the first {MAX_HEADER_DIGITS} bytes")
        return
    if not digits:
        raise FrameRejected("not a frame: empty length header")
    size = int(digits)
    if size > limit:
        raise FrameRejected(f"frame of {size} bytes exceeds the {limit}-byte limit ({MAX_FRAME_ENV})")
    if size <= TAG_BYTES:
        raise FrameRejected("frame too short to carry an HMAC")


class KeyProbe:
    """A message that only asks the receiving transport for its (signed) ACK; it is then dropped."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyProbe)

    def __hash__(self) -> int:
        return hash(KeyProbe)


# --- rejection log ------------------------------------------------------------------------------


class _WarnLimiter:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._lock = threading.Lock()
        self._window = 0.0
        self._count = 0
        self._left_out = 0

    def allow(self) -> tuple[bool, int]:
        """Whether to log this one, and how many were left out before it."""
        now = time.monotonic()
        with self._lock:
            if now - self._window >= WARN_WINDOW_S:
                self._window, self._count = now, 0
            if self._count >= WARN_BURST:
                self._left_out += 1
                return False, 0
            self._count += 1
            left_out, self._left_out = self._left_out, 0
            return True, left_out


_limiter = _WarnLimiter()
# Thespian forks the admin, logger and actors from threaded processes: a child starts with fresh locks.
os.register_at_fork(after_in_child=_limiter.reset)


def _endpoint(sock: Any, peer: bool) -> str:
    with contextlib.suppress(Exception):
        addr = sock.getpeername() if peer else sock.getsockname()
        return f"{addr[0]}:{addr[1]}" if peer else str(addr[1])
    return "?"


def warn_rejected(reason: str, sock: Any = None, peer: str | None = None) -> None:
    """Log one rejected frame (rate limited): who sent it, to which local port, and why."""
    allowed, left_out = _limiter.allow()
    if not allowed:
        return
    fields: dict[str, Any] = {
        "peer": peer or (_endpoint(sock, True) if sock is not None else "?"),
        "port": _endpoint(sock, False) if sock is not None else "?",
        "reason": reason,
        "pid": os.getpid(),
    }
    if left_out:
        fields["not_logged_before"] = left_out
    with contextlib.suppress(Exception):  # logging must never break the transport
        log.warning("cluster frame rejected", **fields)


# --- installing into Thespian -------------------------------------------------------------------

# sha256 (first 16 hex digits) of the source of each Thespian function the install wraps or relies
# on, as shipped in thespian 4.0.1. A different Thespian is refused (never left unauthenticated).
EXPECTED: dict[str, str] = {
    "ReceiveBuffer.addMore": "7a38dba2927429bd",
    "ReceiveBuffer.completed": "e68e0d4ba7880219",
    "TCPIncoming_Common.addData": "690c74337607daac",
    "TCPTransport.serializer": "edad38c6ae18f32d",
    "TCPTransport._check_XMIT_4_done": "61163ba5b1d07029",
    "TCPTransport._addedDataToIncoming": "7e2ca3a3f386e2be",
    "TCPTransport._processReceivedEnvelope": "f2d1ceb3d5f36c56",
}

_install_lock = threading.Lock()


def _fresh_install_lock() -> None:
    global _install_lock
    _install_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_install_lock)
_signer: SignedPickle | None = None


def _fingerprint(obj: object) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None


def _targets() -> dict[str, object]:
    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport import streamBuffer

    return {
        "ReceiveBuffer.addMore": streamBuffer.ReceiveBuffer.addMore,
        "ReceiveBuffer.completed": streamBuffer.ReceiveBuffer.completed,
        "TCPIncoming_Common.addData": tcp.TCPIncoming_Common.addData,
        "TCPTransport.serializer": tcp.TCPTransport.serializer,
        "TCPTransport._check_XMIT_4_done": tcp.TCPTransport._check_XMIT_4_done,
        "TCPTransport._addedDataToIncoming": tcp.TCPTransport._addedDataToIncoming,
        "TCPTransport._processReceivedEnvelope": tcp.TCPTransport._processReceivedEnvelope,
    }


def _set_acks(signer: SignedPickle) -> None:
    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport import streamBuffer

    for module in (streamBuffer, tcp):
        module.ackMsg = streamBuffer.toSendBuffer(streamBuffer.ackPacket, signer.dumps)
        module.ackDataErrMsg = streamBuffer.toSendBuffer(streamBuffer.ackDataErrPacket, signer.dumps)


def _patch(signer: SignedPickle) -> None:
    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport import streamBuffer

    stale = [name for name, obj in _targets().items() if _fingerprint(obj) != EXPECTED[name]]
    if stale or tcp.serializer is not pickle:
        raise RuntimeError(
            "atomr: this Thespian differs from the one atomr's authenticated transport was written for"
            f" ({', '.join(stale) or 'TCPTransport.serializer'}); refusing to run unauthenticated"
        )
    buffer_cls = streamBuffer.ReceiveBuffer
    original_add = buffer_cls.addMore

    def addMore(self: Any, buf: Any) -> None:
        # The length header is checked as it arrives (Thespian reads at most 20 bytes before it
        # knows the length), the HMAC once the body is complete: nothing reaches pickle unchecked.
        if self._size is None:
            check_header(self._buf, buf, signer.limit)
        original_add(self, buf)
        if self._size is not None and self._blen == self._size and self._deserialize is not _unpickle_checked:
            signer.check(self._buf)
            self._deserialize = _unpickle_checked

    buffer_cls.addMore = addMore

    incoming_cls = tcp.TCPIncoming_Common
    original_add_data = incoming_cls.addData

    def addData(self: Any, newData: Any) -> None:
        try:
            original_add_data(self, newData)
        except FrameRejected as exc:
            warn_rejected(str(exc), self.socket)
            raise  # Thespian closes the connection and drops what it read

    incoming_cls.addData = addData

    transport_cls = tcp.TCPTransport
    original_check_ack = transport_cls._check_XMIT_4_done
    original_process = transport_cls._processReceivedEnvelope

    def _check_XMIT_4_done(self: Any, intent: Any, rcv: Any) -> Any:
        # The reply read after a send (an ACK, or a message on a reused connection).
        try:
            return original_check_ack(self, intent, rcv)
        except FrameRejected as exc:
            warn_rejected(str(exc), getattr(intent, "socket", None), peer=str(intent.targetAddr))
            # What Thespian does with a corrupted ACK: back off and send again.
            intent.backoffPause(True)
            intent.stage = self._XMITStepRetry
            return self._nextTransmitStep(intent)

    def _processReceivedEnvelope(self: Any, envelope: Any, has_exclusive_flag: bool = False) -> Any:
        if isinstance(envelope.message, KeyProbe):
            return None  # already acknowledged: that was all the prober asked for
        return original_process(self, envelope, has_exclusive_flag=has_exclusive_flag)

    transport_cls._check_XMIT_4_done = _check_XMIT_4_done
    transport_cls._processReceivedEnvelope = _processReceivedEnvelope
    tcp.serializer = signer


def install(key: ClusterKey) -> None:
    """Authenticate this process's Thespian TCP frames with `key` (patches once, then switches key).

    Call before the first ActorSystem of the process starts; forked processes inherit it.
    """
    global _signer
    limit = max_frame_bytes()
    with _install_lock:
        if _signer is None:
            signer = SignedPickle(key, limit)
            _patch(signer)
            _signer = signer
        else:
            _signer.set_key(key, limit)
        _set_acks(_signer)


def active_key() -> ClusterKey | None:
    """The key this process's transport signs with (None before `install`)."""
    return _signer.key if _signer is not None else None


# --- probing a peer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerCheck:
    """What a peer said to a KeyProbe: accepted True/False, or None when it gave no verdict.

    `reachable` is False when no connection could be made at all.
    """

    accepted: bool | None
    detail: str
    reachable: bool = True


def probe(host: str, port: int, key: ClusterKey, timeout: float = 5.0) -> PeerCheck:
    """Ask the actor system at host:port whether it accepts `key` (one signed frame and its ACK)."""
    signer = SignedPickle(key)
    body = signer.dumps((None, KeyProbe()))
    frame = b"%d>" % len(body) + body
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return PeerCheck(None, f"cannot connect to {host}:{port}: {exc.strerror or exc}", reachable=False)
    refused = PeerCheck(
        False,
        f"{host}:{port} closed the connection without acknowledging: it holds a different cluster key"
        f" (this one: {key.source}, id {key.key_id})",
    )
    with sock:
        try:
            sock.sendall(frame)
            head = b""
            while b">" not in head:
                more = sock.recv(1)
                if not more:
                    return refused
                head += more
                if len(head) > MAX_HEADER_DIGITS + 1:
                    return PeerCheck(False, f"{host}:{port} answered with something that is not a frame")
            size = int(head[:-1]) if head[:-1].isdigit() else -1
            if not TAG_BYTES < size <= 4096:
                return PeerCheck(False, f"{host}:{port} answered with something that is not an ACK")
            reply = b""
            while len(reply) < size:
                more = sock.recv(size - len(reply))
                if not more:
                    return refused
                reply += more
        except TimeoutError:
            return PeerCheck(None, f"{host}:{port} did not answer within {timeout:g} s")
        except ConnectionError:
            return refused
        except OSError as exc:
            return PeerCheck(None, f"talking to {host}:{port} failed: {exc.strerror or exc}")
    try:
        signer.check(reply)
    except FrameRejected:
        return PeerCheck(False, f"{host}:{port} answered with a frame signed by a different cluster key")
    answer = _unpickle_checked(reply)
    if answer == "ACK":
        return PeerCheck(True, f"{host}:{port} accepts this cluster key (id {key.key_id})")
    return PeerCheck(False, f"{host}:{port} did not accept the probe ({answer!r})")


# --- command line -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m atomr.cluster.auth", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    new = sub.add_parser("new-key", help="write a new random cluster key to PATH (mode 0600)")
    new.add_argument("path")
    show = sub.add_parser("id", help="print the id of the key a process here would use")
    show.add_argument("--key-file", default=None)
    check = sub.add_parser("check", help="ask the node at HOST:PORT whether it accepts the key")
    check.add_argument("address", metavar="HOST:PORT")
    check.add_argument("--key-file", default=None)
    args = p.parse_args(argv)
    try:
        if args.cmd == "new-key":
            try:
                key = new_key_file(args.path)
            except FileExistsError:
                print(f"{args.path} exists; not replaced", file=sys.stderr)
                return 1
            print(f"wrote {args.path} (key id {key.key_id})")
            return 0
        if args.cmd == "id":
            key = resolve_key(key_file=args.key_file)
            print(f"{key.key_id} ({key.source})")
            return 0
        host, _, port = args.address.rpartition(":")
        key = resolve_key(host or "127.0.0.1", key_file=args.key_file)
        result = probe(host or "127.0.0.1", int(port), key)
        print(result.detail)
        return 0 if result.accepted else 1
    except ClusterKeyError as exc:
        print(exc.message, file=sys.stderr)
        return 2


if __name__ == "__main__":
    # Run the package's copy of this module: a KeyProbe must pickle as atomr.cluster.auth.KeyProbe.
    from atomr.cluster import auth

    sys.exit(auth.main())
