"""Local speed patches for Thespian's TCP transport; nothing on the wire changes.

Thespian 4.0.1 spends most of a busy actor's CPU on bookkeeping around each message rather than
on moving it. These patches remove that overhead inside one process. Frames, ACKs, addresses and
pickles stay as they were, so a patched process talks to unpatched ones (other nodes, clients,
convention members) as before. They are applied once per process, before the first ActorSystem
starts (``atomr.cluster.thespian_setup.configure_thespian``); the admin and every actor it forks inherit
them. ``ATOMR_THESPIAN_PATCHES=0`` turns them all off (default: all on); a comma-separated list
of names (``expiry,read``) applies only those.

Each patch first checks that the Thespian code it replaces or relies on is the code it was written
for (a hash of that code's source, see ``EXPECTED``); otherwise it skips itself with a
RuntimeWarning, so a different Thespian version is never patched blindly.

``expiry``
    ``asyncTransportBase._complete_expired_intents`` rescans the whole queue of waiting transmits
    (up to ~1,000 intents, building a new deque and a timer view for each) on every send and every
    completion, which makes a blast O(n^2). The patch remembers the earliest deadline among the
    queued intents (updated when one is queued, recomputed after each scan) and scans only once it
    has passed. Expired intents therefore fail, and their failure callbacks fire, on the same call
    as before; only the scans that could find nothing are skipped.
``read``
    ``TCPTransport._handleReadableIncoming`` reads one piece of a frame per select loop: the first
    read takes at most 20 bytes (the length header), the rest waits for the next loop, so every
    incoming message costs at least two full select loops. The patch keeps reading while the
    socket stays readable (a zero-timeout poll), at most ``MAX_READS_PER_WAKE`` reads per wake so
    one busy peer cannot starve the others.
``lazy``
    ``TransmitIntent.identify()`` and ``ReceiveEnvelope.identify()`` format the whole message and
    several timers into a debug string, and Thespian calls them for DEBUG log lines on every send
    and every receive whether or not DEBUG is enabled. The patch returns an object that formats
    the same string only if a log line is actually written.
``poll``
    ``TCPTransport._runWithExpiry`` builds a new epoll selector on every loop (epoll_create, one
    epoll_ctl per socket, epoll_wait, close). The patch gives it a one-shot ``poll(2)`` selector:
    one system call per loop, same events; a closed descriptor raises EBADF as epoll did, so
    Thespian's bad-descriptor handling still works.
``throttle``
    Every send passes ``systemCommon``'s RateThrottle, sized for a 100 Mb/s link (2 KiB messages
    at 70 %: 4,480 msg/s). After 3,136 sends it starts measuring; while the average since then,
    over at least a second, is above 4,480/s, every send sleeps 0.1 s. It is a fixed rate cap,
    not back-pressure: the flow control that reacts to a slow receiver (20 transmits in flight,
    drain at 950 queued, drop at 1,050) lives in ``asyncTransportBase`` and is left alone. The
    patch sizes the same throttle for a 10 Gb/s link (448,000 msg/s), far above what one Python
    actor can send, so it stays only as a guard against a runaway loop.

Measured here (thespian 4.0.1, Python 3.11, 2 cores shared with other jobs: load 2-5, so absolute
rates ran 3-5x below a quiet machine's; the ratios held better). ``scripts/bench/thespian_transport.py``,
actor to actor in one system, medians of 5 interleaved rounds, CPU = all the system's processes:

=============================  ==================  ==================  ==================
                               blast of 5,000      1 outstanding       100 outstanding
=============================  ==================  ==================  ==================
unpatched                      136 msg/s           396 round trips/s   184 req/s
all patches                    607 msg/s (4.5x)    492 /s (1.24x)      201 /s (1.09x)
CPU per op, unpatched          3,266 us            1,220 us            2,656 us
CPU per op, all patches        780 us (4.2x less)  940 us (1.3x less)  2,254 us (1.2x less)
=============================  ==================  ==================  ==================

Two other runs the same day gave 4.8x and 5.1x, 1.24x and 1.58x, 1.37x and 1.10x. What each
patch saves, counted as Python function calls per operation in the three actor processes
(``--calls``: identical in every round, whatever the load; it does not see time spent in system
calls), each row adding one patch:

=================  ================  ================  ================
patches            blast of 3,000    1 outstanding     100 outstanding
=================  ================  ================  ================
none               31,083            3,091             8,688
+ expiry           3,070 (10.1x)     3,085 (1.00x)     7,141 (1.22x)
+ read             2,877 (10.8x)     2,672 (1.16x)     7,140 (1.22x)
+ lazy             2,781 (11.2x)     2,482 (1.25x)     6,950 (1.25x)
+ poll             2,760 (11.3x)     2,438 (1.27x)     6,895 (1.26x)
+ throttle         2,760 (11.3x)     2,431 (1.27x)     6,887 (1.26x)
=================  ================  ================  ================

``poll`` mainly saves system calls: one select loop over 3 / 10 / 24 sockets took 13.6 / 35.1 /
52.0 us with a fresh epoll selector, 5.5 / 13.5 / 24.6 us with poll (best of 15 x 2,000).
``lazy``: ``TransmitIntent.identify()`` costs 16-20 us (a small int, a 2 KB dict) and ran twice per
send; the lazy object costs 0.2 us. ``throttle`` changes nothing at these rates (under 4,480/s);
offered 10,000 msg/s for 4 s, Thespian's throttle let 4,800/s through, the patched one 9,990/s.
The blast gain is mostly ``expiry``: without it each send rescans the queue of ~1,000 waiting
intents. What is left per message is mostly the sender's TCP loop: about three select loops per
message, each going over every in-flight intent (``TransmitIntent.delay()``). A further local patch
could make that pass cheaper; shipping several messages per frame (a wire change, not done here)
removes loops altogether.
"""

