"""The object table: lifecycle, per-client references, LRU eviction, waiters (sans-I/O).

The coordinator owns the sockets and the clock; it calls these methods with client ids and
``now`` timestamps, and after each call sends whatever :meth:`Store.drain_events` returns.
Memory comes from a :class:`SegmentProvider` (segments are created lazily, per NUMA node,
within the node's byte budget) and is sub-allocated by :class:`~plasma.allocator.Allocator`.

Semantics the coordinator mirrors:

* ``create`` gives the creator one reference; ``seal`` keeps it; the creator releases it
  (``create_and_seal`` = create, seal, release). An unsealed object cannot be released,
  only sealed or aborted. Objects registered by ``seal_arena`` start with no reference.
* An object occupies one allocation of ``max(1, data_size + metadata_size)`` bytes rounded
  up to the alignment: data first, metadata right after it.
* Sealed objects with no reference sit in a per-node LRU (ordered by when they last lost
  their last reference) and are evicted oldest first when space is needed.
* ``get`` takes a reference for each sealed id (per occurrence) as soon as it is found, so a
  waiting get's already-sealed inputs cannot be evicted under it. ``delete`` of a referenced
  object hides it at once and frees it when the last reference goes.
* A pending create or get is answered later by a :class:`CreateDone` / :class:`GetDone`
  event. Pending creates are retried in FIFO order whenever space may have appeared (a
  request for a node that still does not fit blocks later ones for that node). A new create
  does not queue behind pending ones.
* Subscribers get a :class:`Notify` ``"sealed"`` per seal and ``"deleted"`` per delete or
  eviction. Events for a client that disconnected meanwhile are safe to drop.
"""

from __future__ import annotations

import builtins
import heapq
from collections import OrderedDict
from typing import Any, Protocol

import msgspec

from plasma.allocator import Allocator
from plasma.errors import (
    BadRequest,
    ObjectExists,
    ObjectNotFound,
    ObjectNotSealed,
    PlacementImpossible,
    PlasmaError,
    StoreFull,
)
from plasma.ids import ID_SIZE
from plasma.protocol import ArenaObject, CreateItem, ObjectInfo, ObjectLocation

NOT_SEALED = "object_not_sealed"
NOT_FOUND = "object_not_found"
TIMED_OUT = "timeout"


class SegmentProvider(Protocol):
    """Creates and frees the shared-memory segments objects are carved from."""

    def new_segment(self, node: int, size: int) -> int:
        """A new segment of ``size`` bytes (a page multiple) on ``node``; returns its id.

        May raise :class:`~plasma.errors.PlasmaError` (StoreFull, Unsupported).
        """
        ...

    def free_segment(self, segment: int) -> None: ...


# ---------------------------------------------------------------- events


class Pending(msgspec.Struct, gc=False):
    """An operation that completes later with an event carrying the same ``token``."""

    token: int


class GetDone(msgspec.Struct, gc=False):
    """A waiting get finished: per id a location (reference taken) or an error code."""

    client: int
    token: int
    results: list[ObjectLocation | str]


class CreateDone(msgspec.Struct):
    """A pending create finished: the locations (creator holds a reference) or the error."""

    client: int
    token: int
    result: list[ObjectLocation] | PlasmaError


class Notify(msgspec.Struct, gc=False):
    """For a subscriber: ``kind`` is "sealed" or "deleted" (deleted or evicted).

    ``location`` is set on "sealed" for ``with_locations`` subscribers, who then hold a
    reference to the object and must release it.
    """

    client: int
    kind: str
    oid: bytes
    data_size: int
    metadata_size: int
    location: ObjectLocation | None = None


class Revoke(msgspec.Struct, gc=False):
    """For a client holding a reference to an object whose delete waits for it: release the
    reference as soon as it is not in use (clients cache released objects for quick gets)."""

    client: int
    oid: bytes


Event = GetDone | CreateDone | Notify | Revoke


# ---------------------------------------------------------------- records


class _Segment:
    __slots__ = ("alloc", "id", "node", "size")

    def __init__(self, segment_id: int, node: _Node, size: int, alignment: int) -> None:
        self.id = segment_id
        self.node = node
        self.size = size
        self.alloc = Allocator(size, alignment)


