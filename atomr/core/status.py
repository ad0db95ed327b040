"""What `status` and `list` report of a deployment and of each of its replicas."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from atomr.core.runner import PromptLimit


@dataclass(slots=True)
class ReplicaInfo:
    replica_id: str
    node_id: str
    state: str  # starting | ready | restarting | stopping | exited | isolated
    pid: int = 0
    gpu_ids: list[str] = field(default_factory=list)
    inflight: int = 0
    error: str | None = None
    restarts: int = 0
    host: str = ""
    visible_devices: str | None = None
    health: dict[str, Any] = field(default_factory=dict)  # e.g. {"circuit": {"state": "open", ...}}


@dataclass(slots=True)
class DeploymentInfo:
    name: str
    model: str
    runtime: str
    version: str
    state: str  # deploying | ready | degraded | failed | draining
    replicas: list[ReplicaInfo] = field(default_factory=list)
    queued: int = 0
    aliases: list[str] = field(default_factory=list)
    error: str | None = None
    swap: str | None = None  # progress of a version switch in course, e.g. "v2: 1/2 replicas ready"
    coordinator_pid: int = 0  # the process of its coordinator
    # its runners' context length and longest token (gateways refuse overlong prompts with it)
    prompt_limit: PromptLimit | None = None