from __future__ import annotations

import errno
import hashlib
import inspect
import math
import os
import select
import selectors
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

ENV_VAR = "ATOMR_THESPIAN_PATCHES"
PATCHES = ("expiry", "read", "lazy", "poll", "throttle")
MAX_READS_PER_WAKE = 8
_OFF = {"0", "off", "false", "no", "none"}
_ON = {"", "1", "on", "true", "yes", "all"}

# sha256 (first 16 hex digits) of the source of each Thespian function a patch replaces or relies
# on, as shipped in thespian 4.0.1.
EXPECTED: dict[str, str] = {
    "asyncTransportBase._complete_expired_intents": "0c508de127a79a4f",
    "asyncTransportBase._qtx": "e7a4529d48bffb79",
    "asyncTransportBase._runQueued": "716bf22ec01c320f",
    "asyncTransportBase._drain_tx_queue_if_needed": "100d3ef82aef4bff",
    "TransmitIntent.expired": "b24ff774f0b8b2f4",
    "TransmitIntent.expiration": "e2726eb4edc4f8e5",
    "TCPTransport._handleReadableIncoming": "7e38436b43ee8783",
    "TCPTransport._addedDataToIncoming": "7e2ca3a3f386e2be",
    "TransmitIntent.identify": "373a684bcc2b967c",
    "TransmitIntent.__str__": "567063addd864eab",
    "ReceiveEnvelope.identify": "aae2a5250024f877",
    "ReceiveEnvelope.__str__": "96acb7f5855cac01",
    "TCPTransport._runWithExpiry": "5a6c512c48e9fd0a",
    "TCPTransport._check_fd": "fb16f5f8733983b1",
    "systemCommonBase.__init__": "ad542f53e61eefbc",
    "systemCommonBase._send_intent": "c2bfa761bf6d20d7",
    "RateThrottle.eventRatePause": "014d6d856d076eba",
}
THESPIAN_RATE_THROTTLE = 4480  # systemCommon.RATE_THROTTLE in 4.0.1
PATCHED_RATE_THROTTLE = THESPIAN_RATE_THROTTLE * 100  # the same formula for a 10 Gb/s link

_lock = threading.Lock()
_applied: list[str] = []


def fingerprint(obj: object) -> str | None:
    """Hash of an object's source code, or None where the source cannot be read."""
    try:
        source = inspect.getsource(obj)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def _mark(func: Callable[..., Any], name: str) -> Callable[..., Any]:
    func.__atomr_patch__ = name  # type: ignore[attr-defined]
    return func


