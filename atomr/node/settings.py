"""The ``node:`` section of a node config, validated like deployments are (an unknown or misspelt
key is refused naming it, not ignored). Command-line flags override these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from atomr.core.sections import validated_section


class NodeSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    port: int | None = Field(default=None, ge=1, le=65535)  # the actor system's admin port
    bind: str | None = Field(default=None, min_length=1)
    # the address other hosts reach this node at, where `bind` is not one (0.0.0.0)
    advertise: str | None = Field(default=None, min_length=1)
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    cluster_key_file: str | None = Field(default=None, min_length=1)  # relative to the config file
    # where the head keeps its durable state (default: under the user's data directory)
    state_dir: str | None = Field(default=None, min_length=1)
    # how long member nodes keep their replicas running without a head (for it to adopt them)
    adopt_window_s: float = Field(default=120.0, gt=0, allow_inf_nan=False)
    # a standby head takes over once its leader has been silent this long (and a member node
    # given several heads moves to the one that leads)
    failover_after_s: float = Field(default=5.0, gt=0, allow_inf_nan=False)
    # the spend log (one row per request run) keeps rows this long
    spend_retention_days: float = Field(default=90.0, gt=0, allow_inf_nan=False)


def node_settings_from_config(raw: Any, where: str = "config") -> NodeSettings:
    """The ``node:`` section (defaults when there is none)."""
    return NodeSettings() if raw is None else validated_section(NodeSettings, raw, "node", where)
