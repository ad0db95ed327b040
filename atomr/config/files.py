"""YAML files: parsing with errors that name the line, and the routes and cascades of a file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from atomr.core.deployment import Deployment
from atomr.core.errors import ConfigError
from atomr.core.policies import Policies, policies_from_config


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file; syntax errors name the file, line and column."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}", field="file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text: {exc.reason} at byte {exc.start}", field="file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{p}: invalid YAML{at}: {problem}", field="file") from None
    except (ValueError, OverflowError) as exc:  # a value YAML's constructors refuse, e.g. the date 2001-13-01
        raise ConfigError(f"{p}: invalid YAML: {exc}", field="file") from None
    except RecursionError:
        raise ConfigError(f"{p}: invalid YAML: nested too deeply", field="file") from None


def load_policies(path: str | Path, deployments: Iterable[Deployment] | None = None) -> Policies:
    """The routes and cascades of a YAML file (none when it has neither section)."""
    p = Path(path)
    raw = load_yaml(p)
    if not isinstance(raw, Mapping):
        return Policies()
    return policies_from_config(raw, where=str(p), deployments=deployments)