def is_patched(func: object) -> bool:
    """True for a function installed by one of these patches."""
    return hasattr(func, "__atomr_patch__")


# --- expiry -------------------------------------------------------------------------------------


def _expiry_targets() -> dict[str, object]:
    from thespian.system.transport import TransmitIntent
    from thespian.system.transport.asyncTransportBase import asyncTransportBase as base

    return {
        "asyncTransportBase._complete_expired_intents": base._complete_expired_intents,
        "asyncTransportBase._qtx": base._qtx,
        "asyncTransportBase._runQueued": base._runQueued,
        "asyncTransportBase._drain_tx_queue_if_needed": base._drain_tx_queue_if_needed,
        "TransmitIntent.expired": TransmitIntent.expired,
        "TransmitIntent.expiration": TransmitIntent.expiration,
    }


def _install_expiry() -> None:
    from thespian.system.timing import currentTime
    from thespian.system.transport.asyncTransportBase import asyncTransportBase as base

    original_scan = base._complete_expired_intents
    original_qtx = base._qtx
    # Deadlines are taken a microsecond early so float rounding can never delay a scan.
    slack = 1e-6

    def deadline(intent: Any, now: float) -> float:
        # TransmitIntent.expired() is "now >= the expiration timer's end"; remainingSeconds() is
        # that end minus now (0 once expired, None for a timer that never expires).
        remaining = intent.expiration().view(now).remainingSeconds()
        return math.inf if remaining is None else now + remaining - slack

    def _qtx(self: Any, transmitIntent: Any) -> bool:
        queued: bool = original_qtx(self, transmitIntent)
        if queued:
            due = deadline(transmitIntent, currentTime())
            with self._aTB_lock:
                # No attribute yet means "unknown": the next call scans and sets it.
                if due < getattr(self, "_atomr_next_expiry", -math.inf):
                    self._atomr_next_expiry = due
        return queued

    def _complete_expired_intents(self: Any) -> tuple[int, bool]:
        # Nothing queued can have expired before the earliest deadline: skip the O(n) scan and
        # return what the scan would have (the queue length, nothing expired).
        if currentTime() < getattr(self, "_atomr_next_expiry", -math.inf):
            return len(self._aTB_queuedPendingTransmits), False
        result: tuple[int, bool] = original_scan(self)
        with self._aTB_lock:
            now = currentTime()
            self._atomr_next_expiry = min(
                (deadline(i, now) for i in self._aTB_queuedPendingTransmits), default=math.inf
            )
        return result

    base._qtx = _mark(_qtx, "expiry")
    base._complete_expired_intents = _mark(_complete_expired_intents, "expiry")


# --- read ---------------------------------------------------------------------------------------


def _readable_now(sock: Any) -> bool:
    try:
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return False


def _read_targets() -> dict[str, object]:
    from thespian.system.transport.TCPTransport import TCPTransport

    return {
        "TCPTransport._handleReadableIncoming": TCPTransport._handleReadableIncoming,
        "TCPTransport._addedDataToIncoming": TCPTransport._addedDataToIncoming,
    }


def _install_read() -> None:
    from thespian.system.transport.TCPTransport import TCPTransport

    original = TCPTransport._handleReadableIncoming

    def _handleReadableIncoming(self: Any, inc: Any, has_exclusive_flag: bool = False) -> Any:
        # The original does one recv() and returns `inc` itself while the frame is incomplete
        # (failCount 0 after data, > 0 with a back-off pause after EAGAIN), None once the frame
        # is complete (ACK sent, envelope queued) or the socket closed, or a new incoming
        # object for trailing data. Only the first case calls for another read, and only while
        # more bytes are already waiting (the socket is non-blocking; EAGAIN would pause it).
        result = original(self, inc, has_exclusive_flag=has_exclusive_flag)
        reads = 1
        while (
            result is inc
            and reads < MAX_READS_PER_WAKE
            and inc.failCount == 0
            and inc.socket is not None
            and not inc.receivedAllData()
            and _readable_now(inc.socket)
        ):
            result = original(self, inc, has_exclusive_flag=has_exclusive_flag)
            reads += 1
        return result

    TCPTransport._handleReadableIncoming = _mark(_handleReadableIncoming, "read")


