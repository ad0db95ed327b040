"""A section of a node config (``node:``, ``tracing:``, ...) checked against its pydantic model:
every problem named by its setting (``node.portt: unknown setting``), in one ConfigError."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from atomr.core.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


def validated_section(model: type[S], raw: Any, name: str, where: str = "config") -> S:
    """`raw` (the section's mapping) as `model`; a ConfigError naming the file (`where`) and each
    setting that is unknown or wrong, its field the first of them."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name}: must be a mapping", field=name)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = [
            (
                f"{name}." + ".".join(str(x) for x in err["loc"]),
                "unknown setting" if err["type"] == "extra_forbidden" else err["msg"],
            )
            for err in exc.errors()
        ]
        said = "; ".join(f"{field}: {msg}" for field, msg in problems)
        raise ConfigError(f"{where}: {said}", field=problems[0][0]) from None
