"""Authenticated frames on atomr's Thespian transport: a cluster key, checked before unpickling.

Thespian's TCP transport sends every message as one frame, ``<length>>`` followed by a pickle,
and unpickles whatever arrives on any of its sockets: whoever can reach a port of an actor system
(its admin, an actor, its logger, a client's endpoint) can run code there. This module (with the
two it re-exports, see the end) is the one place that closes that hole. Once installed in a
process (``atomr.cluster.thespian_setup`` does it, before the first actor system starts; the
admin, logger and actor processes Thespian forks inherit it. Thespian's default 'fork' start
method is required: a 'spawn' child would start unpatched):

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

Modules: ``atomr.cluster.keys`` (finding, reading and writing the cluster key),
``atomr.cluster.frames`` (the signed frames and their installation into Thespian's transport) and
this one (`probe`, the ``KeyProbe`` exchange, and the command line), which also re-exports what
the other two offer.
"""

from __future__ import annotations

import argparse
import socket
import sys
from dataclasses import dataclass

from atomr.cluster.frames import (
    DEFAULT_MAX_FRAME_BYTES,
    EXPECTED,
    MAX_FRAME_ENV,
    MAX_HEADER_DIGITS,
    TAG_BYTES,
    WARN_BURST,
    WARN_WINDOW_S,
    FrameRejected,
    FrameTooLarge,
    KeyProbe,
    SignedPickle,
    active_key,
    check_header,
    install,
    max_frame_bytes,
    unpickle_checked,
    warn_rejected,
)
from atomr.cluster.frames import _patch as _patch  # re-exported for the tests
from atomr.cluster.keys import (
    KEY_ENV,
    KEY_FILE_ENV,
    MIN_KEY_BYTES,
    ClusterKey,
    ClusterKeyError,
    default_key,
    default_key_path,
    is_loopback,
    key_from_text,
    load_key_file,
    new_key_file,
    resolve_key,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "EXPECTED",
    "KEY_ENV",
    "KEY_FILE_ENV",
    "MAX_FRAME_ENV",
    "MAX_HEADER_DIGITS",
    "MIN_KEY_BYTES",
    "TAG_BYTES",
    "WARN_BURST",
    "WARN_WINDOW_S",
    "ClusterKey",
    "ClusterKeyError",
    "FrameRejected",
    "FrameTooLarge",
    "KeyProbe",
    "PeerCheck",
    "SignedPickle",
    "active_key",
    "check_header",
    "default_key",
    "default_key_path",
    "install",
    "is_loopback",
    "key_from_text",
    "load_key_file",
    "main",
    "max_frame_bytes",
    "new_key_file",
    "probe",
    "resolve_key",
    "warn_rejected",
]


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
    answer = unpickle_checked(reply)
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
    # Run the package's copy of this module (not this `__main__` copy), so that everything the
    # command does refers to the objects other processes know by their dotted names
    # (`atomr.cluster.auth.KeyProbe` is how a probe is pickled).
    from atomr.cluster import auth

    sys.exit(auth.main())