# --- lazy ---------------------------------------------------------------------------------------


class LazyText:
    """Formats `make(obj)` only when turned into a string (a log line actually written)."""

    __slots__ = ("_make", "_obj")

    def __init__(self, make: Callable[[Any], str], obj: Any) -> None:
        self._make = make
        self._obj = obj

    def __str__(self) -> str:
        return self._make(self._obj)

    def __repr__(self) -> str:
        return repr(str(self))

    def __reduce__(self) -> tuple[type[str], tuple[str]]:
        # A log record holding this may be pickled to Thespian's logger process: send the text.
        return str, (str(self),)


def _lazy_targets() -> dict[str, object]:
    from thespian.system.transport import ReceiveEnvelope, TransmitIntent

    return {
        "TransmitIntent.identify": TransmitIntent.identify,
        "TransmitIntent.__str__": TransmitIntent.__str__,
        "ReceiveEnvelope.identify": ReceiveEnvelope.identify,
        "ReceiveEnvelope.__str__": ReceiveEnvelope.__str__,
    }


def _install_lazy() -> None:
    from thespian.system.transport import ReceiveEnvelope, TransmitIntent

    intent_identify = TransmitIntent.identify
    envelope_identify = ReceiveEnvelope.identify

    def intent_lazy(self: Any) -> LazyText:
        return LazyText(intent_identify, self)

    def envelope_lazy(self: Any) -> LazyText:
        return LazyText(envelope_identify, self)

    def envelope_str(self: Any) -> str:
        # The original __str__ returns self.identify(), which must now be made a real str.
        return str(envelope_identify(self))

    # Every caller in Thespian passes identify() as a %s argument (thesplog, logging), and
    # TransmitIntent.__str__ formats it with %s too, so a lazy object serves them all.
    TransmitIntent.identify = _mark(intent_lazy, "lazy")
    ReceiveEnvelope.identify = _mark(envelope_lazy, "lazy")
    ReceiveEnvelope.__str__ = _mark(envelope_str, "lazy")


# --- poll ---------------------------------------------------------------------------------------


class OneShotPollSelector:
    """The part of the selectors API ``TCPTransport`` uses (register, select, close), on poll(2).

    Thespian builds a selector, registers every socket, selects once and closes it on each loop;
    with epoll that is 3 + one system call per socket, with poll it is one. Events are reported
    the way ``selectors.EpollSelector`` reports them; a descriptor that is not open raises
    OSError(EBADF) from select(), as epoll raised it from register(), both inside the same
    ``try`` in Thespian. A descriptor registered twice (Thespian can list a socket it is still
    sending on among those to read as well) is watched for both; the stock selectors raise a
    KeyError there, which Thespian does not catch and which ends the actor's transport loop.
    """

    def __init__(self) -> None:
        self._poll = select.poll()
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else int(fileobj.fileno())
        if fd < 0:
            raise ValueError(f"Invalid file descriptor: {fd}")
        known = self._keys.get(fd)
        if known is not None:
            events |= known.events
        mask = (select.POLLIN if events & selectors.EVENT_READ else 0) | (
            select.POLLOUT if events & selectors.EVENT_WRITE else 0
        )
        self._poll.register(fd, mask)  # (registering again modifies)
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            ms = None
        elif timeout <= 0:
            ms = 0
        else:
            ms = math.ceil(timeout * 1e3)
        ready = []
        for fd, event in self._poll.poll(ms):
            if event & select.POLLNVAL:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF), fd)
            key = self._keys.get(fd)
            if key is None:
                continue
            events = 0
            if event & ~select.POLLIN:
                events |= selectors.EVENT_WRITE
            if event & ~select.POLLOUT:
                events |= selectors.EVENT_READ
            ready.append((key, events & key.events))
        return ready

    def close(self) -> None:
        self._keys.clear()


class _SelectorsForThespian:
    """Stands in for the ``selectors`` module inside TCPTransport: DefaultSelector is poll."""

    DefaultSelector = OneShotPollSelector

    def __getattr__(self, name: str) -> Any:
        return getattr(selectors, name)


