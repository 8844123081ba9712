"""Requests that wait: gets waiting for objects to be sealed (or read back from disk), and
creates (or arena requests) waiting for memory (Ray's two request queues).

These are the records the store keeps per waiting request; the store decides when each is
answered (a ``GetDone`` or ``CreateDone`` event), retried or timed out. This module must
never answer a request itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from plasma.records import CreateItem, ObjectLocation
    from plasma.store.memory import Node


class GetWaiter:
    __slots__ = ("client", "deadline", "done", "missing", "oids", "results", "token")

    def __init__(self, client: int, token: int, oids: list[bytes], results: list) -> None:
        self.client = client
        self.token = token
        self.oids = oids
        self.results: list[ObjectLocation | str | None] = results
        self.missing = results.count(None)
        self.deadline: float | None = None
        self.done = False


class CreateWaiter:
    """A create (``items``) or an arena request (``arena``: size and least size) waiting
    for space."""

    __slots__ = ("arena", "client", "deadline", "done", "items", "node", "now", "token")

    def __init__(
        self,
        client: int,
        token: int,
        items: list[CreateItem],
        node: Node,
        now: float,
        arena: tuple[int, int] | None = None,
    ) -> None:
        self.client = client
        self.token = token
        self.items = items
        self.arena = arena
        self.node = node
        self.now = now  # the request's time, the objects' create_time
        self.deadline: float | None = None
        self.done = False