class _Node:
    __slots__ = ("budget", "id", "lru", "objects", "segment_bytes", "segments", "shortage", "used")

    def __init__(self, node_id: int, budget: int) -> None:
        self.id = node_id
        self.budget = budget
        self.segments: list[_Segment] = []
        self.segment_bytes = 0
        self.used = 0
        self.objects = 0
        self.shortage = ""  # why the provider last failed to make a segment (e.g. no hugepages)
        # sealed, unreferenced objects: oid -> tick at which they became unreferenced
        self.lru: OrderedDict[bytes, int] = OrderedDict()


class _Object(msgspec.Struct, gc=False):
    """One object's record (a C-level struct: fast to create, small)."""

    loc: ObjectLocation
    segment: _Segment
    size: int  # allocated bytes
    owner: int  # creator's client id
    create_time: float
    sealed: bool = False
    deleting: bool = False
    ref_count: int = 0


class _Arena:
    __slots__ = ("cursor", "end", "segment", "start")

    def __init__(self, segment: _Segment, start: int, end: int) -> None:
        self.segment = segment
        self.start = start
        self.end = end
        self.cursor = start  # first byte not yet handed to an object or returned


class _GetWaiter:
    __slots__ = ("client", "deadline", "done", "missing", "oids", "results", "token")

    def __init__(self, client: int, token: int, oids: list[bytes], results: list) -> None:
        self.client = client
        self.token = token
        self.oids = oids
        self.results: list[ObjectLocation | str | None] = results
        self.missing = results.count(None)
        self.deadline: float | None = None
        self.done = False


class _CreateWaiter:
    __slots__ = ("client", "deadline", "done", "items", "node", "now", "token")

    def __init__(
        self, client: int, token: int, items: list[CreateItem], node: _Node, now: float
    ) -> None:
        self.client = client
        self.token = token
        self.items = items
        self.node = node
        self.now = now  # the request's time, the objects' create_time
        self.deadline: float | None = None
        self.done = False


class _Client:
    __slots__ = ("arena", "creating", "id", "node", "refs", "waiters")

    def __init__(self, client_id: int, node: int | None) -> None:
        self.id = client_id
        self.node = node
        self.refs: dict[bytes, int] = {}
        self.creating: set[bytes] = set()
        self.waiters: set[_GetWaiter | _CreateWaiter] = set()
        self.arena: _Arena | None = None


# ---------------------------------------------------------------- the store


