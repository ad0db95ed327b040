"""What a gateway knows of a deployment it routes to: its `Route` and its `DeploymentStats`.

The registry publishes routes (a model name to the deployment's coordinator, version, limits and
spec) and refreshes stats (health, saturation, speed); routing policies (`atomr.core.routing`)
choose from them without asking anyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from atomr.core.deployment import Deployment, RateBudget
from atomr.core.runner import PromptLimit


@dataclass(slots=True)
class Route:
    deployment: str
    version: str
    runtime: str
    coordinator: Any  # the coordinator's actor address (opaque here)
    # (key, rpm, tpm, window_s) of each rate limit a request must fit (none: not rate limited)
    limits: tuple[RateBudget, ...] = ()
    # The deployment itself: what routing policies and cascades weigh (cost, quality, limits)
    spec: Deployment | None = None
    # When its coordinator started (time.time()): requests sent before a later value may have died
    # with the coordinator it replaced.
    since: float = 0.0
    # Its runners' context length and longest token, once one loaded: a prompt that cannot fit is
    # refused by the gateway (`PromptLimit.too_long`) without crossing a process.
    prompt_limit: PromptLimit | None = None


@dataclass(slots=True)
class DeploymentStats:
    """What routing policies know of a deployment besides its `Route` (the registry refreshes it).

    `ready`: some replica is ready; `circuit_open`: every ready replica's breaker is open;
    `saturated`: its queue is full; `queued`: requests wait in its queue; `ttft_s` /
    `latency_s`: moving averages of what its coordinator measured (None until it served a request).
    """

    ready: bool = True
    circuit_open: bool = False
    saturated: bool = False
    queued: bool = False
    ttft_s: float | None = None
    latency_s: float | None = None

    @property
    def usable(self) -> bool:
        return self.ready and not self.circuit_open and not self.saturated
