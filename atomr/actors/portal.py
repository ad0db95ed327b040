"""Portal actor: where a `Client` on another host learns the addresses of the head's actors.

Global names are an actor system's own: a client whose process is a light member of the
convention (`atomr.cluster.light_member`) would start new actors under those names in its own
system. Instead it creates a Portal with the requirement ``atomr.role: head``, which Thespian
places on the head; there, its lookups by global name find the head's gateway, deployment
manager, registry, metrics collector and key keeper; each is asked for its own address (what a
lookup returns is only a local handle until the head's admin has answered), and the portal
answers them once and exits (one portal per lookup, nothing left on the head).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from thespian.actors import ActorExitRequest, ActorTypeDispatcher, WakeupMessage

from atomr.actors.messages import (
    KEYS_NAME,
    MANAGER_NAME,
    METRICS_NAME,
    REGISTRY_NAME,
    Address,
    Identify,
    Identity,
    Locate,
    Reply,
)
from atomr.actors.sidecar import PlacedActor
from atomr.core.errors import UnavailableError

LOCATE_TIMEOUT_S = 20.0


def actor_class(name: str) -> Any:
    """The class of the head's global actor `name` (any other name is a gateway's: the head's, an
    HTTP worker's, or one a client names)."""
    from atomr.actors.deployment_manager import DeploymentManager
    from atomr.actors.gateway import Gateway
    from atomr.actors.key_keeper import KeyKeeper
    from atomr.actors.metrics_collector import MetricsCollector
    from atomr.actors.registry import Registry

    classes = {MANAGER_NAME: DeploymentManager, REGISTRY_NAME: Registry, METRICS_NAME: MetricsCollector}
    return {**classes, KEYS_NAME: KeyKeeper}.get(name, Gateway)


class Portal(PlacedActor, ActorTypeDispatcher):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.asker: Address = None
        self.waiting: set[str] = set()
        self.found: dict[str, Address] = {}

    def receiveMsg_Locate(self, msg: Locate, sender: Address) -> None:
        # An address made by a lookup here is this system's handle until its admin answers: each
        # actor is asked for its own address, which is what another host can use.
        self.asker, self.waiting = sender, set(msg.names)
        for name in msg.names:
            self.send(self.createActor(actor_class(name), globalName=name), Identify(name))
        self.wakeupAfter(timedelta(seconds=LOCATE_TIMEOUT_S))

    def receiveMsg_Identity(self, msg: Identity, sender: Address) -> None:
        self.found[msg.name] = msg.address
        self.waiting.discard(msg.name)
        if not self.waiting and self.asker is not None:
            self.send(self.asker, Reply(True, self.found))
            self.asker = None
            self.send(self.myAddress, ActorExitRequest())

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Address) -> None:
        if self.asker is not None:  # some did not answer: say which, and end
            missing = ", ".join(sorted(self.waiting))
            err = UnavailableError(
                f"the head's {missing} did not answer within {LOCATE_TIMEOUT_S:g} s", retry_after=1.0
            )
            self.send(self.asker, Reply(False, error=err.info()))
            self.asker = None
        self.send(self.myAddress, ActorExitRequest())
