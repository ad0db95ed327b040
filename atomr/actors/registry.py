"""Registry actor (global name): model names and aliases -> the coordinator serving them.

Gateways subscribe and keep a copy; a gateway that misses a name asks once before answering
`not_found`, so a request sent right after a deploy finds its model.
"""

from __future__ import annotations

from typing import Any

from atomr.actors.messages import Address, Lookup, Route, RouteTable, SetRoutes, Subscribe
from atomr.actors.sidecar import SidecarActor


class Registry(SidecarActor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.routes: dict[str, Route] = {}
        self.subscribers: list[Address] = []

    def receiveMsg_SetRoutes(self, msg: SetRoutes, sender: Address) -> None:
        for name in msg.names:
            if msg.route is None:
                self.routes.pop(name, None)
            else:
                self.routes[name] = msg.route
        table = RouteTable(dict(self.routes))
        for sub in self.subscribers:
            self.send(sub, table)
        self.send(sender, table)  # acknowledges the change

    def receiveMsg_Subscribe(self, msg: Subscribe, sender: Address) -> None:
        if sender not in self.subscribers:
            self.subscribers.append(sender)
        self.send(sender, RouteTable(dict(self.routes)))

    def receiveMsg_Lookup(self, msg: Lookup, sender: Address) -> None:
        self.send(sender, RouteTable({n: self.routes[n] for n in msg.names if n in self.routes}, full=False))