def _poll_targets() -> dict[str, object]:
    from thespian.system.transport import TCPTransport as module

    if module.selectors is not selectors:
        raise AttributeError("TCPTransport does not use the selectors module as expected")
    return {
        "TCPTransport._runWithExpiry": module.TCPTransport._runWithExpiry,
        "TCPTransport._check_fd": module.TCPTransport._check_fd,
    }


def _install_poll() -> None:
    if not hasattr(select, "poll"):
        raise AttributeError("select.poll is not available on this platform")
    from thespian.system.transport import TCPTransport as module

    module.selectors = _SelectorsForThespian()


# --- throttle -----------------------------------------------------------------------------------


def _throttle_targets() -> dict[str, object]:
    from thespian.system import systemCommon
    from thespian.system.ratelimit import RateThrottle

    if systemCommon.RATE_THROTTLE != THESPIAN_RATE_THROTTLE:
        raise AttributeError(f"systemCommon.RATE_THROTTLE is {systemCommon.RATE_THROTTLE}")
    return {
        "systemCommonBase.__init__": systemCommon.systemCommonBase.__init__,
        "systemCommonBase._send_intent": systemCommon.systemCommonBase._send_intent,
        "RateThrottle.eventRatePause": RateThrottle.eventRatePause,
    }


def _install_throttle() -> None:
    from thespian.system import systemCommon

    # systemCommonBase.__init__ reads this module global when each admin/actor starts.
    systemCommon.RATE_THROTTLE = PATCHED_RATE_THROTTLE


# --- applying -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Patch:
    name: str
    targets: Callable[[], dict[str, object]]
    install: Callable[[], None]


_REGISTRY = {
    p.name: p
    for p in (
        _Patch("expiry", _expiry_targets, _install_expiry),
        _Patch("read", _read_targets, _install_read),
        _Patch("lazy", _lazy_targets, _install_lazy),
        _Patch("poll", _poll_targets, _install_poll),
        _Patch("throttle", _throttle_targets, _install_throttle),
    )
}


def selected_from_env(value: str | None = None) -> tuple[str, ...]:
    """The patches ``$ATOMR_THESPIAN_PATCHES`` (or `value`) asks for, in application order."""
    raw = (os.environ.get(ENV_VAR, "1") if value is None else value).strip().lower()
    if raw in _ON:
        return PATCHES
    if raw in _OFF:
        return ()
    wanted = {n.strip() for n in raw.split(",") if n.strip()}
    unknown = wanted - set(PATCHES)
    if unknown:
        warnings.warn(f"{ENV_VAR}: unknown Thespian patches {sorted(unknown)} ignored", RuntimeWarning, stacklevel=2)
    return tuple(n for n in PATCHES if n in wanted)


def source_mismatches(targets: Callable[[], Mapping[str, object]], expected: Mapping[str, str]) -> list[str]:
    """The labels of `targets()` whose source hash is not the `expected` one (or why they could not
    be looked up)."""
    try:
        found = targets()
    except (ImportError, AttributeError) as exc:
        return [f"{type(exc).__name__}: {exc}"]
    return [label for label, obj in found.items() if fingerprint(obj) != expected.get(label)]


def mismatches(name: str) -> list[str]:
    """What stops patch `name` from applying: code that differs from what it was written for."""
    return source_mismatches(_REGISTRY[name].targets, EXPECTED)


def apply_patches(names: Iterable[str] | None = None) -> list[str]:
    """Apply the named patches (default: as ``$ATOMR_THESPIAN_PATCHES`` says) once per process.

    Call before the first ActorSystem of the process starts. Returns every patch applied so far.
    """
    chosen = selected_from_env() if names is None else tuple(names)
    with _lock:
        for name in chosen:
            if name in _applied:
                continue
            if name not in _REGISTRY:
                warnings.warn(f"unknown Thespian patch {name!r} ignored", RuntimeWarning, stacklevel=2)
                continue
            problems = mismatches(name)
            if problems:
                warnings.warn(
                    f"atomr: Thespian patch {name!r} skipped, this Thespian differs from the one it was"
                    f" written for ({', '.join(problems)})",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            _REGISTRY[name].install()
            _applied.append(name)
        return list(_applied)


def applied_patches() -> tuple[str, ...]:
    """The patches applied in this process."""
    return tuple(_applied)
