"""structlog set-up: JSON lines on stderr, one level per node, secrets never printed."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Field names whose values are never printed, and key-like strings masked wherever they appear.
SECRET_FIELDS = frozenset({"api_key", "authorization", "key", "password", "secret", "token", "x-api-key"})
_SECRET_TEXT = re.compile(r"(?i)(bearer\s+)\S+|\b(sk-|atomr-|xai-)[A-Za-z0-9_\-]{24,}|\bAIza[0-9A-Za-z_\-]{20,}")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info") -> None:
    structlog.configure(
        processors=[
            redact_secrets,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), logging.INFO)),
        # one write per line: every process of a node shares the stream (print writes twice)
        logger_factory=structlog.WriteLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def _mask(match: re.Match[str]) -> str:
    return (match.group(1) or "") + "[redacted]"


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop secret fields and mask key-like text in every string value."""
    for name, value in event.items():
        if name.lower() in SECRET_FIELDS:
            event[name] = "[redacted]"
        elif isinstance(value, str) and len(value) >= 12:
            event[name] = _SECRET_TEXT.sub(_mask, value)
    return event
