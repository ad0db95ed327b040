"""The answers ``POST /v1/responses`` keeps, for ``previous_response_id`` and ``GET /v1/responses/{id}``.

A bounded, in-memory store in the process serving HTTP: at most `max_items` responses (the
oldest evicted first), each for at most `max_age_s` seconds. Each entry holds the Response
object as it was answered and the conversation that led to it (input and output as chat
messages, instructions aside: they are not carried over to the next turn). Entries belong to
the tenant that made them; another tenant asking finds nothing. Used from the front's event
loop only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atomr.core.messages import Message


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    tenant: str
    response: Mapping[str, Any]  # the Response object, as answered
    conversation: tuple[Message, ...]  # what a response continuing this one follows


class ResponseStore:
    """Stored responses by id, bounded in number and age; `max_items` 0 keeps none."""

    def __init__(self, max_items: int, max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_items = max_items
        self.max_age_s = max_age_s
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, StoredResponse]] = OrderedDict()  # oldest first

    @property
    def enabled(self) -> bool:
        return self.max_items > 0

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def put(self, entry: StoredResponse) -> None:
        if not self.enabled:
            return
        self._entries.pop(entry.id, None)
        self._entries[entry.id] = (self._clock(), entry)
        while len(self._entries) > self.max_items:
            self._entries.popitem(last=False)

    def get(self, response_id: str, tenant: str) -> StoredResponse | None:
        """The entry, when it is still kept and belongs to `tenant`."""
        self._expire()
        found = self._entries.get(response_id)
        return found[1] if found is not None and found[1].tenant == tenant else None

    def delete(self, response_id: str, tenant: str) -> bool:
        """Whether `tenant`'s entry was there (and is now gone)."""
        if self.get(response_id, tenant) is None:
            return False
        del self._entries[response_id]
        return True

    def _expire(self) -> None:
        oldest = self._clock() - self.max_age_s
        while self._entries:
            stored_at, _ = next(iter(self._entries.values()))
            if stored_at > oldest:
                return
            self._entries.popitem(last=False)
