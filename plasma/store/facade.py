"""The store's façade (internal, sans-I/O): the API the coordinator calls, over its parts.

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
* Sealed objects with no reference sit in a per-node CLOCK ring (ordered by when they
  last lost their last reference, :mod:`plasma.store.eviction`) and are evicted from it
  when space is needed.
* ``get`` takes a reference for each sealed id (per occurrence) as soon as it is found, so a
  waiting get's already-sealed inputs cannot be evicted under it. ``delete`` of a referenced
  object hides it at once and frees it when the last reference goes.
* A pending create or get is answered later by a :class:`CreateDone` / :class:`GetDone`
  event. Pending creates are retried in FIFO order whenever space may have appeared (a
  request for a node that still does not fit blocks later ones for that node). A new create
  does not queue behind pending ones.
* Subscribers get a :class:`Notify` ``"sealed"`` per seal and ``"deleted"`` per delete or
  eviction. A ``with_locations`` subscriber's notification carries a reference only while
  the objects it references stay under ``subscriber_pin_limit`` bytes; beyond that it gets
  the plain notification (and must ``get``), so a subscriber that falls behind never pins
  the store. Events for a client that disconnected meanwhile are safe to drop.
* Eviction happens only when it makes the request fit (see :meth:`Store._eviction_plan`).
* Clients keep memory the store cannot take back by itself: the unused tail of their arena
  and references they cache for quick gets. When a request does not fit, the store asks
  each such client (at most once per ``RECLAIM_INTERVAL``) with a :class:`AskReclaim` event
  to return them, and a create that would fail at once waits up to ``RECLAIM_WAIT`` for
  the answer. Arenas on a node never reserve more than a quarter of its budget beyond what
  the objects at hand need.
* A client has at most ``max_waiters`` gets and creates waiting at once, naming at most
  ``max_waiting_ids`` ids in all.
* Every sealed object is published in the shared directory (:mod:`plasma.directory`), where
  clients get it with no request by pinning it in their pin table. Bytes a pin may hold are
  never freed: a deleted or evicted object's slot is marked dying, and its memory is freed
  only when a scan of the pin tables ``grace`` seconds later (or any later one) finds no pin
  on it. The id of a deleted object no reference holds can be created again at once (pins
  do not hold the id; references do, as before). An eviction victim found
  pinned stays (eviction goes on to others); a create that waits for evicted memory is a
  Pending even with timeout 0. Eviction order is CLOCK: objects in the order they lost
  their last reference, skipping (and moving back) those a reader touched since the hand
  last passed, and those pinned now. The ref counts :meth:`objects` shows include pins.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Iterable
from typing import Any

from plasma.directory import (
    DYING,
    MIN_CAPACITY,
    REPLICA,
    SEALED,
    PinScanner,
)
from plasma.errors import (
    IO_ERROR,
    OBJECT_LOST,
    STORE_FULL,
    BadRequest,
    ObjectExists,
    ObjectNotFound,
    ObjectNotSealed,
    PlacementImpossible,
    PlasmaError,
    StoreFull,
)
from plasma.follow import ReaderTracker
from plasma.ids import ID_SIZE, replica_id
from plasma.records import ArenaObject, CreateItem, ObjectInfo, ObjectLocation, SpillEntry
from plasma.store.arenas import Arena, arena_size
from plasma.store.clients import ClientRecord
from plasma.store.directory_memory import DirectoryMemory, LocalDirectoryMemory
from plasma.store.dying import DyingSet
from plasma.store.events import (
    AskReclaim,
    Copy,
    CreateDone,
    DirectoryMoved,
    Event,
    GetDone,
    Grant,
    MigrateDone,
    Notify,
    Pending,
    Place,
    ReplicateDone,
    Restore,
    Revoke,
    SegmentFreed,
    SpillDead,
)
from plasma.store.eviction import more_victims, plan_room
from plasma.store.holders import Held, count_held, holders_report, no_space_text
from plasma.store.memory import Memory, Node, Segment, SegmentProvider
from plasma.store.moves import (
    CopyJob,
    FreedRange,
    MoveJob,
    Placements,
    RehomeJob,
    check_movable,
    check_room,
    copied_answer,
    copies_wanted,
    moved_answer,
)
from plasma.store.objects import (
    GONE,
    IN_MEMORY,
    READABLE,
    Io,
    ObjectRecord,
    State,
    Step,
    begin_io,
    end_io,
    object_info,
    step,
)
from plasma.store.pages import page_range, round_up
from plasma.store.publisher import Publisher
from plasma.store.slots import kept_duration
from plasma.store.spill import SpillBook, adopted_record, restore_order
from plasma.store.table import IDLE_RECORDS, ObjectTable
from plasma.store.waiters import CreateAnswer, CreateWaiter, GetWaiter, Waiters

RECLAIM_INTERVAL = 1.0  # seconds between two AskReclaim events to the same client
RECLAIM_WAIT = 0.25  # seconds a create that would fail at once waits for reclaimed memory
GRACE = 0.002  # seconds from marking an object dying to scanning the pin tables for it
EVICTION_WAIT = 0.25  # seconds a create with timeout 0 waits for the memory it evicts
EVICTION_HEADROOM = 64  # a round of eviction frees at least 1/64 of the node's budget
SPILL_WAIT = 10.0  # seconds a create or get with timeout 0 waits for a spill or a restore
SPILL_MAX_OBJECTS = 1_000_000  # objects with a copy on disk at most, by default
MAX_WAITING_IDS = 1 << 16  # ids a client's waiting gets and creates may name in all

NOT_SEALED = "object_not_sealed"
NOT_FOUND = "object_not_found"
TIMED_OUT = "timeout"


# ---------------------------------------------------------------- the store


class Store:
    """Object table over per-node segment budgets. See the module docstring for semantics.

    ``budgets`` maps NUMA node -> bytes, rounded down to whole pages (the sum of that node's
    segment sizes never exceeds it). ``max_object_size`` (data + metadata) defaults to no
    limit beyond the budgets. ``max_waiters`` bounds each client's waiting gets and creates,
    ``max_waiting_ids`` the ids they name in all;
    ``subscriber_pin_limit`` (default: an eighth of the capacity) the bytes a
    ``with_locations`` subscription may keep referenced; ``reclaim_wait`` is how long a
    create that would fail at once waits for memory asked back with AskReclaim. ``grace`` is
    the wait between marking an object dying and scanning the pin tables (0 scans at once:
    only for a store no client reads without requests); ``directory_memory`` makes the
    directory's shared memory (default: process memory). Every ``now`` the store is given
    is a monotonic clock's (deadlines, grace periods and rescans must not jump with the wall
    clock); ``wall_clock`` (when given) stamps the objects' ``create_time`` (else ``now``).

    With ``spill``, eviction never deletes: it drops only objects that have a copy on disk,
    and asks for copies (:meth:`spill_batch`, written by the caller, then :meth:`spilled`)
    when that is what a create waits for; objects only on disk stay listed as
    ``"spilled"`` and a get brings them back (a :class:`Restore` event, then
    :meth:`restored`). Copies are also made ahead of need once the bytes without one pass
    ``spill_threshold`` of a node's budget; ``spill_max`` bounds the bytes on disk,
    ``spill_max_objects`` the objects with a copy there (each costs the coordinator a record
    even once dropped from memory). With
    ``fallback``, a create nothing can make room for gets a file-backed segment
    (``provider.new_fallback_segment``) outside the budgets: at most ``fallback_files`` of
    them (each is a descriptor) taking at most ``fallback_max`` bytes (None: the disk).

    Objects may have their pages on other nodes than their segment's: interleaved at create
    (``create(interleave=...)``), moved by :meth:`migrate`, or moved to where their reads
    come from (``follow_readers``, see :meth:`follow`). The caller moves the pages
    (:class:`Place`, then :meth:`placed`); the bytes count against the budget of each node
    they are on (its share of an interleaved object), and when the object is freed its
    pages are moved back before its memory is reused.
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
        max_waiters: int = 1024,
        max_waiting_ids: int = MAX_WAITING_IDS,
        subscriber_pin_limit: int | None = None,
        reclaim_wait: float = RECLAIM_WAIT,
        grace: float = GRACE,
        directory_memory: DirectoryMemory | None = None,
        directory_capacity: int = MIN_CAPACITY,
        spill: bool = False,
        spill_threshold: float = 1.0,
        spill_max: int | None = None,
        spill_max_objects: int = SPILL_MAX_OBJECTS,
        fallback: bool = False,
        fallback_files: int = 1024,
        fallback_max: int | None = None,
        follow_readers: ReaderTracker | None = None,
        wall_clock: Callable[[], float] | None = None,
        idle_records: int = IDLE_RECORDS,
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
        if not (math.isfinite(grace) and grace >= 0):
            raise ValueError(f"grace must be finite seconds >= 0, got {grace}")
        if not 0 < spill_threshold <= 1:
            raise ValueError(f"spill_threshold must be in (0, 1], got {spill_threshold}")
        self._wall_clock = wall_clock
        self._page_size = page_size
        self._mask = alignment - 1
        self._max_object_size = max_object_size
        self._reclaim_wait = reclaim_wait
        self._events: list[Event] = []
        # the directory (and its access bytes, CLOCK's reference bits; and the table beside
        # it that the nodes' CLOCK rings link through)
        self._dir = Publisher(directory_memory or LocalDirectoryMemory(), directory_capacity)
        self._mem = Memory(
            budgets,
            provider,
            page_size=page_size,
            segment_size=segment_size,
            alignment=alignment,
            fallback=fallback,
            fallback_files=fallback_files,
            fallback_max=fallback_max,
            on_freed=lambda segment: self._events.append(SegmentFreed(segment)),
            slots=self._dir.slots,
        )
        self._nodes = self._mem.nodes  # (the same dicts, for short)
        self._segments = self._mem.segments
        capacity = sum(nd.budget for nd in self._nodes.values())
        self._subscriber_pin_limit = (
            capacity // 8 if subscriber_pin_limit is None else subscriber_pin_limit
        )
        self._clients: dict[int, ClientRecord] = {}
        self._subscribers: dict[int, bool] = {}  # client -> with_locations
        self._waiters = Waiters(max_waiters, max_waiting_ids)
        self._token = 0
        self._grants = 0  # arenas granted so far (each one's name)
        self._space_changed = False
        self._evictions = 0
        # the pin tables, and what waits for a scan of them
        self._grace = grace
        self._pins = PinScanner()
        self._dying = DyingSet(grace)  # what waits for a pin scan, and when to scan
        self._spill = SpillBook(spill, spill_threshold, spill_max, spill_max_objects)
        # every listed object; idle ones beyond the ``idle_records`` touched last with no
        # record of their own (plasma.store.table)
        self._objects = ObjectTable(
            self._dir, alignment, idle_records, restoring=self._spill.restore_queue
        )
        # memory of objects freed (or gone to disk) while it was being written to disk,
        # moved or copied, by the token of that I/O: given back when it ends
        self._after_io: dict[int, list[FreedRange]] = {}
        self._placing = Placements()  # page moves under way (see _start_place)
        self._readers = follow_readers
        # read-only copies on other nodes (replica id -> record; never in _objects)
        self._replicas: dict[bytes, ObjectRecord] = {}

    def _wall(self, now: float) -> float:
        """Wall time for a ``create_time`` stamped at ``now``."""
        return now if self._wall_clock is None else self._wall_clock()

    # ------------------------------------------------------------ clients

    def register_client(
        self, client: int, node: int | None = None, pins: Any = None, label: str = ""
    ) -> None:
        """Add a client; ``node`` is its default node (None: most free bytes per create);
        ``pins`` its pin table (a buffer the client writes, the store reads), if it has one;
        ``label`` how messages name it (e.g. its name and pid)."""
        if client in self._clients:
            raise BadRequest(f"client {client} is already registered")
        if node is not None and node not in self._nodes:
            raise PlacementImpossible(f"node {node} is not one of {list(self._nodes)}")
        self._clients[client] = ClientRecord(client, node, label)
        if pins is not None:
            self._pins.add(client, pins)

    def disconnect(self, client: int, *, now: float = 0.0) -> None:
        """Forget a client: abort its unsealed objects, drop its references, pins, waiters,
        arena tail and subscription. Unknown clients are ignored (safe in cleanup paths)."""
        c = self._clients.pop(client, None)
        if c is None:
            return
        if self._pins.remove(client):
            self._dying.hint(now)  # what only its pins held can go
        self._subscribers.pop(client, None)
        for w in c.waiters:
            self._waiters.cancel(w)
        c.waiters.clear()
        for oid, n in c.refs.items():
            rec = self._objects[oid]
            rec.ref_count -= n
            if rec.state is State.CREATED:
                self._free_object(oid, rec)  # only its creator references an unsealed object
            elif rec.ref_count == 0:
                self._unreferenced(oid, rec, now)
        c.refs.clear()
        c.creating.clear()
        if c.arena is not None:
            self._return_arena_tail(c)
        self._free_due(now)
        self._retry_creates(now)

    def subscribe(self, client: int, with_locations: bool = False) -> None:
        """Send this client a Notify per seal, delete and eviction from now on."""
        self._client(client)
        self._subscribers[client] = with_locations

    def unsubscribe(self, client: int) -> bool:
        """Stop notifying this client; False if it was not subscribed."""
        return self._subscribers.pop(client, None) is not None

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
        interleave: list[int] | None = None,
    ) -> ObjectLocation | Pending:
        """Allocate an unsealed object; the creator holds one reference.

        When there is no space even after eviction: StoreFull with ``timeout`` 0, else a
        :class:`Pending` answered by a CreateDone (``None`` waits forever). ``interleave``
        (a list of nodes; empty: all) spreads the object's pages over those nodes: it is
        page-aligned, counts a share against each node's budget, and the create is a
        Pending answered once the pages are placed (it does not wait for space).
        """
        c = self._client(client)
        size = self._object_size(oid, data_size, metadata_size)
        if interleave is not None:
            nodes = tuple(sorted(set(interleave))) or tuple(self._nodes)
            self._check_nodes(nodes)
            if len(nodes) > 1:
                return self._create_interleaved(c, oid, data_size, metadata_size, nodes, now)
            node = nodes[0]
        nd = self._choose_node(c, node, size)
        deadline = self._deadline(timeout, now)
        if oid in self._objects:
            raise ObjectExists(f"object {oid.hex()} already exists")
        if size > nd.budget:
            raise StoreFull(f"{size} bytes exceed node {nd.id}'s budget of {nd.budget}")
        placed = self._allocate(nd, size, now)
        if placed is not None:
            return self._register(c, oid, data_size, metadata_size, placed, size, now)
        self._retry_creates(now)  # what eviction freed may fit an earlier, smaller request
        deadline = self._reclaim_deadline(nd, timeout, deadline, now, size)
        items = [CreateItem(oid, data_size, metadata_size)]
        return self._park_create(c, items, nd, deadline, now)

    def _create_interleaved(
        self,
        c: ClientRecord,
        oid: bytes,
        data_size: int,
        metadata_size: int,
        nodes: tuple[int, ...],
        now: float,
    ) -> Pending:
        if oid in self._objects:
            raise ObjectExists(f"object {oid.hex()} already exists")
        self._check_placing(c)
        page = self._page_size
        size = round_up(max(1, data_size + metadata_size), page)
        home = c.node if c.node in nodes else None
        nd = (
            self._nodes[home]
            if home is not None
            else max((self._nodes[n] for n in nodes), key=lambda n: n.budget - n.used)
        )
        if size > nd.budget:
            raise StoreFull(f"{size} bytes exceed node {nd.id}'s budget of {nd.budget}")
        # page-aligned: a page-sized hole's worth more, the slack on both sides given back
        padded = size + page - self.alignment
        placed = self._allocate(nd, padded, now)
        if placed is None:
            raise StoreFull(f"{self._no_space(nd)} for an interleaved {size} bytes")
        seg, offset = placed
        if seg.fallback:  # file pages: no NUMA policy to set
            self._free_range(seg, offset, padded)
            raise StoreFull(f"{self._no_space(nd)} for an interleaved {size} bytes")
        start = round_up(offset, page)
        if start > offset:
            self._free_range(seg, offset, start - offset)
        if offset + padded > start + size:
            self._free_range(seg, start + size, offset + padded - start - size)
        loc = self._register(c, oid, data_size, metadata_size, (seg, start), size, now)
        rec = self._objects[oid]
        try:
            token = self._move(oid, rec, nodes)
        except StoreFull:
            self._abort_placed(c.id, oid, rec)
            raise
        self._placing.add(token, MoveJob(c.id, oid, rec, create=True))
        assert loc.offset == start
        return Pending(token)

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
        nd = self._choose_node(c, node, total)
        deadline = self._deadline(timeout, now)
        if total > nd.budget:
            raise StoreFull(f"{total} bytes exceed node {nd.id}'s budget of {nd.budget}")
        done = self._try_create(c, items, nd, now, now)
        if done is not None:
            return done
        self._retry_creates(now)
        deadline = self._reclaim_deadline(nd, timeout, deadline, now, total)
        return self._park_create(c, list(items), nd, deadline, now)

    def _unsealed_of(self, client: int, oid: bytes, sealed_error: str) -> ObjectRecord:
        """The record of an object ``client`` created and has not sealed yet."""
        rec = self._objects.get(oid)
        if rec is None or rec.state is State.DELETED:
            raise ObjectNotFound(f"object {oid.hex()} not found")
        if rec.owner != client:
            raise BadRequest(f"object {oid.hex()} was created by another client")
        if rec.state is not State.CREATED:
            raise BadRequest(f"object {oid.hex()} {sealed_error}")
        return rec

    def seal(self, client: int, oid: bytes, *, now: float = 0.0) -> None:
        """Make the creator's object immutable; wakes getters and notifies subscribers."""
        rec = self._unsealed_of(client, oid, "is already sealed")
        step(rec, Step.SEAL)
        rec.construct_duration = kept_duration(max(0.0, self._wall(now) - rec.create_time))
        self._clients[client].creating.discard(oid)
        self._announce(oid, rec)

    def abort(self, client: int, oid: bytes, *, now: float = 0.0) -> None:
        """Drop an unsealed object of this client, with its creator reference."""
        rec = self._unsealed_of(client, oid, "is sealed; delete it instead")
        c = self._clients[client]
        c.creating.discard(oid)
        del c.refs[oid]
        c.ref_bytes -= rec.size
        self._free_object(oid, rec)
        self._retry_creates(now)

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
        found = [
            rec if rec is not None and rec.state in IN_MEMORY else None
            for rec in map(objects.get, oids)
        ]
        missing = None in found
        spilled = [
            o for o, rec in zip(oids, found, strict=True) if rec is None and self._on_disk(o)
        ]
        if missing and (timeout != 0 or spilled):
            self._check_waiters(c, len(oids))  # (it will wait: refused before any reference)
        results: list[ObjectLocation | str | None] = []
        for oid, rec in zip(oids, found, strict=True):
            if rec is not None:
                self._add_ref(c, oid, rec)
                results.append(self._local_copy(oid, rec, c) if rec.replicas else rec.loc)
            else:
                results.append(None)
        if self._readers is not None and c.node is not None:
            for oid in oids:
                self._readers.read(oid, c.node, now)
        if not missing:
            return results  # type: ignore[return-value]  # no None left
        if timeout == 0:
            on_disk = set(spilled)
            for i, r in enumerate(results):
                if r is None and oids[i] not in on_disk:
                    rec = objects.peek(oids[i])
                    results[i] = (
                        NOT_SEALED if rec is not None and rec.state is State.CREATED else NOT_FOUND
                    )
            if not spilled:
                return results  # type: ignore[return-value]
            deadline = now + SPILL_WAIT  # a restore is no wait for a seal
        self._token += 1
        w = GetWaiter(client, self._token, list(oids), results)
        c.waiters.add(w)
        self._waiters.add_get(w, deadline)
        for oid in dict.fromkeys(spilled):
            rec = objects[oid]
            if not (
                rec.io is Io.RESTORING or oid in self._spill.restore_queue
            ) and not self._try_restore(oid, rec, c.node, now):
                self._spill.restore_queue[oid] = (rec, c.node)
        return Pending(w.token)

    def _local_copy(self, oid: bytes, rec: ObjectRecord, c: ClientRecord) -> ObjectLocation:
        """Where ``c`` reads ``rec``: the copy on its node, if there is one (the reference
        taken on the object keeps the copies too)."""
        if c.node in rec.replicas:
            return self._replicas[replica_id(oid, c.node)].loc
        return rec.loc

    def _on_disk(self, oid: bytes) -> bool:
        rec = self._objects.peek(oid)
        return rec is not None and rec.state is State.SPILLED

    def release(self, client: int, oid: bytes, *, now: float = 0.0) -> None:
        """Drop one reference of this client (ObjectNotFound if it holds none)."""
        c = self._client(client)
        n = c.refs.get(oid)
        if n is None:
            raise ObjectNotFound(f"client {client} holds no reference to {oid.hex()}")
        rec = self._objects[oid]
        if rec.state is State.CREATED:
            raise ObjectNotSealed(f"object {oid.hex()} is not sealed; seal or abort it")
        if n == 1:
            del c.refs[oid]
            c.ref_bytes -= rec.size
        else:
            c.refs[oid] = n - 1
        rec.ref_count -= 1
        if rec.ref_count == 0:
            self._unreferenced(oid, rec, now)
            self._free_due(now)
            self._retry_creates(now)

    def rescan_pins_soon(self, now: float = 0.0) -> None:
        """A client says it dropped pins of deleted objects: look at the pin tables again
        soon: now, unless they were looked at in the last ``UNPIN_INTERVAL`` (then at its
        end), so a flood of these costs at most one scan per interval."""
        self._dying.hint(now)
        if self._dying.rescan_at <= now:
            self._free_due(now)
            self._retry_creates(now)

    def delete(
        self, client: int, oids: list[bytes], *, now: float = 0.0
    ) -> tuple[list[bytes], list[bytes], list[bytes]]:
        """Delete sealed objects: ``(deleted, deferred, missing)``.

        Deferred objects are still referenced or pinned: hidden now, freed with the last
        reference and pin (their holders are asked to let go with Revoke). Deleted ones are
        freed once the grace period shows no pin on them. Unsealed, absent or already
        deleted ids are missing.
        """
        self._client(client)
        deleted: list[bytes] = []
        deferred: list[bytes] = []
        missing: list[bytes] = []
        found: list[tuple[bytes, ObjectRecord, int]] = []
        for oid in oids:
            rec = self._objects.get(oid)
            if rec is None or rec.state not in READABLE:
                missing.append(oid)
                continue
            spilled = rec.state is State.SPILLED
            step(rec, Step.DELETE)  # (so an id listed twice is missing the second time)
            if spilled:
                self._forget_spilled(oid, rec)
                self._fail_getters(oid, NOT_FOUND)
                deleted.append(oid)
                continue
            found.append((oid, rec, rec.gen))
        # who pins these objects and their copies: one pass over the pin tables for all
        gens = [gen for _, _, gen in found if gen]
        for oid, rec, _ in found:
            if rec.replicas:
                gens += [self._replicas[replica_id(oid, n)].gen for n in rec.replicas]
        pinners = self._pins.holders_of(gens) if gens else {}
        for oid, rec, gen in found:
            pinning = pinners.get(gen, []) if gen else []
            if rec.replicas:
                pinning = list(pinning)
                for n in rec.replicas:  # (after their pins)
                    copy = self._replicas[replica_id(oid, n)]
                    if copy.slot >= 0:
                        pinning += pinners.get(copy.gen, [])
            if rec.ref_count or pinning:
                deferred.append(oid)
                holders = {cid for cid, c in self._clients.items() if oid in c.refs}
                self._events.extend(Revoke(cid, oid) for cid in sorted(holders | set(pinning)))
            else:
                deleted.append(oid)
            if rec.ref_count:  # hidden now, freed with the object's last reference
                self._dir.set_state(rec, DYING)
                self._mark_copies(oid, rec, DYING, now)
            else:  # (hidden, with its copies, by the wait for the pin scan)
                self._unclock(oid, rec)
                self._free_once_unpinned(oid, rec, now)
            self._drop_copy(rec)
            self._notify_deleted(oid, rec)
        self._free_due(now)
        self._retry_creates(now)
        return deleted, deferred, missing

    # ------------------------------------------------------------ queries

    def contains(self, oid: bytes) -> bool:
        """True for a sealed object that is not being deleted."""
        rec = self._objects.busy(oid)
        return rec.state in READABLE if rec is not None else self._objects.is_compact(oid)

    def info(self, oid: bytes) -> ObjectInfo:
        rec = self._objects.peek(oid)
        if rec is None or rec.state is State.DELETED:
            raise ObjectNotFound(f"object {oid.hex()} not found")
        return object_info(oid, rec, self._pins.counts([rec.gen]) if rec.gen else {})

    def objects(self, ids: Iterable[bytes] | None = None) -> list[ObjectInfo]:
        """Every visible object (unsealed ones too; not those pending deletion), or those of
        ``ids`` still visible; ref counts include pins."""
        objects = self._objects
        if ids is None:
            listed = [(oid, rec) for oid, rec in objects.items() if rec.state is not State.DELETED]
        else:
            listed = [
                (oid, rec)
                for oid in ids
                if (rec := objects.peek(oid)) is not None and rec.state is not State.DELETED
            ]
        # one pass over the pin tables, for these objects' generations only
        gens = [rec.gen for _, rec in listed if rec.gen]
        pins = self._pins.counts(gens) if gens else {}
        return [object_info(oid, rec, pins) for oid, rec in listed]

    def object_ids(self) -> list[bytes]:
        """The ids of every object in the table (a snapshot to list in pages)."""
        return list(self._objects)

    def evict(self, nbytes: int, *, now: float = 0.0) -> int:
        """Evict sealed unreferenced objects of any node, in CLOCK order (objects created
        longest ago first across nodes), until ``nbytes`` are chosen; returns the bytes
        chosen, counted as Plasma does: the objects' data + metadata sizes (what the
        allocator gets back is rounded up to the alignment). Their memory is free once the
        grace period shows no pin on them. With spilling, only objects with a copy on disk
        are chosen (and stay, spilled)."""
        if nbytes < 0:
            raise BadRequest(f"nbytes must not be negative, got {nbytes}")
        chosen: list[tuple[float, bytes, ObjectRecord]] = []
        copied = True if self._spill.enabled else None
        for nd in self._nodes.values():
            total = 0
            with contextlib.closing(self._clock(nd, now, copied)) as walk:
                for oid, rec in walk:
                    if total >= nbytes:
                        break
                    chosen.append((rec.create_time, oid, rec))
                    total += rec.loc.data_size + rec.loc.metadata_size
        chosen.sort(key=lambda c: c[0])
        freed = 0
        for _, oid, rec in chosen:
            if freed >= nbytes:
                break
            self._evict(oid, rec, now)
            freed += rec.loc.data_size + rec.loc.metadata_size
        self._free_due(now)
        self._retry_creates(now)
        return freed

    def stats(self) -> dict[str, Any]:
        """Capacity and usage, totals and per node, plus client and waiter counts."""
        return {
            "capacity": sum(nd.budget for nd in self._nodes.values()),
            "used": self._mem.used,
            "objects": len(self._objects),
            "arena_bytes": self._arena_tails(),
            "evictions": self._evictions,
            "clients": len(self._clients),
            "subscribers": len(self._subscribers),
            "get_waiters": self._waiters.gets,
            "create_waiters": len(self._waiters.creates),
            "pins": self._pins.total(),
            "dying": len(self._dying),
            "moving": len(self._placing),
            "replicas": len(self._replicas),
            "spill": self._spill.stats() if self._spill.enabled else None,
            "fallback": self._mem.fallback_stats(),
            "directory": self._dir.stats(),
            "nodes": {
                nd.id: {
                    "capacity": nd.budget,
                    "used": nd.used,
                    "objects": nd.objects,
                    "segments": len(nd.segments),
                    "segment_bytes": nd.segment_bytes,
                    "placed_in": nd.placed_in,
                }
                for nd in self._nodes.values()
            },
        }

    @property
    def alignment(self) -> int:
        """Objects start at multiples of this; their allocations are multiples of it."""
        return self._mask + 1

    def segments(self) -> list[tuple[int, int, int]]:
        """``(segment id, node, size)`` of every live segment."""
        return [(s.id, s.node.id, s.size) for s in self._segments.values()]

    # ------------------------------------------------------------ arenas

    def grant_arena(
        self,
        client: int,
        size: int,
        node: int | None = None,
        *,
        min_size: int = 0,
        now: float = 0.0,
    ) -> Grant | Pending:
        """Reserve up to ``size`` bytes (rounded up), at least ``min_size``, for the client to
        carve objects from: its :class:`Grant`.

        The unused tail of the client's previous arena is returned first (so on StoreFull
        the client has no arena). The grant shrinks towards ``min_size`` when the node's
        arenas would reserve more than a quarter of its budget, or when nothing bigger fits.
        When memory is on its way back (evicted, or asked back with AskReclaim) the request
        waits for it as a create with timeout 0 does: a Pending answered by a CreateDone
        whose result is the grant.
        """
        c = self._client(client)
        if size <= 0:
            raise BadRequest(f"arena size must be positive, got {size}")
        n = round_up(size, self.alignment)
        least = min(n, round_up(min_size, self.alignment)) or n
        nd = self._choose_node(c, node, least)
        if any(isinstance(w, CreateWaiter) and w.arena for w in c.waiters):
            raise BadRequest(f"client {client} already has an arena request waiting")
        if c.arena is not None:
            self._return_arena_tail(c)
        if least > nd.budget:
            raise StoreFull(f"{least} bytes exceed node {nd.id}'s budget of {nd.budget}")
        granted = self._try_arena(c, nd, n, least, now)
        if granted is not None:
            self._retry_creates(now)
            return granted
        self._retry_creates(now)
        deadline = self._reclaim_deadline(nd, 0.0, None, now, least)
        self._check_waiters(c)
        self._token += 1
        w = CreateWaiter(c.id, self._token, [], nd, now, arena=(n, least))
        c.waiters.add(w)
        self._waiters.add_create(w, deadline)
        return Pending(w.token)

    def _try_arena(self, c: ClientRecord, nd: Node, n: int, least: int, now: float) -> Grant | None:
        n = arena_size(n, least, nd.budget, self._arena_tails(nd))
        placed = self._allocate(nd, n, now, evict=n == least)  # no eviction for a bigger arena
        if placed is None and n > least:
            n = least
            placed = self._allocate(nd, n, now)
        if placed is None:
            return None
        if c.arena is not None:
            self._return_arena_tail(c)
        seg, offset = placed
        self._grants += 1
        c.arena = Arena(seg, offset, offset + n, self._grants)
        return Grant(seg.id, offset, n, self._grants)

    def seal_arena(
        self, client: int, grant: int, objects: list[ArenaObject], *, now: float = 0.0
    ) -> None:
        """Register objects the client wrote into its arena ``grant``, as sealed with no
        reference.

        Each must lie in the arena, be aligned and start at or after the end of the previous
        one (bump order); each occupies ``max(1, data + metadata)`` bytes rounded up to the
        alignment. A bad object (BadRequest, or ObjectExists for a known id) is left out and
        the others registered; then the first error is raised, saying how many more there
        were. Bytes skipped between objects are freed.
        """
        c = self._client(client)
        a = c.arena
        if a is None or a.grant != grant:
            raise BadRequest(f"client {client} holds no arena {grant} (it was given back)")
        failures: list[PlasmaError] = []
        for obj in objects:
            try:
                self._seal_arena_object(c, a, obj, now)
            except PlasmaError as exc:
                failures.append(exc)
        self._retry_creates(now)
        if failures:
            more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
            raise type(failures[0])(failures[0].message + more)

    # ------------------------------------------------------------ spilling

    def take_spill_wakeup(self) -> bool:
        """True once after something may want spilling (:meth:`spill_batch`)."""
        return self._spill.take_wakeup()

    def spill_batch(
        self, now: float, max_bytes: int, max_objects: int = 1 << 16
    ) -> tuple[int, list[tuple[bytes, ObjectLocation, float]]] | None:
        """The next objects to write to disk, as one spill file: ``(file id, [(id, location,
        create time)])``, up to ``max_bytes`` of data and ``max_objects`` objects; None when
        nothing needs writing (or a batch is still being written). Candidates are sealed,
        unreferenced, unpinned objects without a copy, in CLOCK order, on the nodes where
        creates or restores wait for room or where the bytes without a copy pass the
        threshold. The caller writes them
        and calls :meth:`spilled` or :meth:`spill_failed`; meanwhile they stay readable."""
        picked = self._spill.pick(
            self._nodes.values(),
            lambda nd: self._clock(nd, now, copied=False),
            max_bytes,
            max_objects,
        )
        if not picked:
            return None
        for _, rec in picked:
            self._token += 1
            begin_io(rec, Io.SPILLING, self._token)
        file_id = self._spill.new_batch(picked)
        return file_id, [(oid, rec.loc, rec.create_time) for oid, rec in picked]

    def spilled(
        self, file_id: int, entries: list[SpillEntry], file_bytes: int, seconds: float, now: float
    ) -> None:
        """Batch ``file_id`` is on disk (``entries`` in its order, ``file_bytes`` long, in
        ``seconds``): its objects have a copy now, so evicting them loses nothing. Those
        deleted meanwhile are marked dead in the file (:class:`SpillDead`)."""
        picked = self._spill.batches[file_id]
        live = 0
        dead: list[SpillEntry] = []
        for (oid, rec), entry in zip(picked, entries, strict=True):
            end_io(rec, Io.SPILLING)
            if rec.state in GONE:
                dead.append(entry)
                continue
            rec.spill = (file_id, entry)
            live += 1
            nd = self._segments[rec.loc.segment].node
            nd.clock.gained_copy(oid, rec)
        nbytes = sum(e.length for e in entries)
        self._spill.written(file_id, len(entries), nbytes, live, file_bytes, seconds)
        if live:
            self._events.extend(SpillDead(file_id, e, False) for e in dead)
        else:
            self._events.append(SpillDead(file_id, entries[0], True))
        self._end_batch(picked, now)

    def spill_failed(self, file_id: int, reason: str, now: float) -> None:
        """Batch ``file_id`` could not be written (nothing of it is on disk): its objects
        stay in memory only; creates waiting for room fail at their deadline, saying why."""
        picked = self._spill.failed(file_id, reason)
        for _, rec in picked:
            end_io(rec, Io.SPILLING)
        self._end_batch(picked, now)

    def _end_batch(self, picked: list[tuple[bytes, ObjectRecord]], now: float) -> None:
        for oid, rec in picked:
            self._io_ended(oid, rec)
        self._space_changed = True
        self._free_due(now)
        self._retry_creates(now)

    def restored(
        self,
        token: int,
        error: str | None = None,
        *,
        lost: bool = False,
        seconds: float = 0.0,
        now: float = 0.0,
    ) -> None:
        """The :class:`Restore` ``token`` finished: the object is in memory again (published,
        its gets answered), or, with ``error``, its memory is freed and its gets fail:
        ``lost`` (the copy is gone or damaged) drops the object, else it stays on disk."""
        oid, rec = self._spill.restoring.pop(token)
        end_io(rec, Io.RESTORING)
        if error is None and rec.state is State.SPILLED:
            step(rec, Step.RESTORE)
            self._spill.restored(rec.loc.data_size + rec.loc.metadata_size, seconds)
            self._publish(oid, rec)
            self._serve_getters(oid, rec)
            if rec.ref_count == 0:
                self._unreferenced(oid, rec, now)
        else:
            seg = self._segments[rec.loc.segment]
            seg.node.objects -= 1
            self._free_range(seg, rec.loc.offset, rec.size)
            if error is not None and rec.state is State.SPILLED:
                if lost:
                    self._spill.counts["lost"] += 1
                    step(rec, Step.DELETE)
                    self._forget_spilled(oid, rec)
                self._fail_getters(oid, OBJECT_LOST if lost else IO_ERROR)
            self._objects.touched(oid, rec)
        self._retry_creates(now)

    def adopt_spilled(self, files: dict[int, tuple[list[SpillEntry], int]]) -> int:
        """Take in the objects of spill files a previous coordinator left (file id ->
        (live entries, file bytes)), as spilled objects; returns how many. An id in more
        than one file keeps its copy in the newest; a file left with nothing live is
        removed (:class:`SpillDead`)."""
        adopted = 0
        for file_id in sorted(files):
            entries, file_bytes = files[file_id]
            self._spill.adopt_file(file_id, file_bytes)
            for e in entries:
                old = self._objects.get(e.id)
                if old is not None:
                    step(old, Step.DELETE)
                    self._forget_spilled(e.id, old)
                    adopted -= 1
                node = e.node if e.node in self._nodes else self._mem.first.id
                rec = self._objects[e.id] = adopted_record(e, file_id, node, self.alignment)
                self._objects.touched(e.id, rec)
                self._spill.adopt_copy(file_id)
                self._spill.to_disk(e.length)
                adopted += 1
            if self._spill.forget_empty(file_id):
                self._events.append(SpillDead(file_id, None, True))
        return adopted

    def _to_disk(self, oid: bytes, rec: ObjectRecord) -> None:
        """An evicted object with a copy on disk: free its memory, keep it as spilled."""
        self._free_memory(oid, rec)
        step(rec, Step.TO_DISK)
        self._spill.to_disk(rec.loc.data_size + rec.loc.metadata_size)
        self._objects.touched(oid, rec)

    def _drop_copy(self, rec: ObjectRecord) -> None:
        """Forget a deleted object's copy on disk (the file goes with its last object)."""
        if rec.spill is None:
            return
        file_id, entry = rec.spill
        rec.spill = None
        self._events.append(SpillDead(file_id, entry, self._spill.drop_copy(file_id)))

    def _forget_spilled(self, oid: bytes, rec: ObjectRecord) -> None:
        """Drop a deleted object that is only on disk (its restore, if one is under way,
        frees the memory it was reading into when it ends)."""
        if self._objects.holds(oid, rec):
            del self._objects[oid]
        self._spill.restore_queue.pop(oid, None)
        self._drop_copy(rec)
        self._spill.off_disk(rec.loc.data_size + rec.loc.metadata_size)
        self._notify_deleted(oid, rec)

    def _try_restore(self, oid: bytes, rec: ObjectRecord, node: int | None, now: float) -> bool:
        """Find memory for a spilled object and start reading it back (a :class:`Restore`
        event): free room on the reader's node (``node``; else the object's own), else on
        any node, else what eviction (or a fallback segment) makes on the reader's node.
        False when nothing fits now (copies may have been asked for); True too when nothing
        can make room (:meth:`SpillBook.restore_hopeless`): its gets then fail with
        ``store_full``."""
        nodes = self._nodes
        home = nodes.get(node) if node is not None else None
        home = home or nodes.get(rec.loc.node) or self._mem.first
        placed = None
        for nd in restore_order(home, nodes.values()):
            placed = self._allocate(nd, rec.size, now, evict=False)
            if placed is not None:
                break
        else:
            placed = self._allocate(home, rec.size, now)
        if placed is None:
            if not self._spill.restore_hopeless(home, rec.size):
                return False
            self._fail_getters(oid, STORE_FULL)  # (rather than wait for what cannot come)
            return True
        seg, offset = placed
        old = rec.loc
        rec.loc = ObjectLocation(seg.id, offset, old.data_size, old.metadata_size, seg.node.id)
        seg.node.objects += 1
        self._token += 1
        begin_io(rec, Io.RESTORING, self._token)
        self._spill.restoring[self._token] = (oid, rec)
        assert rec.spill is not None
        self._events.append(Restore(self._token, oid, rec.loc, *rec.spill))
        return True

    def _retry_restores(self, now: float) -> None:
        """Restores waiting for memory, in order; those no get waits for any more are
        dropped."""
        for oid, (rec, node) in list(self._spill.restore_queue.items()):
            if not self._waiters.waits_for(oid) or self._try_restore(oid, rec, node, now):
                del self._spill.restore_queue[oid]
                self._objects.touched(oid, rec)

    # ------------------------------------------------------------ pages on other nodes

    def migrate(
        self, client: int, oid: bytes, node: int, *, now: float = 0.0
    ) -> list[int] | Pending:
        """Move a sealed object's pages to ``node`` (readers keep their views: the pages
        move, not the object): the nodes its pages are on at once when they are there
        already, else a Pending answered by :class:`MigrateDone`. The bytes count against
        ``node``'s budget: StoreFull when it has no room for them."""
        c = self._client(client)
        rec, _ = self._pages_of(oid, [node])
        if self._mem.nodes_of(rec) == [node]:
            return [node]
        self._check_placing(c)
        token = self._move(oid, rec, (node,))
        self._placing.add(token, MoveJob(client, oid, rec))
        return Pending(token)

    def replicate(
        self, client: int, oid: bytes, nodes: list[int], *, now: float = 0.0
    ) -> list[int] | Pending:
        """Make read-only copies of a sealed object on ``nodes``: a get by a client of one of
        those nodes (through the directory or a request) returns its node's copy. The nodes
        with a copy (its own included) at once when each has one, else a Pending answered
        by :class:`ReplicateDone`. Copies count against their node's budget (StoreFull, and
        none made, when one has no room); delete and eviction remove them with the object."""
        c = self._client(client)
        rec, seg = self._pages_of(oid, nodes)
        home = seg.node.id
        wanted = copies_wanted(nodes, home, rec.replicas)
        if not wanted:
            return sorted({home, *rec.replicas})
        self._check_placing(c)
        placed: list[tuple[int, tuple[Segment, int]]] = []
        for n in wanted:
            where = self._allocate(self._nodes[n], rec.size, now)
            if where is None or where[0].fallback:
                for _, (s, off) in [*placed, *([(n, where)] if where else [])]:
                    self._free_range(s, off, rec.size)
                raise StoreFull(f"{self._no_space(self._nodes[n])} for a copy of {oid.hex()}")
            placed.append((n, where))
        copies = []
        for n, (s, off) in placed:
            loc = ObjectLocation(s.id, off, rec.loc.data_size, rec.loc.metadata_size, n)
            copy = ObjectRecord(loc, rec.size, 0, self._wall(now))  # unsealed until copied
            self._replicas[replica_id(oid, n)] = copy
            s.node.objects += 1
            copies.append((n, copy))
        self._token += 1
        # (its bytes are being read: not freed, moved or evicted meanwhile)
        begin_io(rec, Io.MOVING, self._token)
        self._placing.add(self._token, CopyJob(client, oid, rec, copies))
        length = rec.loc.data_size + rec.loc.metadata_size
        targets = [copy.loc for _, copy in copies]
        self._events.append(Copy(self._token, rec.loc.segment, rec.loc.offset, length, targets))
        return Pending(self._token)

    def placed(self, token: int, error: str | None = None, *, now: float = 0.0) -> None:
        """The :class:`Place` or :class:`Copy` ``token`` finished (``error``: it failed;
        pages may have moved partly, the object counts as placed as asked; no copy is
        kept)."""
        job = self._placing.pop(token)
        if isinstance(job, CopyJob):
            self._copied(token, job, error)
        elif isinstance(job, RehomeJob):
            freed = job.freed
            assert freed.charges is not None
            self._mem.charge(freed.charges, -1)
            self._free_range(freed.segment, freed.offset, freed.size)
        else:
            client, oid, rec = job.client, job.oid, job.rec
            end_io(rec, Io.MOVING)
            present = self._objects.holds(oid, rec)  # (else deleted or freed meanwhile)
            if not job.create:
                if client in self._clients:  # (every call is answered, whatever happened)
                    answer = moved_answer(oid, self._mem.nodes_of(rec), error, present)
                    self._events.append(MigrateDone(client, token, answer))
                if self._readers is not None:
                    self._readers.moved(oid, now)
            elif present and client is not None and client in self._clients:
                if error is None:
                    self._events.append(CreateDone(client, token, [rec.loc]))
                else:
                    self._abort_placed(client, oid, rec)
                    err = PlasmaError(f"interleaving {oid.hex()} failed: {error}")
                    self._events.append(CreateDone(client, token, err))
            self._io_ended(oid, rec)
        self._space_changed = True
        self._retry_creates(now)

    def _copied(self, token: int, job: CopyJob, error: str | None) -> None:
        client, oid, rec = job.client, job.oid, job.rec
        end_io(rec, Io.MOVING)
        alive = rec.state is State.SEALED
        for n, copy in job.copies:
            key = replica_id(oid, n)
            if error is None and alive:
                step(copy, Step.SEAL)
                self._dir.announce_replicas()
                self._publish(key, copy, REPLICA)
                rec.replicas = (*rec.replicas, n)
            else:
                del self._replicas[key]
                self._free_object(key, copy)
        if client in self._clients:
            nodes = sorted({self._segments[rec.loc.segment].node.id, *rec.replicas})
            answer = copied_answer(oid, nodes, error, alive)
            self._events.append(ReplicateDone(client, token, answer))
        self._io_ended(oid, rec)

    def _orphan_replicas(self, oid: bytes, rec: ObjectRecord) -> None:
        """An object's memory is freed: its copies go too (each once no pin holds it)."""
        for n in rec.replicas:
            key = replica_id(oid, n)
            copy = self._replicas.pop(key)
            step(copy, Step.DELETE)
            self._dying.orphan(key, copy)
        rec.replicas = ()

    def follow(self, now: float) -> int:
        """With ``follow_readers``: count the reads held now (each pin in the pin tables and
        each reference, by the reader's node; gets that reach the store count as they come),
        and start moving each sealed object whose reads come mostly from one other node
        there (when that node has room); returns how many started moving."""
        readers = self._readers
        if readers is None:
            return 0
        pins = self._pins.by_client()
        for c in self._clients.values():
            if c.node is None:
                continue
            for gen in pins.get(c.id, ()):
                pinned = self._dir.published_id(gen)
                if pinned is not None:
                    readers.read(pinned, c.node, now)
            for oid in c.refs:
                readers.read(oid, c.node, now)
        started = 0
        for oid in readers.candidates():
            rec = self._objects.get(oid)
            if rec is None or rec.state is State.DELETED:
                readers.forget(oid)
                continue
            if rec.state is not State.SEALED or rec.io is not Io.NONE:
                continue  # (only on disk: its last segment may be gone)
            if self._segments[rec.loc.segment].fallback:
                continue
            current = self._mem.nodes_of(rec)
            proposal = readers.proposal(oid, current[0] if len(current) == 1 else -1, now)
            if proposal is None:
                continue
            try:
                token = self._move(oid, rec, (proposal,))
            except StoreFull:
                continue
            self._placing.add(token, MoveJob(None, oid, rec))
            started += 1
        return started

    def _pages_of(self, oid: bytes, nodes: Iterable[int]) -> tuple[ObjectRecord, Segment]:
        """The record and segment of a sealed object whose pages may be moved or copied to
        ``nodes`` now (the checks migrate and replicate share)."""
        rec = self._objects.get(oid)
        check_movable(oid, rec, self._segments)
        assert rec is not None
        self._check_nodes(nodes)
        return rec, self._segments[rec.loc.segment]

    def _check_nodes(self, nodes: Iterable[int]) -> None:
        unknown = sorted(n for n in set(nodes) if n not in self._nodes)
        if unknown:
            raise PlacementImpossible(f"node(s) {unknown} not one of {list(self._nodes)}")

    def _check_placing(self, c: ClientRecord) -> None:
        """A client has at most ``max_waiters`` page moves (and waiters) under way."""
        self._check_waiters(c)
        self._placing.check_client(c.id, self._waiters.max_waiters)

    def _move(self, oid: bytes, rec: ObjectRecord, nodes: tuple[int, ...]) -> int:
        """Start moving ``rec``'s pages to ``nodes`` (interleaved when more than one), its
        charges going from where they are to there: StoreFull if a node lacks the room."""
        old = self._mem.charges(rec, rec.pages_on) if rec.pages_on is not None else {}
        new = self._mem.charges(rec, nodes)
        check_room(oid, old, new, lambda n: self._nodes[n].segment_room(self._page_size))
        self._mem.charge(old, -1)
        self._mem.charge(new, +1)
        seg = self._segments[rec.loc.segment]
        home = seg.node.id
        rec.pages_on = None if nodes == (home,) else nodes
        self._token += 1
        begin_io(rec, Io.MOVING, self._token)
        start, length = page_range(rec.loc.offset, rec.size, self._page_size)
        mode = "interleave" if len(nodes) > 1 else "bind"
        return self._start_place(None, seg, start, length, mode, list(nodes))

    def _start_place(
        self,
        job: RehomeJob | None,
        seg: Segment,
        start: int,
        length: int,
        mode: str,
        nodes: list[int],
    ) -> int:
        self._token += 1
        if job is not None:
            self._placing.add(self._token, job)
        self._events.append(Place(self._token, seg.id, start, length, mode, nodes))
        return self._token

    def _abort_placed(self, client: int, oid: bytes, rec: ObjectRecord) -> None:
        """Undo an interleaved create whose pages could not be placed."""
        c = self._clients[client]
        c.creating.discard(oid)
        if c.refs.pop(oid, None) is not None:
            c.ref_bytes -= rec.size
        self._free_object(oid, rec)

    # ------------------------------------------------------------ timeouts and events

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has work next: the earliest deadline of a waiting get or
        create, or of a pin-table scan; None when nothing waits."""
        times = [t for t in (self._waiters.next_deadline(),) if t is not None]
        scan = self._dying.next_time()
        if scan is not None:
            times.append(scan)
        return min(times) if times else None

    @property
    def directory_token(self) -> int:
        """The current directory's name (its header's token)."""
        return self._dir.directory.token

    @property
    def directory_buffers(self) -> tuple[Any, Any]:
        """The current directory and its access bytes (what readers map)."""
        return self._dir.buffers

    def take_wakeup(self) -> bool:
        """True once after a pin scan was scheduled (:meth:`next_deadline` may be earlier)."""
        return self._dying.take_wakeup()

    def reclaimed_by(self) -> float | None:
        """When the last object marked dying so far is scanned for pins (None: none is
        waiting): once :meth:`expire` ran at that time, everything deleted or evicted
        before now that no pin holds is free (its copies too: they are marked dying with
        it and scanned when it is freed)."""
        return self._dying.last_time()

    def expire(self, now: float) -> None:
        """Scan the pin tables for the objects whose grace period ended, retry what waits for
        space, then finish every waiter whose deadline is at or before ``now``."""
        if self._dying.blocked_creates_due(now):
            self._space_changed = True  # creates blocked by pins: look at the clock again
        self._free_due(now)
        self._retry_creates(now)
        for w in self._waiters.expired(now):
            self._clients[w.client].waiters.discard(w)
            if isinstance(w, GetWaiter):
                results = [TIMED_OUT if r is None else r for r in w.results]
                self._events.append(GetDone(w.client, w.token, results))
            else:
                err = StoreFull(f"{self._no_space(w.node)} before the deadline")
                self._events.append(CreateDone(w.client, w.token, err))

    def drain_events(self) -> list[Event]:
        """Events produced since the last call, oldest first. (Between two calls of the
        store: the idle records beyond those kept are made compact here.)"""
        self._objects.settle()
        events, self._events = self._events, []
        return events

    # ------------------------------------------------------------ internals: validation

    def _client(self, client: int) -> ClientRecord:
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
        mask = self._mask  # (round_up(total or 1, alignment), inline: once per object)
        return ((total or 1) + mask) & ~mask

    def _choose_node(self, c: ClientRecord, node: int | None, size: int = 0) -> Node:
        """``node``, else the client's, else the node with the most free bytes among those
        whose budget could ever hold ``size`` bytes (all, when none could)."""
        if node is None:
            node = c.node
        if node is None:
            if len(self._nodes) == 1:
                return self._mem.first
            nodes = [nd for nd in self._nodes.values() if nd.budget >= size]
            return max(
                nodes or self._nodes.values(), key=lambda nd: nd.budget - nd.used
            )  # ties: lowest
        nd = self._nodes.get(node)
        if nd is None:
            raise PlacementImpossible(f"node {node} is not one of {list(self._nodes)}")
        return nd

    def _deadline(self, timeout: float | None, now: float) -> float | None:
        if timeout is None:
            return None
        if not math.isfinite(timeout) or timeout < 0:
            raise BadRequest(f"timeout must be None or finite seconds >= 0, got {timeout!r}")
        return now + timeout

    # ------------------------------------------------------------ internals: memory

    def _allocate(
        self, nd: Node, size: int, now: float, *, evict: bool = True
    ) -> tuple[Segment, int] | None:
        """Place ``size`` aligned bytes on ``nd``: existing segments, a new segment, then (if
        ``evict``) eviction in CLOCK order, but only when evicting makes the request fit
        (eviction that cannot make room would destroy data for nothing). None when it
        cannot fit now: also while the node's evicted objects wait for their pin scan (the
        caller waits for them; a new round of eviction starts only after that one). With
        spilling, only objects with a copy on disk are evicted, and when copies of others
        would make room they are asked for (the caller waits); when nothing would, a
        fallback segment, if allowed."""
        while True:
            placed = self._mem.take(nd, size)
            if placed is not None:
                return placed
            if not evict or nd.evicting:
                return None
            victims = self._eviction_plan(nd, size, now)
            if not victims:
                return self._spill_or_fall_back(nd, size)
            for oid, rec in victims:
                self._evict(oid, rec, now)
            if nd.evicting:  # published victims: their memory comes after the grace period
                if self._grace:
                    return None
                self._free_due(now)

    def _eviction_plan(self, nd: Node, size: int, now: float) -> list[tuple[bytes, ObjectRecord]]:
        """The shortest run of CLOCK candidates of the node whose eviction makes room for
        ``size`` bytes (:func:`~plasma.store.eviction.plan_room`); then, as one round of
        eviction waits a grace period (when there is one), more candidates up to
        ``EVICTION_HEADROOM`` of the budget, for the requests that follow. Empty when
        evicting everything evictable would not make room."""
        copied = True if self._spill.enabled else None
        evictable = nd.clock.copied if copied else nd.clock.bytes
        if not evictable or nd.budget - nd.used + evictable < size:
            return []
        with contextlib.closing(self._clock(nd, now, copied)) as walk:
            plan = plan_room(nd, size, self._page_size, self._segments, walk)
            if plan and self._grace:
                plan += more_victims(walk, nd.budget // EVICTION_HEADROOM, plan)
        return plan

    def _spill_or_fall_back(self, nd: Node, size: int) -> tuple[Segment, int] | None:
        """Eviction cannot make room for ``size`` bytes on ``nd``: ask for copies on disk if
        they would (None: the caller waits), else place it in a fallback segment if allowed."""
        if self._spill.ask_copies(nd, size):
            return None
        return self._mem.take_fallback(nd, size)

    def _free_range(self, seg: Segment, offset: int, size: int) -> None:
        if self._mem.free_range(seg, offset, size):
            self._space_changed = True

    def _free_object(self, oid: bytes, rec: ObjectRecord) -> None:
        """Forget an object no pin can hold (unsealed, never published, or scanned) and
        give back its memory (see :meth:`_free_memory`)."""
        if self._objects.holds(oid, rec):
            del self._objects[oid]
        step(rec, Step.FREE)
        self._free_memory(oid, rec)

    def _free_memory(self, oid: bytes, rec: ObjectRecord) -> None:
        """Give back an object's memory (its record may live on, spilled): at once, or when
        the I/O reading or moving it (a spill write, a page move, a copy) ends. Its copies
        on other nodes go too, each once no pin holds it."""
        seg = self._segments[rec.loc.segment]
        seg.node.objects -= 1
        charges = self._mem.charges(rec, rec.pages_on) if rec.pages_on is not None else None
        held = FreedRange(seg, rec.loc.offset, rec.size, charges)
        rec.pages_on = None
        if rec.replicas:
            self._orphan_replicas(oid, rec)
        if rec.io is Io.SPILLING or rec.io is Io.MOVING:
            self._after_io.setdefault(rec.io_token, []).append(held)
        else:
            self._give_back(held)

    def _io_ended(self, oid: bytes, rec: ObjectRecord) -> None:
        """The I/O on ``rec``'s memory ended: free what was given back meanwhile."""
        self._objects.touched(oid, rec)
        if self._after_io:
            for held in self._after_io.pop(rec.io_token, ()):
                self._give_back(held)

    def _give_back(self, freed: FreedRange) -> None:
        """Free a range; if its pages were moved to other nodes (its ``charges``), first
        move them back (the range is freed, and the other nodes' charges dropped, once they
        are)."""
        seg = freed.segment
        if freed.charges is None:
            self._free_range(seg, freed.offset, freed.size)
            return
        start, length = page_range(freed.offset, freed.size, self._page_size)
        self._start_place(RehomeJob(freed), seg, start, length, "bind", [seg.node.id])

    def _evict(self, oid: bytes, rec: ObjectRecord, now: float) -> None:
        """Evict a sealed unreferenced object (its memory is free after the pin scan)."""
        self._unclock(oid, rec)
        if self._free_once_unpinned(oid, rec, now):
            self._segments[rec.loc.segment].node.evicting += 1
        elif rec.state is State.FREED:  # (not: only on disk now)
            self._evictions += 1
            self._notify_deleted(oid, rec)

    def _free_once_unpinned(self, oid: bytes, rec: ObjectRecord, now: float) -> bool:
        """Free a sealed, unreferenced object that is deleted or evicted, once no pin holds
        it: at once if it was never published (returns False), else after the grace period
        (its slot reads dying from now on; returns True). A deleted object leaves the table
        now, so its id can be created again."""
        deleted = rec.state is State.DELETED
        if deleted and self._objects.holds(oid, rec):
            del self._objects[oid]
        gen = rec.gen
        if not gen:
            if rec.spill is not None and not deleted:
                self._to_disk(oid, rec)
            else:
                self._free_object(oid, rec)
            return False
        if gen in self._dying:  # an eviction victim deleted meanwhile: now a deleted object
            self._segments[rec.loc.segment].node.evicting -= 1
            return True
        if not deleted:
            step(rec, Step.EVICT)
        self._dir.set_state(rec, DYING)
        self._mark_copies(oid, rec, DYING, now)
        self._dying.add(gen, oid, rec, now)
        return True

    def _mark_copies(self, oid: bytes, rec: ObjectRecord, state: int, now: float = 0.0) -> None:
        """Mark the directory slots of an object's copies dying with it, at ``now`` (so that
        when it is freed they are scanned at once if their grace period has passed), or
        sealed again with it."""
        for n in rec.replicas:
            copy = self._replicas[replica_id(oid, n)]
            if copy.slot < 0:
                continue
            if state == DYING:
                self._dying.mark_copy(copy.gen, now)
            else:
                self._dying.unmark_copy(copy.gen)
            self._dir.set_state(copy, state)

    def _free_due(self, now: float) -> None:
        """Scan the pin tables for the dying objects whose grace period ended (and, when
        due, for deleted objects pins held at the last scan): free those no pin holds, keep
        pinned deleted ones for a later scan, and give eviction victims a reader pinned
        meanwhile back to the CLOCK."""
        dying = self._dying
        if not (dying.orphans or dying.waiting or dying.rescan_at <= now):
            return  # (nothing can be due: the common case of a release)
        copies, later = dying.take_orphans(now)
        for key, copy in later:
            self._free_once_unpinned(key, copy, now)
        due, rescanned = dying.due(now)
        due = copies + due
        if not due:
            return
        pinned = self._pins.pinned(gen for gen, _, _ in due)
        free, revive = dying.settle(now, due, rescanned, pinned)
        for gen, oid, rec in free:
            evicted = rec.state is State.EVICTING
            if evicted:
                self._segments[rec.loc.segment].node.evicting -= 1
            self._free_scanned(gen, oid, rec, evicted)
        for _, oid, rec in revive:  # a reader pinned it during the grace period: it stays
            self._stays(oid, rec)
            self._unreferenced(oid, rec, now)
        if dying.orphans:  # copies of what this scan freed (they have no copies themselves)
            self._free_due(now)

    def _free_scanned(self, gen: int, oid: bytes, rec: ObjectRecord, evicted: bool) -> None:
        """Free (or drop to disk) a dying object a scan of the pin tables found unpinned."""
        self._dir.unpublish(rec)
        if evicted and rec.spill is not None:
            self._to_disk(oid, rec)
            return
        self._free_object(oid, rec)
        if evicted:
            self._evictions += 1
            self._notify_deleted(oid, rec)

    def _revive(self, oid: bytes, rec: ObjectRecord) -> None:
        """An eviction victim is asked for (a Get): it stays."""
        self._dying.revive(rec.gen)
        self._stays(oid, rec)

    def _stays(self, oid: bytes, rec: ObjectRecord) -> None:
        """An eviction victim is kept: sealed again, in the directory and its copies too."""
        self._segments[rec.loc.segment].node.evicting -= 1
        step(rec, Step.REVIVE)
        self._dir.set_state(rec, SEALED)
        self._mark_copies(oid, rec, SEALED)

    def _clock(
        self, nd: Node, now: float, copied: bool | None = None
    ) -> Generator[tuple[bytes, ObjectRecord], None, None]:
        """``nd``'s eviction candidates (:meth:`ClockRing.candidates`); a pinned one passed
        over has the pins looked at again soon (a create may wait for its memory)."""
        return nd.clock.candidates(
            self._dir.access, self._pins.pinned, lambda: self._dying.pinned_candidate(now), copied
        )

    def _publish(self, oid: bytes, rec: ObjectRecord, flags: int = 0) -> None:
        """Put a newly sealed object (``flags`` REPLICA: a copy) in the directory; readers
        are told when it had to be rebuilt first."""
        if self._dir.publish(oid, rec, flags):
            self._events.append(DirectoryMoved())

    def _arena_tails(self, nd: Node | None = None) -> int:
        """Bytes reserved in the unused tails of client arenas (on ``nd``, or anywhere)."""
        return sum(
            a.tail()
            for c in self._clients.values()
            if (a := c.arena) is not None and (nd is None or a.segment.node is nd)
        )

    def _return_arena_tail(self, c: ClientRecord) -> None:
        a = c.arena
        assert a is not None
        if a.tail():
            self._free_range(a.segment, a.cursor, a.tail())
        c.arena = None

    # ------------------------------------------------------------ internals: objects

    def _register(
        self,
        c: ClientRecord,
        oid: bytes,
        data_size: int,
        metadata_size: int,
        placed: tuple[Segment, int],
        size: int,
        now: float,
    ) -> ObjectLocation:
        seg, offset = placed
        nd = seg.node
        loc = ObjectLocation(seg.id, offset, data_size, metadata_size, nd.id)
        rec = ObjectRecord(loc, size, c.id, self._wall(now), ref_count=1)
        self._objects[oid] = rec
        nd.objects += 1
        c.refs[oid] = 1
        c.ref_bytes += size
        c.creating.add(oid)
        return loc

    def _try_create(
        self, c: ClientRecord, items: list[CreateItem], nd: Node, created: float, now: float
    ) -> list[ObjectLocation] | None:
        """All items or nothing (created at time ``created``); None when space is short.
        Raises ObjectExists."""
        for it in items:
            if it.id in self._objects:
                raise ObjectExists(f"object {it.id.hex()} already exists")
        placed: list[tuple[Segment, int, int]] = []
        for it in items:
            size = round_up((it.data_size + it.metadata_size) or 1, self.alignment)
            p = self._allocate(nd, size, now)
            if p is None:
                for seg, offset, sz in placed:
                    self._free_range(seg, offset, sz)
                return None
            placed.append((p[0], p[1], size))
        return [
            self._register(c, it.id, it.data_size, it.metadata_size, (seg, off), size, created)
            for it, (seg, off, size) in zip(items, placed, strict=True)
        ]

    def _seal_arena_object(self, c: ClientRecord, a: Arena, obj: ArenaObject, now: float) -> None:
        oid, offset = obj.id, obj.offset
        size = self._object_size(oid, obj.data_size, obj.metadata_size)
        if oid in self._objects:
            a.check(oid, offset, size, self.alignment)  # (a bad place is the first error)
            raise ObjectExists(f"object {oid.hex()} already exists")
        seg = a.segment
        start, skipped = a.take(oid, offset, size, self.alignment)
        if skipped:
            self._free_range(seg, start, skipped)
        nd = seg.node
        loc = ObjectLocation(seg.id, offset, obj.data_size, obj.metadata_size, nd.id)
        rec = ObjectRecord(loc, size, c.id, self._wall(now), State.SEALED)
        self._objects[oid] = rec
        nd.objects += 1
        self._announce(oid, rec)
        if rec.ref_count == 0:
            self._unreferenced(oid, rec, now)

    def _add_ref(self, c: ClientRecord, oid: bytes, rec: ObjectRecord) -> None:
        if rec.ref_count == 0 and not self._unclock(oid, rec) and rec.state is State.EVICTING:
            self._revive(oid, rec)  # an eviction victim waiting for its pin scan
        rec.ref_count += 1
        refs = c.refs
        n = refs.get(oid, 0)
        if not n:
            c.ref_bytes += rec.size
        refs[oid] = n + 1

    def _unreferenced(self, oid: bytes, rec: ObjectRecord, now: float) -> None:
        """A sealed object lost its last reference: free it if deleted (once no pin holds
        it), else put it at the back of the CLOCK."""
        if rec.state is State.DELETED:
            self._free_once_unpinned(oid, rec, now)
            return
        self._objects.touched(oid, rec)
        seg = self._segments[rec.loc.segment]
        if seg.fallback:
            return  # on disk already: it stays until deleted
        nd = seg.node
        nd.clock.add(oid, rec)
        self._space_changed = True
        if (
            rec.spill is None
            and self._spill.enabled
            and nd.used - nd.clock.copied > self._spill.threshold * nd.budget
        ):
            self._spill.wake()

    def _unclock(self, oid: bytes, rec: ObjectRecord) -> bool:
        """Out of its node's CLOCK ring (False: it was not in it)."""
        return self._segments[rec.loc.segment].node.clock.remove(oid, rec)

    # ------------------------------------------------------------ internals: notifications

    def _announce(self, oid: bytes, rec: ObjectRecord) -> None:
        """A new sealed object: publish it, complete get waiters, notify subscribers."""
        self._publish(oid, rec)
        self._serve_getters(oid, rec)
        if self._subscribers:
            loc = rec.loc
            for sub, with_locations in self._subscribers.items():
                c = self._clients[sub]
                if with_locations and c.ref_bytes + rec.size <= self._subscriber_pin_limit:
                    self._add_ref(c, oid, rec)
                    self._events.append(
                        Notify(sub, "sealed", oid, loc.data_size, loc.metadata_size, loc)
                    )
                else:
                    self._events.append(
                        Notify(sub, "sealed", oid, loc.data_size, loc.metadata_size)
                    )

    def _serve_getters(self, oid: bytes, rec: ObjectRecord) -> None:
        """Give the gets waiting for ``oid`` the object (now in memory)."""
        if not self._waiters.gets:
            return
        for w, i in self._waiters.take(oid):
            self._add_ref(self._clients[w.client], oid, rec)
            w.results[i] = rec.loc
            w.missing -= 1
            if w.missing == 0:
                self._finish_get(w)

    def _fail_getters(self, oid: bytes, code: str) -> None:
        """Answer the gets waiting for ``oid`` with error ``code`` for it."""
        for w, i in self._waiters.take(oid):
            w.results[i] = code
            w.missing -= 1
            if w.missing == 0:
                self._finish_get(w)

    def _notify_deleted(self, oid: bytes, rec: ObjectRecord) -> None:
        loc = rec.loc
        for sub in self._subscribers:
            self._events.append(Notify(sub, "deleted", oid, loc.data_size, loc.metadata_size))

    # ------------------------------------------------------------ internals: waiters

    def _park_create(
        self,
        c: ClientRecord,
        items: list[CreateItem],
        nd: Node,
        deadline: float | None,
        now: float,
    ) -> Pending:
        self._check_waiters(c, len(items))
        self._token += 1
        w = CreateWaiter(c.id, self._token, items, nd, now)
        c.waiters.add(w)
        self._waiters.add_create(w, deadline)
        return Pending(w.token)

    def _could_fit(self, w: CreateWaiter) -> bool:
        """Whether evicting (or spilling) what no one holds would make room for ``w`` (or
        an eviction is under way on its node: the waiters keep their order meanwhile)."""
        nd = w.node
        if nd.evicting:
            return True
        if w.arena is not None:
            need = w.arena[1]
        else:
            need = sum(self._object_size(it.id, it.data_size, it.metadata_size) for it in w.items)
        return nd.budget - nd.used + nd.clock.bytes >= need

    def _check_waiters(self, c: ClientRecord, ids: int = 1) -> None:
        """Room for one more waiting call of ``c`` naming ``ids`` ids (BadRequest if not)."""
        self._waiters.check(c.id, c.waiters, ids)

    def _reclaim_deadline(
        self, nd: Node, timeout: float | None, deadline: float | None, now: float, size: int
    ) -> float | None:
        """The deadline of a create that does not fit now. Clients holding memory they do not
        use are asked to return it; a create that would fail at once (``timeout`` 0) waits
        ``reclaim_wait`` for them when some were asked, and ``EVICTION_WAIT`` for deleted or
        evicted objects waiting for their pin scan, else raises StoreFull."""
        asked = self._ask_reclaim(nd, now)
        if timeout != 0:
            return deadline
        wait = max(
            self._reclaim_wait if asked else 0.0,
            EVICTION_WAIT if self._dying.waiting else 0.0,
            SPILL_WAIT if nd.spill_demand or self._spill.batches else 0.0,
        )
        if not wait:
            raise StoreFull(f"{self._no_space(nd)} for {size} bytes")
        return now + wait

    def _no_space(self, nd: Node) -> str:
        """Why a create on ``nd`` found no space: what holds the node's memory (bytes
        referenced, being written, in arenas, pinned by readers, unreferenced, being freed
        and free), and the clients that hold the most of it."""
        spill = self._spill.describe() if self._spill.enabled else ""
        return no_space_text(nd, self._held_on(nd), self._labels(), spill)

    def _labels(self) -> dict[int, str]:
        return {cid: c.label for cid, c in self._clients.items()}

    def _held_on(self, nd: Node | None, objects: bool = False) -> Held:
        """Who holds memory of ``nd`` (None: of every node): :func:`count_held`."""
        return count_held(
            nd,
            self._clients,
            self._objects.peek,
            self._segments,
            self._pins.by_client(),
            self._dir.find,
            objects,
        )

    def holders(self, top_objects: int = 10) -> dict[str, Any]:
        """Who holds the memory: per client (``label``, and bytes and objects it holds as
        ``references`` to sealed objects, ``unsealed`` creates, ``pins`` of objects it does
        not reference, and its ``arena``'s unused tail; most bytes held first), the
        ``total`` (each object counted once), and the ``top_objects`` largest objects held
        with the clients referencing and pinning them. One pass over the pin tables."""
        held = self._held_on(None, objects=top_objects > 0)
        return holders_report(held, self._labels(), top_objects, self._held_object)

    def _held_object(self, key: bytes, rec: ObjectRecord) -> dict[str, Any]:
        state = {State.CREATED: "unsealed", State.SEALED: "sealed", State.EVICTING: "sealed"}.get(
            rec.state, "deleting"
        )
        return {
            "id": key.hex(),
            "size": rec.size,
            "data_size": rec.loc.data_size,
            "metadata_size": rec.loc.metadata_size,
            "node": self._segments[rec.loc.segment].node.id,
            "state": state,
            "replica": key in self._replicas,
            "owner": rec.owner,
        }

    def _ask_reclaim(self, nd: Node, now: float) -> bool:
        """Send AskReclaim to the clients that may hold idle memory of ``nd`` (an arena tail on
        it, or references they may only cache) and were not asked in the last
        ``RECLAIM_INTERVAL``; True when some were asked now."""
        asked = False
        for c in self._clients.values():
            if now - c.reclaim_at < RECLAIM_INTERVAL:
                continue  # (asked lately: its pin table is not read)
            a = c.arena
            # references to sealed objects, or pins
            cached = len(c.refs) > len(c.creating) or self._pins.pins_of(c.id) > 0
            idle = cached or (a is not None and a.segment.node is nd and a.cursor < a.end)
            if idle:
                c.reclaim_at = now
                self._events.append(AskReclaim(c.id))
                asked = True
        return asked

    def return_arena(self, client: int, grant: int, *, now: float = 0.0) -> None:
        """The client stops using its arena ``grant``: free the unused tail. Any other arena
        (one already replaced: a stale return, or a grant made to a cancelled request) is
        left alone."""
        c = self._client(client)
        a = c.arena
        if a is not None and a.grant == grant:
            self._return_arena_tail(c)
            self._retry_creates(now)

    def _finish_get(self, w: GetWaiter) -> None:
        self._waiters.finish(w)
        self._clients[w.client].waiters.discard(w)
        self._events.append(GetDone(w.client, w.token, w.results))  # type: ignore[arg-type]

    def _retry_creates(self, now: float) -> None:
        """After space may have appeared: retry pending creates (and arena requests) in FIFO
        order (:meth:`Waiters.retry_creates`)."""
        if not self._space_changed:
            return
        self._space_changed = False
        if self._spill.restore_queue:
            self._retry_restores(now)
        if not self._waiters.creates:
            return

        def attempt(w: CreateWaiter) -> CreateAnswer | None:
            c = self._clients[w.client]
            try:
                if w.arena is not None:
                    return self._try_arena(c, w.node, *w.arena, now)
                return self._try_create(c, w.items, w.node, w.now, now)
            except PlasmaError as exc:
                return exc

        for w, answer in self._waiters.retry_creates(attempt, self._could_fit):
            self._clients[w.client].waiters.discard(w)
            self._events.append(CreateDone(w.client, w.token, answer))
        self._space_changed = False