class Store:
    """Object table over per-node segment budgets. See the module docstring for semantics.

    ``budgets`` maps NUMA node -> bytes (the sum of that node's segment sizes never exceeds
    it). ``max_object_size`` (data + metadata) defaults to no limit beyond the budgets.
    """

    def __init__(
        self,
        budgets: dict[int, int],
        provider: SegmentProvider,
        *,
        page_size: int = 4096,
        segment_size: int = 64 * 2**20,
        alignment: int = 64,
        max_object_size: int | None = None,
    ) -> None:
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment}")
        if page_size <= 0 or page_size & (page_size - 1) or page_size < alignment:
            raise ValueError(f"page_size must be a power of two >= alignment, got {page_size}")
        if not budgets or any(b < 0 for b in budgets.values()):
            raise ValueError(f"budgets need at least one node and no negative size: {budgets}")
        if segment_size <= 0:
            raise ValueError(f"segment_size must be positive, got {segment_size}")
        if max_object_size is not None and max_object_size <= 0:
            raise ValueError(f"max_object_size must be positive, got {max_object_size}")
        self._provider = provider
        self._page_size = page_size
        self._segment_size = -(-segment_size // page_size) * page_size
        self._mask = alignment - 1
        self._max_object_size = max_object_size
        self._nodes = {n: _Node(n, b) for n, b in sorted(budgets.items())}
        self._first_node = next(iter(self._nodes.values()))
        self._segments: dict[int, _Segment] = {}
        self._objects: dict[bytes, _Object] = {}
        self._clients: dict[int, _Client] = {}
        self._subscribers: dict[int, bool] = {}  # client -> with_locations
        self._get_waiting: dict[bytes, list[tuple[_GetWaiter, int]]] = {}
        self._create_waiters: dict[int, _CreateWaiter] = {}  # FIFO by token
        self._get_waiter_count = 0
        self._deadlines: list[tuple[float, int, _GetWaiter | _CreateWaiter]] = []
        self._dead_deadlines = 0
        self._events: list[Event] = []
        self._used = 0
        self._tick = 0
        self._token = 0
        self._space_changed = False
        self._evictions = 0

    # ------------------------------------------------------------ clients

    def register_client(self, client: int, node: int | None = None) -> None:
        """Add a client; ``node`` is its default node (None: most free bytes per create)."""
        if client in self._clients:
            raise BadRequest(f"client {client} is already registered")
        if node is not None and node not in self._nodes:
            raise PlacementImpossible(f"node {node} is not one of {list(self._nodes)}")
        self._clients[client] = _Client(client, node)

    def disconnect(self, client: int) -> None:
        """Forget a client: abort its unsealed objects, drop its references, waiters, arena
        tail and subscription. Unknown clients are ignored (safe in cleanup paths)."""
        c = self._clients.pop(client, None)
        if c is None:
            return
        self._subscribers.pop(client, None)
        for w in c.waiters:
            self._cancel(w)
        c.waiters.clear()
        for oid, n in c.refs.items():
            rec = self._objects[oid]
            rec.ref_count -= n
            if not rec.sealed:
                self._free_object(oid, rec)  # only its creator references an unsealed object
            elif rec.ref_count == 0:
                self._unreferenced(oid, rec)
        c.refs.clear()
        c.creating.clear()
        if c.arena is not None:
            self._return_arena_tail(c)
        self._retry_creates()

    def subscribe(self, client: int, with_locations: bool = False) -> None:
        """Send this client a Notify per seal, delete and eviction from now on."""
        self._client(client)
        self._subscribers[client] = with_locations

    # ------------------------------------------------------------ create / seal / abort

    def create(
        self,
        client: int,
        oid: bytes,
        data_size: int,
        metadata_size: int = 0,
        node: int | None = None,
        *,
        timeout: float | None = 0.0,
        now: float = 0.0,
    ) -> ObjectLocation | Pending:
        """Allocate an unsealed object; the creator holds one reference.

        When there is no space even after eviction: StoreFull with ``timeout`` 0, else a
        :class:`Pending` answered by a CreateDone (``None`` waits forever).
        """
        c = self._client(client)
        size = self._object_size(oid, data_size, metadata_size)
        nd = self._choose_node(c, node)
        deadline = self._deadline(timeout, now)
        if oid in self._objects:
            raise ObjectExists(f"object {oid.hex()} already exists")
        if size > nd.budget:
            raise StoreFull(f"{size} bytes exceed node {nd.id}'s budget of {nd.budget}")
        placed = self._allocate(nd, size)
        if placed is not None:
            return self._register(c, oid, data_size, metadata_size, placed, size, now)
        self._retry_creates()  # what eviction freed may fit an earlier, smaller request
        if timeout == 0:
            raise StoreFull(f"no space for {size} bytes on node {nd.id}{nd.shortage}")
        return self._park_create(c, [CreateItem(oid, data_size, metadata_size)], nd, deadline, now)

    def create_many(
        self,
        client: int,
        items: list[CreateItem],
        node: int | None = None,
        *,
        timeout: float | None = 0.0,
        now: float = 0.0,
    ) -> list[ObjectLocation] | Pending:
        """Create all ``items`` on one node or none of them (same waiting rules as create)."""
        c = self._client(client)
        total = 0
        seen: set[bytes] = set()
        for it in items:
            total += self._object_size(it.id, it.data_size, it.metadata_size)
            if it.id in seen:
                raise BadRequest(f"object {it.id.hex()} appears twice in one create")
            seen.add(it.id)
        nd = self._choose_node(c, node)
        deadline = self._deadline(timeout, now)
        if total > nd.budget:
            raise StoreFull(f"{total} bytes exceed node {nd.id}'s budget of {nd.budget}")
        done = self._try_create(c, items, nd, now)
        if done is not None:
            return done
        self._retry_creates()
        if timeout == 0:
            raise StoreFull(f"no space for {total} bytes on node {nd.id}{nd.shortage}")
        return self._park_create(c, list(items), nd, deadline, now)

    def _unsealed_of(self, client: int, oid: bytes, sealed_error: str) -> _Object:
        """The record of an object ``client`` created and has not sealed yet."""
        rec = self._objects.get(oid)
        if rec is None or rec.deleting:
            raise ObjectNotFound(f"object {oid.hex()} not found")
        if rec.owner != client:
            raise BadRequest(f"object {oid.hex()} was created by another client")
        if rec.sealed:
            raise BadRequest(f"object {oid.hex()} {sealed_error}")
        return rec

    def seal(self, client: int, oid: bytes) -> None:
        """Make the creator's object immutable; wakes getters and notifies subscribers."""
        rec = self._unsealed_of(client, oid, "is already sealed")
        rec.sealed = True
        self._clients[client].creating.discard(oid)
        self._announce(oid, rec)

    def abort(self, client: int, oid: bytes) -> None:
        """Drop an unsealed object of this client, with its creator reference."""
        rec = self._unsealed_of(client, oid, "is sealed; delete it instead")
        c = self._clients[client]
        c.creating.discard(oid)
        del c.refs[oid]
        self._free_object(oid, rec)
        self._retry_creates()

    # ------------------------------------------------------------ get / release / delete

    def get(
        self,
        client: int,
        oids: list[bytes],
        *,
        timeout: float | None = None,
        now: float = 0.0,
    ) -> list[ObjectLocation | str] | Pending:
        """Locations of sealed objects, one reference per occurrence.

        If some id is not sealed: with ``timeout`` 0 its result is "object_not_sealed" or
        "object_not_found"; otherwise a Pending, answered by GetDone when all are sealed or
        at the deadline (then "timeout" for those still missing). ``None`` waits forever.
        """
        c = self._client(client)
        deadline = self._deadline(timeout, now)
        objects = self._objects
        results: list[ObjectLocation | str | None] = []
        missing = False
        for oid in oids:
            rec = objects.get(oid)
            if rec is not None and rec.sealed and not rec.deleting:
                self._add_ref(c, oid, rec)
                results.append(rec.loc)
            else:
                results.append(None)
                missing = True
        if not missing:
            return results  # type: ignore[return-value]  # no None left
        if timeout == 0:
            for i, r in enumerate(results):
                if r is None:
                    rec = objects.get(oids[i])
                    results[i] = NOT_SEALED if rec is not None and not rec.deleting else NOT_FOUND
            return results  # type: ignore[return-value]
        self._token += 1
        w = _GetWaiter(client, self._token, list(oids), results)
        for i, r in enumerate(results):
            if r is None:
                self._get_waiting.setdefault(oids[i], []).append((w, i))
        self._get_waiter_count += 1
        self._add_waiter(c, w, deadline)
        return Pending(w.token)

    def release(self, client: int, oid: bytes) -> None:
        """Drop one reference of this client (ObjectNotFound if it holds none)."""
        c = self._client(client)
        n = c.refs.get(oid)
        if n is None:
            raise ObjectNotFound(f"client {client} holds no reference to {oid.hex()}")
        rec = self._objects[oid]
        if not rec.sealed:
            raise ObjectNotSealed(f"object {oid.hex()} is not sealed; seal or abort it")
        if n == 1:
            del c.refs[oid]
        else:
            c.refs[oid] = n - 1
        rec.ref_count -= 1
        if rec.ref_count == 0:
            self._unreferenced(oid, rec)
            self._retry_creates()

    def delete(
        self, client: int, oids: list[bytes]
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """Delete sealed objects: ``(deleted, deferred, missing)``.

        Deferred objects are still referenced: hidden now, freed with the last reference.
        Unsealed, absent or already deleted ids are missing.
        """
        self._client(client)
        deleted: list[bytes] = []
        deferred: list[bytes] = []
        missing: list[bytes] = []
        for oid in oids:
            rec = self._objects.get(oid)
            if rec is None or not rec.sealed or rec.deleting:
                missing.append(oid)
                continue
            if rec.ref_count:
                rec.deleting = True
                deferred.append(oid)
                self._events.extend(
                    Revoke(cid, oid) for cid, c in self._clients.items() if oid in c.refs
                )
            else:
                rec.segment.node.lru.pop(oid)
                self._free_object(oid, rec)
                deleted.append(oid)
            self._notify_deleted(oid, rec)
        self._retry_creates()
        return deleted, deferred, missing

    # ------------------------------------------------------------ queries

    def contains(self, oid: bytes) -> bool:
        """True for a sealed object that is not being deleted."""
        rec = self._objects.get(oid)
        return rec is not None and rec.sealed and not rec.deleting

    def info(self, oid: bytes) -> ObjectInfo:
        rec = self._objects.get(oid)
        if rec is None or rec.deleting:
            raise ObjectNotFound(f"object {oid.hex()} not found")
        return self._info(oid, rec)

    def list(self) -> list[ObjectInfo]:
        """Every visible object (unsealed ones too; not those pending deletion)."""
        return [self._info(oid, rec) for oid, rec in self._objects.items() if not rec.deleting]

    def evict(self, nbytes: int) -> int:
        """Evict LRU sealed unreferenced objects of any node until ``nbytes`` are freed;
        returns the bytes freed (allocation sizes)."""
        if nbytes < 0:
            raise BadRequest(f"nbytes must not be negative, got {nbytes}")
        freed = 0
        nodes = self._nodes.values()
        while freed < nbytes:
            oldest: _Node | None = None
            oldest_tick = 0
            for nd in nodes:
                if nd.lru:
                    tick = next(iter(nd.lru.values()))
                    if oldest is None or tick < oldest_tick:
                        oldest, oldest_tick = nd, tick
            if oldest is None:
                break
            freed += self._evict_one(oldest)
        self._retry_creates()
        return freed

    def stats(self) -> dict[str, Any]:
        """Capacity and usage, totals and per node, plus client and waiter counts."""
        return {
            "capacity": sum(nd.budget for nd in self._nodes.values()),
            "used": self._used,
            "objects": len(self._objects),
            "arena_bytes": sum(
                c.arena.end - c.arena.cursor for c in self._clients.values() if c.arena
            ),
            "evictions": self._evictions,
            "clients": len(self._clients),
            "subscribers": len(self._subscribers),
            "get_waiters": self._get_waiter_count,
            "create_waiters": len(self._create_waiters),
            "nodes": {
                nd.id: {
                    "capacity": nd.budget,
                    "used": nd.used,
                    "objects": nd.objects,
                    "segments": len(nd.segments),
                    "segment_bytes": nd.segment_bytes,
                }
                for nd in self._nodes.values()
            },
        }

    def segments(self) -> builtins.list[tuple[int, int, int]]:
        """``(segment id, node, size)`` of every live segment."""
        return [(s.id, s.node.id, s.size) for s in self._segments.values()]

    # ------------------------------------------------------------ arenas

    def grant_arena(self, client: int, size: int, node: int | None = None) -> tuple[int, int, int]:
        """Reserve ``size`` bytes (rounded up) for the client to carve objects from:
        ``(segment, offset, size)``. Returns the unused tail of its previous arena first."""
        c = self._client(client)
        if size <= 0:
            raise BadRequest(f"arena size must be positive, got {size}")
        n = (size + self._mask) & ~self._mask
        nd = self._choose_node(c, node)
        if c.arena is not None:
            self._return_arena_tail(c)
        if n > nd.budget:
            raise StoreFull(f"{n} bytes exceed node {nd.id}'s budget of {nd.budget}")
        placed = self._allocate(nd, n)
        if placed is None:
            self._retry_creates()
            raise StoreFull(f"no space for an arena of {n} bytes on node {nd.id}{nd.shortage}")
        seg, offset = placed
        c.arena = _Arena(seg, offset, offset + n)
        self._retry_creates()
        return seg.id, offset, n

    def seal_arena(
        self, client: int, segment: int, objects: builtins.list[ArenaObject], *, now: float = 0.0
    ) -> None:
        """Register objects the client wrote into its arena, as sealed with no reference.

        Each must lie in the arena, be aligned and start at or after the end of the previous
        one (bump order); each occupies ``max(1, data + metadata)`` bytes rounded up to the
        alignment. Raises at the first bad object (BadRequest, or ObjectExists for a known
        id); the objects before it stay registered. Bytes skipped between objects are freed.
        """
        c = self._client(client)
        a = c.arena
        if a is None or a.segment.id != segment:
            raise BadRequest(f"client {client} holds no arena in segment {segment}")
        try:
            for obj in objects:
                self._seal_arena_object(c, a, obj, now)
        finally:
            self._retry_creates()

    # ------------------------------------------------------------ timeouts and events

    def next_deadline(self) -> float | None:
        """The earliest deadline of a waiting get or create, or None."""
        heap = self._deadlines
        while heap and heap[0][2].done:
            heapq.heappop(heap)
            self._dead_deadlines -= 1
        return heap[0][0] if heap else None

    def expire(self, now: float) -> None:
        """Finish every waiter whose deadline is at or before ``now``."""
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            _, _, w = heapq.heappop(heap)
            if w.done:
                self._dead_deadlines -= 1
                continue
            w.done = True
            self._clients[w.client].waiters.discard(w)
            if isinstance(w, _GetWaiter):
                self._unindex(w)
                results = [TIMED_OUT if r is None else r for r in w.results]
                self._get_waiter_count -= 1
                self._events.append(GetDone(w.client, w.token, results))
            else:
                del self._create_waiters[w.token]
                err = StoreFull(
                    f"no space on node {w.node.id} before the deadline{w.node.shortage}"
                )
                self._events.append(CreateDone(w.client, w.token, err))

    def drain_events(self) -> builtins.list[Event]:
        """Events produced since the last call, oldest first."""
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ internals: validation

    def _client(self, client: int) -> _Client:
        c = self._clients.get(client)
        if c is None:
            raise BadRequest(f"unknown client {client}")
        return c

    def _object_size(self, oid: bytes, data_size: int, metadata_size: int) -> int:
        if not isinstance(oid, bytes) or len(oid) != ID_SIZE:
            raise BadRequest(f"object id must be {ID_SIZE} bytes, got {oid!r}")
        if data_size < 0 or metadata_size < 0:
            raise BadRequest(f"negative size: data {data_size}, metadata {metadata_size}")
        total = data_size + metadata_size
        if self._max_object_size is not None and total > self._max_object_size:
            raise BadRequest(f"{total} bytes exceed the maximum of {self._max_object_size}")
        return ((total or 1) + self._mask) & ~self._mask

    def _choose_node(self, c: _Client, node: int | None) -> _Node:
        if node is None:
            node = c.node
        if node is None:
            if len(self._nodes) == 1:
                return self._first_node
            return max(self._nodes.values(), key=lambda nd: nd.budget - nd.used)  # ties: lowest
        nd = self._nodes.get(node)
        if nd is None:
            raise PlacementImpossible(f"node {node} is not one of {list(self._nodes)}")
        return nd

    def _deadline(self, timeout: float | None, now: float) -> float | None:
        if timeout is None:
            return None
        if timeout < 0:
            raise BadRequest(f"timeout must not be negative, got {timeout}")
        return now + timeout

    # ------------------------------------------------------------ internals: memory

    def _allocate(self, nd: _Node, size: int) -> tuple[_Segment, int] | None:
        """Place ``size`` aligned bytes on ``nd``: existing segments, a new segment, then
        eviction in LRU order. None when nothing more can be evicted."""
        while True:
            for seg in nd.segments:
                offset = seg.alloc.allocate(size)
                if offset is not None:
                    nd.used += size
                    self._used += size
                    return seg, offset
            if self._grow(nd, size) is None and not self._evict_one(nd):
                return None

    def _grow(self, nd: _Node, size: int) -> _Segment | None:
        """A new segment big enough for ``size`` within the budget, freeing empty segments
        of the node if that makes room; None if impossible."""
        page = self._page_size
        need = -(-size // page) * page
        avail = (nd.budget - nd.segment_bytes) // page * page
        if avail < need:
            empty = [s for s in nd.segments if s.alloc.free_bytes == s.size]
            if avail + sum(s.size for s in empty) < need:
                return None
            empty.sort(key=lambda s: s.size, reverse=True)
            for s in empty:
                self._drop_segment(s)
                avail = (nd.budget - nd.segment_bytes) // page * page
                if avail >= need:
                    break
        seg_size = min(max(self._segment_size, need), avail)
        try:
            segment_id = self._provider.new_segment(nd.id, seg_size)
        except StoreFull as exc:
            nd.shortage = f": {exc}"
            return None
        nd.shortage = ""
        seg = _Segment(segment_id, nd, seg_size, self._mask + 1)
        self._segments[segment_id] = seg
        nd.segments.append(seg)
        nd.segment_bytes += seg_size
        return seg

    def _drop_segment(self, seg: _Segment) -> None:
        nd = seg.node
        nd.segments.remove(seg)
        nd.segment_bytes -= seg.size
        del self._segments[seg.id]
        self._provider.free_segment(seg.id)

    def _free_range(self, seg: _Segment, offset: int, size: int) -> None:
        seg.alloc.free(offset, size)
        seg.node.used -= size
        self._used -= size
        self._space_changed = True

    def _free_object(self, oid: bytes, rec: _Object) -> None:
        del self._objects[oid]
        rec.segment.node.objects -= 1
        self._free_range(rec.segment, rec.loc.offset, rec.size)

    def _evict_one(self, nd: _Node) -> int:
        """Evict the node's least recently used unreferenced object; its size or 0."""
        if not nd.lru:
            return 0
        oid, _ = nd.lru.popitem(last=False)
        rec = self._objects[oid]
        self._free_object(oid, rec)
        self._evictions += 1
        self._notify_deleted(oid, rec)
        return rec.size

    def _return_arena_tail(self, c: _Client) -> None:
        a = c.arena
        assert a is not None
        if a.cursor < a.end:
            self._free_range(a.segment, a.cursor, a.end - a.cursor)
        c.arena = None

    # ------------------------------------------------------------ internals: objects

    def _register(
        self,
        c: _Client,
        oid: bytes,
        data_size: int,
        metadata_size: int,
        placed: tuple[_Segment, int],
        size: int,
        now: float,
    ) -> ObjectLocation:
        seg, offset = placed
        nd = seg.node
        loc = ObjectLocation(seg.id, offset, data_size, metadata_size, nd.id)
        rec = _Object(loc, seg, size, c.id, now, ref_count=1)
        self._objects[oid] = rec
        nd.objects += 1
        c.refs[oid] = 1
        c.creating.add(oid)
        return loc

    def _try_create(
        self, c: _Client, items: builtins.list[CreateItem], nd: _Node, now: float
    ) -> builtins.list[ObjectLocation] | None:
        """All items or nothing; None when space is short. Raises ObjectExists."""
        for it in items:
            if it.id in self._objects:
                raise ObjectExists(f"object {it.id.hex()} already exists")
        placed: builtins.list[tuple[_Segment, int, int]] = []
        for it in items:
            size = (((it.data_size + it.metadata_size) or 1) + self._mask) & ~self._mask
            p = self._allocate(nd, size)
            if p is None:
                for seg, offset, sz in placed:
                    self._free_range(seg, offset, sz)
                return None
            placed.append((p[0], p[1], size))
        return [
            self._register(c, it.id, it.data_size, it.metadata_size, (seg, off), size, now)
            for it, (seg, off, size) in zip(items, placed, strict=True)
        ]

    def _seal_arena_object(self, c: _Client, a: _Arena, obj: ArenaObject, now: float) -> None:
        oid, offset = obj.id, obj.offset
        size = self._object_size(oid, obj.data_size, obj.metadata_size)
        if offset < a.start or offset + size > a.end:
            raise BadRequest(
                f"object {oid.hex()} at [{offset}, {offset + size}) is outside the arena "
                f"[{a.start}, {a.end})"
            )
        if offset & self._mask:
            raise BadRequest(f"object {oid.hex()} offset {offset} is not aligned")
        if offset < a.cursor:
            raise BadRequest(
                f"object {oid.hex()} at {offset} overlaps an earlier object (next free {a.cursor})"
            )
        if oid in self._objects:
            raise ObjectExists(f"object {oid.hex()} already exists")
        seg = a.segment
        if offset > a.cursor:
            self._free_range(seg, a.cursor, offset - a.cursor)
        a.cursor = offset + size
        nd = seg.node
        loc = ObjectLocation(seg.id, offset, obj.data_size, obj.metadata_size, nd.id)
        rec = _Object(loc, seg, size, c.id, now, sealed=True)
        self._objects[oid] = rec
        nd.objects += 1
        self._announce(oid, rec)
        if rec.ref_count == 0:
            self._unreferenced(oid, rec)

    def _add_ref(self, c: _Client, oid: bytes, rec: _Object) -> None:
        if rec.ref_count == 0:
            rec.segment.node.lru.pop(oid, None)
        rec.ref_count += 1
        refs = c.refs
        refs[oid] = refs.get(oid, 0) + 1

    def _unreferenced(self, oid: bytes, rec: _Object) -> None:
        """A sealed object lost its last reference: free it if deleted, else make it LRU."""
        if rec.deleting:
            self._free_object(oid, rec)
        else:
            self._tick += 1
            rec.segment.node.lru[oid] = self._tick
            self._space_changed = True

    def _info(self, oid: bytes, rec: _Object) -> ObjectInfo:
        loc = rec.loc
        state = "sealed" if rec.sealed else "created"
        return ObjectInfo(
            oid,
            loc.data_size,
            loc.metadata_size,
            loc.node,
            state,
            rec.ref_count,
            rec.create_time,
            rec.owner,
        )

    # ------------------------------------------------------------ internals: notifications

    def _announce(self, oid: bytes, rec: _Object) -> None:
        """A new sealed object: complete get waiters, notify subscribers."""
        waiting = self._get_waiting.pop(oid, None)
        if waiting:
            for w, i in waiting:
                self._add_ref(self._clients[w.client], oid, rec)
                w.results[i] = rec.loc
                w.missing -= 1
                if w.missing == 0:
                    self._finish_get(w)
        if self._subscribers:
            loc = rec.loc
            for sub, with_locations in self._subscribers.items():
                if with_locations:
                    self._add_ref(self._clients[sub], oid, rec)
                    self._events.append(
                        Notify(sub, "sealed", oid, loc.data_size, loc.metadata_size, loc)
                    )
                else:
                    self._events.append(
                        Notify(sub, "sealed", oid, loc.data_size, loc.metadata_size)
                    )

    def _notify_deleted(self, oid: bytes, rec: _Object) -> None:
        loc = rec.loc
        for sub in self._subscribers:
            self._events.append(Notify(sub, "deleted", oid, loc.data_size, loc.metadata_size))

    # ------------------------------------------------------------ internals: waiters

    def _add_waiter(
        self, c: _Client, w: _GetWaiter | _CreateWaiter, deadline: float | None
    ) -> None:
        c.waiters.add(w)
        w.deadline = deadline
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, w.token, w))

    def _park_create(
        self,
        c: _Client,
        items: builtins.list[CreateItem],
        nd: _Node,
        deadline: float | None,
        now: float,
    ) -> Pending:
        self._token += 1
        w = _CreateWaiter(c.id, self._token, items, nd, now)
        self._create_waiters[w.token] = w
        self._add_waiter(c, w, deadline)
        return Pending(w.token)

    def _finish_get(self, w: _GetWaiter) -> None:
        self._retire(w)
        self._get_waiter_count -= 1
        self._clients[w.client].waiters.discard(w)
        self._events.append(GetDone(w.client, w.token, w.results))  # type: ignore[arg-type]

    def _retire(self, w: _GetWaiter | _CreateWaiter) -> None:
        """Mark finished; its heap entry (if any) becomes garbage, compacted when dominant."""
        w.done = True
        if w.deadline is None:
            return
        self._dead_deadlines += 1
        heap = self._deadlines
        if self._dead_deadlines > 64 and self._dead_deadlines * 2 > len(heap):
            self._deadlines = [e for e in heap if not e[2].done]
            heapq.heapify(self._deadlines)
            self._dead_deadlines = 0

    def _cancel(self, w: _GetWaiter | _CreateWaiter) -> None:
        self._retire(w)
        if isinstance(w, _GetWaiter):
            self._unindex(w)
            self._get_waiter_count -= 1
        else:
            del self._create_waiters[w.token]

    def _unindex(self, w: _GetWaiter) -> None:
        for oid in {w.oids[i] for i, r in enumerate(w.results) if r is None}:
            entries = [e for e in self._get_waiting.get(oid, ()) if e[0] is not w]
            if entries:
                self._get_waiting[oid] = entries
            else:
                self._get_waiting.pop(oid, None)

    def _retry_creates(self) -> None:
        """After space may have appeared: retry pending creates in FIFO order."""
        if not self._space_changed:
            return
        self._space_changed = False
        if not self._create_waiters:
            return
        blocked: set[int] = set()
        for w in list(self._create_waiters.values()):
            if w.node.id in blocked:
                continue
            c = self._clients[w.client]
            result: builtins.list[ObjectLocation] | PlasmaError | None
            try:
                result = self._try_create(c, w.items, w.node, w.now)
            except PlasmaError as exc:
                result = exc
            if result is None:
                blocked.add(w.node.id)
                continue
            del self._create_waiters[w.token]
            self._retire(w)
            c.waiters.discard(w)
            self._events.append(CreateDone(w.client, w.token, result))
        self._space_changed = False
