"""Cluster keys: where a process finds its key (`resolve_key`: an explicit key or key file, the
environment, or on loopback only a per-user default key file), reading and writing key files
(refused when other users may read them), and `ClusterKey`, the secret with its printable id.

The order of precedence and the reasons for it are in ``atomr.cluster.auth``.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from atomr.core.errors import ConfigError

KEY_FILE_ENV = "ATOMR_CLUSTER_KEY_FILE"
KEY_ENV = "ATOMR_CLUSTER_KEY"
MIN_KEY_BYTES = 16
_MAC_CONTEXT = b"atomr cluster frame v1"
_ID_CONTEXT = b"atomr cluster key id v1"
_KEY_OPTIONS = (
    f"pass --cluster-key-file PATH to python -m atomr.node (or node.cluster_key_file in its config), "
    f"Client(cluster_key_file=PATH), or set {KEY_FILE_ENV}; create a key with "
    f"`python -m atomr.cluster.auth new-key PATH` and give every node and client of the cluster the same one"
)


class ClusterKeyError(ConfigError):
    """The cluster key is missing where one is required, or cannot be used (the message says why)."""


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
