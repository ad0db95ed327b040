"""Signed frames on Thespian's TCP transport: the HMAC serializer that replaces pickle
(`SignedPickle`), the length header check made before a frame's body is read (`check_header`),
the rate-limited log of rejected frames, and `install`, which patches Thespian's transport (its
serializer, its pre-pickled ACK frames, its receive path) to sign and check every frame.

What is and is not covered is in ``atomr.cluster.auth``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import inspect
import os
import pickle
import threading
import time
from typing import Any

import structlog

from atomr.cluster.keys import ClusterKey, ClusterKeyError

MAX_FRAME_ENV = "ATOMR_MAX_FRAME_BYTES"
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
TAG_BYTES = 32  # HMAC-SHA256
MAX_HEADER_DIGITS = 20
WARN_WINDOW_S = 10.0
WARN_BURST = 20

log = structlog.get_logger("atomr.cluster_auth")


class FrameRejected(Exception):
    """An incoming frame failed the size or HMAC check (the message is the reason)."""


class FrameTooLarge(ValueError):
    """An outgoing message is larger than the frame limit its receiver enforces."""


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
        return unpickle_checked(body)


def unpickle_checked(body: bytes) -> Any:
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


# Pickled under the name it had before this module was split out of ``atomr.cluster.auth`` (which
# re-exports it), so that probes read the same on the wire in every process and every release.
KeyProbe.__module__ = "atomr.cluster.auth"


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
        if self._size is not None and self._blen == self._size and self._deserialize is not unpickle_checked:
            signer.check(self._buf)
            self._deserialize = unpickle_checked

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
