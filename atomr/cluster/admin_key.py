"""The admin key: what ``/admin`` and ``atomr-keys`` are authenticated with.

It lives in a file (never on a command line, where ``ps`` shows it): the node reads it from
``--admin-key-file``, ``http.admin_key_file`` or ``$ATOMR_ADMIN_KEY_FILE`` and keeps only its
SHA-256; ``atomr-keys`` reads the same file the same ways.
"""

from __future__ import annotations

import os

from atomr.core.errors import ConfigError

ADMIN_KEY_FILE_ENV = "ATOMR_ADMIN_KEY_FILE"
MIN_ADMIN_KEY_CHARS = 16


def admin_key_path(flag: str | None, configured: str | None = None) -> str | None:
    """Which file holds the admin key: the flag's, else the config's, else the environment's."""
    return flag or configured or os.environ.get(ADMIN_KEY_FILE_ENV) or None


def read_admin_key(path: str, field: str = "http.admin_key_file") -> str:
    """The admin key in the file at `path` (its first line); ConfigError naming `field` when it
    cannot be read or is too short to be a secret."""
    try:
        with open(os.path.expanduser(path), encoding="utf-8") as f:
            key = f.readline().strip()
    except OSError as exc:
        raise ConfigError(f"admin key file {path}: {exc.strerror or exc}", field=field) from None
    if len(key) < MIN_ADMIN_KEY_CHARS:
        raise ConfigError(
            f"admin key file {path}: the key must be at least {MIN_ADMIN_KEY_CHARS} characters", field=field
        )
    return key
