"""Requests that wait: gets waiting for objects to be sealed (or read back from disk), and
creates (or arena requests) waiting for memory (Ray's two request queues), with their
deadlines and the bounds on what one client may have waiting.

:class:`Waiters` indexes waiting gets by the ids they miss, keeps waiting creates in FIFO
order, and hands back the waiters whose deadline passed; the store decides when each is
answered (a ``GetDone`` or ``CreateDone`` event), retried or timed out. This module never
answers a request, takes a reference or touches memory.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Union

from plasma.errors import BadRequest

if TYPE_CHECKING:
    from plasma.errors import PlasmaError
    from plasma.records import CreateItem, ObjectLocation
    from plasma.store.events import Grant
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


Waiter = GetWaiter | CreateWaiter
# what a waiting create is answered: its objects' locations, an arena, or an error
CreateAnswer = Union[list["ObjectLocation"], "Grant", "PlasmaError"]
DEAD_COMPACT = 64  # finished waiters left in the deadline heap before it may be compacted


class Waiters:
    """Every waiting get and create: gets by the ids they still miss, creates in arrival
    order (FIFO by token), and one heap of deadlines. A client has at most ``max_waiters``
    waiting calls naming at most ``max_waiting_ids`` ids in all (:meth:`check`)."""

    def __init__(self, max_waiters: int, max_waiting_ids: int) -> None:
        self.max_waiters = max_waiters
        self.max_waiting_ids = max_waiting_ids
        self.gets = 0  # waiting gets
        self.creates: dict[int, CreateWaiter] = {}  # FIFO by token
        self._by_id: dict[bytes, list[tuple[GetWaiter, int]]] = {}  # id -> (get, its index)
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._dead = 0  # finished waiters still in the heap

    def check(self, client: int, waiting: set[Waiter], ids: int = 1) -> None:
        """Room for one more waiting call of ``client`` (whose calls waiting now are
        ``waiting``) naming ``ids`` ids, else BadRequest: what a waiting call costs the
        coordinator grows with its ids."""
        if len(waiting) >= self.max_waiters:
            raise BadRequest(
                f"client {client} already has {len(waiting)} waiting gets and creates "
                f"(the limit is {self.max_waiters})"
            )
        named = sum(
            len(w.oids) if isinstance(w, GetWaiter) else max(1, len(w.items)) for w in waiting
        )
        if named + ids > self.max_waiting_ids:
            raise BadRequest(
                f"client {client} would have {named + ids} ids in waiting gets and creates "
                f"(the limit is {self.max_waiting_ids}): wait for fewer objects at once"
            )

    def add_get(self, w: GetWaiter, deadline: float | None) -> None:
        """``w`` waits for the ids whose result is still None."""
        for i, r in enumerate(w.results):
            if r is None:
                self._by_id.setdefault(w.oids[i], []).append((w, i))
        self.gets += 1
        self._add(w, deadline)

    def add_create(self, w: CreateWaiter, deadline: float | None) -> None:
        """``w`` waits for memory, after every create already waiting."""
        self.creates[w.token] = w
        self._add(w, deadline)

    def _add(self, w: Waiter, deadline: float | None) -> None:
        w.deadline = deadline
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, w.token, w))

    def retry_creates(
        self,
        attempt: Callable[[CreateWaiter], CreateAnswer | None],
        could_fit: Callable[[CreateWaiter], bool],
    ) -> list[tuple[CreateWaiter, CreateAnswer]]:
        """Retry the waiting creates in FIFO order (``attempt``: its answer, None when it
        does not fit yet): those answered, each taken out of every queue. One that does not
        fit holds back the later ones on its node only while it ``could_fit`` by eviction
        (or spilling): one that waits for references to go does not starve creates that
        fit meanwhile, and keeps its turn for when they have gone."""
        answered: list[tuple[CreateWaiter, CreateAnswer]] = []
        blocked: set[int] = set()
        for w in list(self.creates.values()):
            if w.node.id in blocked:
                continue
            answer = attempt(w)
            if answer is None:
                if could_fit(w):
                    blocked.add(w.node.id)
                continue
            self.finish(w)
            answered.append((w, answer))
        return answered

    def waits_for(self, oid: bytes) -> bool:
        """True when some get waits for ``oid``."""
        return oid in self._by_id

    def take(self, oid: bytes) -> list[tuple[GetWaiter, int]]:
        """The gets waiting for ``oid`` (and where in each): the caller fills their results
        and finishes those left missing nothing (:meth:`finish`)."""
        return self._by_id.pop(oid, [])

    def finish(self, w: Waiter) -> None:
        """``w`` is answered: out of every queue (its heap entry becomes garbage, compacted
        once it dominates)."""
        w.done = True
        if isinstance(w, GetWaiter):
            self.gets -= 1
        else:
            del self.creates[w.token]
        if w.deadline is None:
            return
        self._dead += 1
        heap = self._deadlines
        if self._dead > DEAD_COMPACT and self._dead * 2 > len(heap):
            self._deadlines = [e for e in heap if not e[2].done]
            heapq.heapify(self._deadlines)
            self._dead = 0

    def cancel(self, w: Waiter) -> None:
        """``w``'s client went: out of every queue, unanswered."""
        if isinstance(w, GetWaiter):
            self._unindex(w)
        self.finish(w)

    def _unindex(self, w: GetWaiter) -> None:
        for oid in {w.oids[i] for i, r in enumerate(w.results) if r is None}:
            entries = [e for e in self._by_id.get(oid, ()) if e[0] is not w]
            if entries:
                self._by_id[oid] = entries
            else:
                self._by_id.pop(oid, None)

    def expired(self, now: float) -> Iterator[Waiter]:
        """The waiters whose deadline is at or before ``now``, each taken out of every queue
        (the caller answers them)."""
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, w = heapq.heappop(heap)
            if w.done:
                self._dead -= 1
                continue
            if isinstance(w, GetWaiter):
                self._unindex(w)
            w.deadline = None  # (its heap entry is gone: nothing to count as garbage)
            self.finish(w)
            yield w

    def next_deadline(self) -> float | None:
        """The earliest deadline of a waiter not yet answered."""
        heap = self._deadlines
        while heap and heap[0][2].done:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None
