"""Metrics collector actor (global name on the head): the newest metrics snapshot of every source.

Coordinators and HTTP fronts send `MetricsSnapshot`s (absolute values, about once a second); the
HTTP front's `/metrics` asks with `GetMetrics` and gets the merged Prometheus text exposition.
"""

from __future__ import annotations

from typing import Any

from atomr.actors.messages import Address, GetMetrics, MetricsDrop, MetricsSnapshot, Reply
from atomr.actors.sidecar import SidecarActor
from atomr.core.errors import InternalError
from atomr.observability.metrics import SnapshotStore


class MetricsCollector(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store = SnapshotStore()

    def receiveMsg_MetricsSnapshot(self, msg: MetricsSnapshot, sender: Address) -> None:
        self.store.put(msg.source, msg.families)

    def receiveMsg_MetricsDrop(self, msg: MetricsDrop, sender: Address) -> None:
        self.store.drop(msg.source)

    def receiveMsg_GetMetrics(self, msg: GetMetrics, sender: Address) -> None:
        try:
            text = self.store.exposition()
        except Exception as exc:  # noqa: BLE001 - a bad snapshot must not stop the collector
            self.send(sender, Reply(False, error=InternalError(f"metrics exposition failed: {exc}").info()))
            return
        self.send(sender, Reply(True, text))
