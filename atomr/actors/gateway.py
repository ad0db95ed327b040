"""Gateway actor (global name): where requests enter the actor system.

It validates each request, resolves the model name through its copy of the registry and forwards
requests to their coordinators, one message per coordinator per batch. Chunks do not come back
through here: runner hosts answer the requester directly.
"""

from __future__ import annotations

from typing import Any

from atomr.actors.messages import (
    REGISTRY_NAME,
    Address,
    Cancel,
    Hello,
    HelloReply,
    Lookup,
    Route,
    RouteTable,
    Submit,
    Subscribe,
    WorkItem,
)
from atomr.actors.registry import Registry
from atomr.actors.sidecar import SidecarActor
from atomr.core.errors import InferenceError, NotFoundError
from atomr.core.types import StreamEvent


class Gateway(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes: dict[str, Route] = {}
        self.registry: Address = None
        self.waiting: dict[str, list[WorkItem]] = {}  # model name -> items awaiting a lookup

    def _registry(self) -> Address:
        if self.registry is None:
            self.registry = self.createActor(Registry, globalName=REGISTRY_NAME)
            self.send(self.registry, Subscribe())
        return self.registry

    def receiveMsg_Hello(self, msg: Hello, sender: Address) -> None:
        self._registry()
        self.send(sender, HelloReply(sender))

    def receiveMsg_Submit(self, msg: Submit, sender: Address) -> None:
        by_coordinator: dict[str, tuple[Address, list[WorkItem]]] = {}
        for item in msg.items:
            req = item.request
            try:
                req.validate()
            except InferenceError as exc:
                self.emit(item.reply_to, StreamEvent(req.request_id, error=exc.info(), final=True))
                continue
            route = self.routes.get(req.model)
            if route is None:
                first = req.model not in self.waiting
                self.waiting.setdefault(req.model, []).append(item)
                if first:
                    self.send(self._registry(), Lookup([req.model]))
                continue
            by_coordinator.setdefault(str(route.coordinator), (route.coordinator, []))[1].append(item)
        for coordinator, items in by_coordinator.values():
            self.send(coordinator, Submit(items))

    def receiveMsg_RouteTable(self, msg: RouteTable, sender: Address) -> None:
        if msg.full:
            self.routes = dict(msg.routes)
        else:
            self.routes.update(msg.routes)
        for name in list(self.waiting):
            items = self.waiting.pop(name)
            route = msg.routes.get(name) or self.routes.get(name)
            if route is not None:
                self.send(route.coordinator, Submit(items))
                continue
            for item in items:
                err = NotFoundError(f"no deployment serves model {name!r}", field="model")
                self.emit(item.reply_to, StreamEvent(item.request.request_id, error=err.info(), final=True))

    def receiveMsg_Cancel(self, msg: Cancel, sender: Address) -> None:
        route = self.routes.get(msg.model)
        if route is not None:
            self.send(route.coordinator, msg)
