"""One model over every feature of the store that can meet another: a hypothesis state
machine (sans-I/O) in which clients create (one by one, several at once, interleaved, in
arenas), seal, get by request and through the directory with a pin, release, unpin, delete
and disconnect, while the store evicts with its grace period, spills and restores, moves
and copies pages, and rebuilds its directory; every I/O the coordinator would run (spill
writes, restores, page moves, copies) finishes or fails in any order, and client calls are
cancelled the way a trio client's are (the late answer is given back).

The memory is simulated: every segment is a bytearray, creators fill what they create with
bytes derived from the object's id, copies and restores copy bytes. So the safety property
is checked on content, as a reader would see it:

- every byte range something holds (a reference, a pin, an arena's unused tail, the source
  and the target of an I/O under way) keeps the bytes it had when it was taken, is still
  allocated (never inside a free range, never in a segment given back), and what a get
  or a pin serves is the object's content;
- no two live objects share memory, each node's charges add up, and when every client is
  gone and everything is deleted, nothing is left: no byte, no record, no spill file.

``COMBINED_EXAMPLES`` (environment) runs more examples (CI runs a bounded number).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from plasma.directory import REPLICA, SEALED, DirectoryReader, Found, PinTable, pin_table_size
from plasma.errors import BadRequest, PlasmaError, StoreFull
from plasma.follow import ReaderTracker
from plasma.ids import replica_id
from plasma.records import ArenaObject, ObjectLocation, SpillEntry
from plasma.store import (
    Copy,
    CreateDone,
    GetDone,
    Grant,
    MigrateDone,
    Pending,
    Place,
    ReplicateDone,
    Restore,
    SpillDead,
    Store,
)
from plasma.store.objects import IO_ALLOWED, Io, State
from tests.helpers import (
    GRACE,
    KIB,
    FallbackProvider,
    charges_placed_in,
    reached,
    store_records,
)

BUDGETS = {0: 16 * KIB, 1: 8 * KIB}
NODES = tuple(BUDGETS)
CLIENTS = {1: 0, 2: 1, 3: None}  # client -> the node it runs on (3: unknown)
PIN_SLOTS = 8
SLOTS = st.sampled_from(sorted(CLIENTS))  # which of the three clients


def pattern(oid: bytes, length: int) -> bytes:
    """The bytes a creator writes into object ``oid`` (distinct for every id)."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.blake2b(oid + counter.to_bytes(4, "little")).digest()
        counter += 1
    return bytes(out[:length])


class Memory(FallbackProvider):
    """Segments as bytearrays (fallback ones too); a segment given back is poisoned."""

    def __init__(self) -> None:
        super().__init__()
        self.mem: dict[int, bytearray] = {}

    def new_segment(self, node: int, size: int) -> int:
        sid = super().new_segment(node, size)
        self.mem[sid] = bytearray(os.urandom(size))  # (stale bytes of an earlier life)
        return sid

    def free_segment(self, segment: int) -> None:
        super().free_segment(segment)
        del self.mem[segment]  # (any view of it is wrong now)

    def read(self, segment: int, offset: int, length: int) -> bytes:
        return bytes(self.mem[segment][offset : offset + length])

    def write(self, segment: int, offset: int, data: bytes) -> None:
        self.mem[segment][offset : offset + len(data)] = data


@dataclass(eq=False)
class Hold:
    """A byte range something holds: it must stay allocated and keep its bytes."""

    what: str
    segment: int
    offset: int
    length: int
    bytes_then: bytes
    oid: bytes = b""  # the object (or copy) held, for references and pins
    found: Found | None = None  # a pin: what the directory said
    index: int = -1  # a pin: its index in the client's table
    reader: DirectoryReader | None = None


@dataclass(eq=False)
class ClientState:
    id: int
    node: int | None
    table: bytearray
    pins: PinTable
    reader: DirectoryReader
    refs: list[Hold] = field(default_factory=list)  # one per reference the store counts
    pinned: list[Hold] = field(default_factory=list)
    unsealed: dict[bytes, Hold] = field(default_factory=dict)  # own creates, not sealed yet
    arena: list[Any] | None = None  # [segment, start, end, cursor, grant, hold of the tail]
    past_grants: list[int] = field(default_factory=list)
    cancelled: set[int] = field(default_factory=set)  # tokens of calls given up


class CombinedMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.memory = Memory()
        self.store = Store(
            BUDGETS,
            self.memory,
            segment_size=8 * KIB,
            reclaim_wait=0,
            grace=GRACE,
            directory_capacity=16,  # a dozen objects rebuild it
            spill=True,
            spill_threshold=0.75,
            fallback=True,
            fallback_files=2,
            fallback_max=16 * KIB,
            max_waiters=16,
            follow_readers=ReaderTracker(min_reads=2, cooldown=0.0),
            idle_records=0,  # every idle object compact between two calls (see keep_idle)
        )
        self.materialized = 0  # compact objects the store made a record of again, so far
        self.materialized_spilled = 0  # ... of them spilled ones
        self.clients: dict[int, ClientState] = {}  # by client id (never reused, as a coordinator's)
        self.slots: dict[int, int] = {}  # the three clients -> their id now
        self.next_client = 0
        for slot in CLIENTS:
            self._connect(slot)
        self.now = 0.0
        self.next_id = 0
        self.sizes: dict[bytes, int] = {}  # every id created: data + metadata bytes
        self.waiting: dict[int, tuple[int, str, list[bytes]]] = {}  # token -> client, kind, ids
        self.batch: tuple[int, list[tuple[bytes, ObjectLocation, float]], list[Hold]] | None
        self.batch = None
        self.disk: dict[tuple[int, bytes], bytes] = {}  # (spill file, id) -> bytes written
        self.entries: dict[tuple[int, bytes], SpillEntry] = {}  # ... -> where in the file
        self.files_live: set[int] = set()  # spill files not yet removed
        self.restores: list[tuple[Restore, Hold]] = []
        self.moves: list[tuple[Place | Copy, list[Hold]]] = []
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.answered: dict[int, CreateDone | GetDone] = {}

    # ------------------------------------------------------------ helpers

    def _connect(self, slot: int) -> None:
        self.next_client += 1
        cid = self.slots[slot] = self.next_client
        table = bytearray(pin_table_size(PIN_SLOTS))
        self.store.register_client(cid, node=CLIENTS[slot], pins=table)
        reader = DirectoryReader(*self.store.directory_buffers)
        self.clients[cid] = ClientState(cid, CLIENTS[slot], table, PinTable(table), reader)

    def _hold(
        self, what: str, where: ObjectLocation | tuple[int, int, int], oid: bytes = b""
    ) -> Hold:
        if isinstance(where, ObjectLocation):
            seg, off, length = where.segment, where.offset, where.data_size + where.metadata_size
        else:
            seg, off, length = where
        return Hold(what, seg, off, length, self.memory.read(seg, off, length), oid)

    def _new_id(self) -> bytes:
        self.next_id += 1
        return self.next_id.to_bytes(20, "big")

    def _fill(self, cid: int, oid: bytes, where: ObjectLocation) -> None:
        """The creator writes its object and keeps its reference."""
        self.memory.write(where.segment, where.offset, pattern(oid, self.sizes[oid]))
        c = self.clients[cid]
        c.unsealed[oid] = self._hold(f"client {cid} creating {oid.hex()[-4:]}", where, oid)

    def _got(self, cid: int, oid: bytes, where: ObjectLocation, how: str) -> Hold:
        """A reference (or pin) served: what it reads must be the object's content."""
        hold = self._hold(f"client {cid} {how} {oid.hex()[-4:]}", where, oid)
        assert hold.bytes_then == pattern(oid, self.sizes[oid]), f"{hold.what}: wrong bytes"
        self.outcomes[how] += 1
        return hold

    def _listed(self, *states: str) -> list[bytes]:
        return sorted(i.id for i in self.store.objects() if not states or i.state in states)

    def _events(self) -> None:
        """Apply what the store said (until it says nothing more: what a client does about
        one event may bring more)."""
        while events := self.store.drain_events():
            self._apply(events)

    def _apply(self, events: list[Any]) -> None:
        for e in events:
            if isinstance(e, CreateDone | GetDone | MigrateDone | ReplicateDone):
                assert e.token not in self.answered, (
                    f"answered twice: {self.answered[e.token]}, {e}"
                )
                self.answered[e.token] = e
            if isinstance(e, CreateDone):
                assert e.token in self.waiting, f"an answer for no call under way: {e}"
                cid, kind, ids = self.waiting.pop(e.token)
                cancelled = e.token in self.clients[cid].cancelled
                self.clients[cid].cancelled.discard(e.token)
                if isinstance(e.result, Grant):
                    if cancelled:  # the client core gives a late grant back
                        self.store.return_arena(cid, e.result.grant, now=self.now)
                        self.clients[cid].past_grants.append(e.result.grant)
                        self.outcomes["late grant returned"] += 1
                    else:
                        self._granted(cid, e.result)
                elif isinstance(e.result, list):
                    for o, where in zip(ids, e.result, strict=True):
                        self._fill(cid, o, where)
                        if cancelled:  # an abandoned create: the core aborts it
                            self._abort(cid, o)
                    self.outcomes[f"{kind} done"] += 1
            elif isinstance(e, GetDone):
                assert e.token in self.waiting, f"an answer for no call under way: {e}"
                cid, _, ids = self.waiting.pop(e.token)
                cancelled = e.token in self.clients[cid].cancelled
                self.clients[cid].cancelled.discard(e.token)
                for o, r in zip(ids, e.results, strict=True):
                    if isinstance(r, ObjectLocation):
                        hold = self._got(cid, o, r, "waited get")
                        self.clients[cid].refs.append(hold)
                        if cancelled:
                            self._release(cid, hold)
            elif isinstance(e, MigrateDone | ReplicateDone):
                assert self.waiting.pop(e.token, (0,))[0] == e.client, f"whose answer? {e}"
                self.outcomes[f"{type(e).__name__.lower()} answered"] += 1
            elif isinstance(e, Restore):
                self.restores.append((e, self._hold("restore target", e.location)))
            elif isinstance(e, Place):  # (pages move in place: no byte changes)
                self.moves.append((e, []))
            elif isinstance(e, Copy):
                holds = [self._hold("copy source", (e.segment, e.offset, e.length))]
                holds += [self._hold("copy target", t) for t in e.targets]
                self.moves.append((e, holds))
            elif isinstance(e, SpillDead):
                if e.entry is not None:
                    assert e.entry == self.entries[(e.file, e.entry.id)], "another copy dead"
                if e.empty:
                    self.files_live.discard(e.file)
        # (Revoke, AskReclaim, Notify, DirectoryMoved, SegmentFreed: a
        # client may act on them or not; nothing here depends on it)

    def _granted(self, cid: int, g: Grant) -> None:
        c = self.clients[cid]
        if c.arena is not None:
            c.past_grants.append(c.arena[4])
        tail = self._hold(f"arena tail of client {cid}", (g.segment, g.offset, g.size))
        c.arena = [g.segment, g.offset, g.offset + g.size, g.offset, g.grant, tail]

    def _release(self, cid: int, hold: Hold) -> None:
        self.clients[cid].refs.remove(hold)
        self.store.release(cid, hold.oid, now=self.now)

    def _abort(self, cid: int, oid: bytes) -> None:
        c = self.clients[cid]
        del c.unsealed[oid]
        self.store.abort(cid, oid, now=self.now)

    def _unpin(self, cid: int, hold: Hold) -> None:
        c = self.clients[cid]
        c.pinned.remove(hold)
        c.pins.unpin(hold.index)
        assert hold.reader is not None and hold.found is not None
        if hold.reader.dying(hold.found):
            self.store.rescan_pins_soon(now=self.now)

    def _all_holds(self) -> list[Hold]:
        holds: list[Hold] = []
        for c in self.clients.values():
            holds += c.refs + c.pinned + list(c.unsealed.values())
            if c.arena is not None:
                seg, _, end, cursor, _, tail = c.arena
                if cursor < end:  # (the part not used yet)
                    skip = cursor - tail.offset
                    holds.append(Hold(tail.what, seg, cursor, end - cursor, tail.bytes_then[skip:]))
        if self.batch is not None:
            holds += self.batch[2]
        holds += [h for _, h in self.restores]
        holds += [h for _, hs in self.moves for h in hs]
        return holds

    # ------------------------------------------------------------ rules: creating

    @rule(
        slot=SLOTS,
        sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=3),
        node=st.sampled_from([None, *NODES]),
        timeout=st.sampled_from([0.0, 0.0, 0.5]),
        then=st.sampled_from(["keep", "seal", "put", "put"]),
        cancel=st.booleans(),
    )
    def create(
        self,
        slot: int,
        sizes: list[int],
        node: int | None,
        timeout: float,
        then: str,
        cancel: bool,
    ) -> None:
        client = self.slots[slot]
        from plasma.records import CreateItem

        ids = [self._new_id() for _ in sizes]
        for o, s in zip(ids, sizes, strict=True):
            self.sizes[o] = s
        try:
            if len(ids) == 1:
                res: Any = self.store.create(
                    client, ids[0], sizes[0], node=node, timeout=timeout, now=self.now
                )
            else:
                items = [CreateItem(o, s) for o, s in zip(ids, sizes, strict=True)]
                res = self.store.create_many(
                    client, items, node=node, timeout=timeout, now=self.now
                )
        except StoreFull:
            self.outcomes["create full"] += 1
            return
        except BadRequest:  # (too many calls waiting)
            return
        if isinstance(res, Pending):
            self.waiting[res.token] = (client, "create", ids)
            if cancel:  # a trio create cancelled while it waits
                self.clients[client].cancelled.add(res.token)
            return
        locs = [res] if isinstance(res, ObjectLocation) else res
        for o, where in zip(ids, locs, strict=True):
            self._fill(client, o, where)
            if then != "keep":
                self._seal(client, o, release=then == "put")

    @rule(slot=SLOTS, size=st.integers(100, 3 * 4096))
    def create_interleaved(self, slot: int, size: int) -> None:
        client = self.slots[slot]
        o = self._new_id()
        self.sizes[o] = size
        try:
            res = self.store.create(client, o, size, interleave=[], now=self.now)
        except (StoreFull, BadRequest):
            return
        assert isinstance(res, Pending)
        self.waiting[res.token] = (client, "interleaved create", [o])

    @rule(slot=SLOTS, node=st.sampled_from(NODES), n=st.integers(2, 8))
    def fill(self, slot: int, node: int, n: int) -> None:
        """Several puts of a few KiB on one node: past the spill threshold, or full."""
        client = self.slots[slot]
        for _ in range(n):
            o = self._new_id()
            self.sizes[o] = 2000
            try:
                where = self.store.create(client, o, 2000, node=node, now=self.now)
            except (StoreFull, BadRequest):
                return
            if isinstance(where, Pending):
                self.waiting[where.token] = (client, "create", [o])
                return
            self._fill(client, o, where)
            self._seal(client, o, release=True)

    def _seal(self, client: int, o: bytes, release: bool) -> None:
        c = self.clients[client]
        hold = c.unsealed.pop(o)
        self.store.seal(client, o, now=self.now)
        c.refs.append(hold)
        if release:
            self._release(client, hold)

    @precondition(lambda self: any(c.unsealed for c in self.clients.values()))
    @rule(data=st.data(), abort=st.booleans(), release=st.booleans())
    def seal_or_abort(self, data: st.DataObject, abort: bool, release: bool) -> None:
        cid, o = data.draw(
            st.sampled_from(sorted((c.id, o) for c in self.clients.values() for o in c.unsealed))
        )
        if abort:
            self._abort(cid, o)
        else:
            self._seal(cid, o, release)

    @rule(
        slot=SLOTS,
        size=st.integers(1, 4096),
        least=st.integers(0, 2048),
        cancel=st.booleans(),
    )
    def arena(self, slot: int, size: int, least: int, cancel: bool) -> None:
        """A new arena (the old one's tail goes back); a waiting request may be cancelled,
        and its late grant is given back by the client."""
        client = self.slots[slot]
        c = self.clients[client]
        if any(w[0] == client and w[1] == "arena" for w in self.waiting.values()):
            return
        if c.arena is not None:
            c.past_grants.append(c.arena[4])
            c.arena = None
        try:
            res = self.store.grant_arena(client, size, min_size=least, now=self.now)
        except (StoreFull, BadRequest):
            return
        if isinstance(res, Pending):
            self.waiting[res.token] = (client, "arena", [])
            if cancel:
                c.cancelled.add(res.token)
            return
        self._granted(client, res)

    @rule(slot=SLOTS, node=st.sampled_from(NODES))
    def arena_cancelled_then_granted(self, slot: int, node: int) -> None:
        """What a late grant takes, in one step (else rare): a full node, an arena request
        that waits and is cancelled, then memory coming back."""
        self.fill(slot, node, 8)
        self.arena(slot, 2048, 0, cancel=True)
        self.store.evict(BUDGETS[node], now=self.now)
        self.advance(GRACE * 2)

    @precondition(lambda self: any(c.arena for c in self.clients.values()))
    @rule(data=st.data(), sizes=st.lists(st.integers(0, 1500), min_size=1, max_size=3))
    def seal_in_arena(self, data: st.DataObject, sizes: list[int]) -> None:
        cid = data.draw(st.sampled_from(sorted(c.id for c in self.clients.values() if c.arena)))
        c = self.clients[cid]
        assert c.arena is not None
        seg, _, end, cursor, grant, _ = c.arena
        objects = []
        for s in sizes:
            n = -(-max(1, s) // 64) * 64
            if cursor + n > end:
                break
            o = self._new_id()
            self.sizes[o] = s
            self.memory.write(seg, cursor, pattern(o, s))
            objects.append(ArenaObject(o, cursor, s, 0))
            cursor += n
        if not objects:
            self.store.return_arena(cid, grant, now=self.now)
            c.past_grants.append(grant)
            c.arena = None
            return
        self.store.seal_arena(cid, grant, objects, now=self.now)
        c.arena[3] = cursor

    @precondition(lambda self: any(c.past_grants for c in self.clients.values()))
    @rule(data=st.data(), seal=st.booleans())
    def stale_grant(self, data: st.DataObject, seal: bool) -> None:
        """A late ReturnArena (or SealArena) of an arena given back: touches no other."""
        cid = data.draw(
            st.sampled_from(sorted(c.id for c in self.clients.values() if c.past_grants))
        )
        c = self.clients[cid]
        grant = data.draw(st.sampled_from(c.past_grants))
        if seal:
            o = self._new_id()
            self.sizes[o] = 64
            try:
                self.store.seal_arena(cid, grant, [ArenaObject(o, 0, 64, 0)], now=self.now)
            except BadRequest:
                self.outcomes["stale seal refused"] += 1
            else:
                raise AssertionError("a seal in an arena given back was accepted")
        else:
            self.store.return_arena(cid, grant, now=self.now)
            self.outcomes["stale return"] += 1

    # ------------------------------------------------------------ rules: reading

    @rule(
        data=st.data(),
        slot=SLOTS,
        wait=st.booleans(),
        cancel=st.booleans(),
    )
    def get(self, data: st.DataObject, slot: int, wait: bool, cancel: bool) -> None:
        client = self.slots[slot]
        spilled = self._listed("spilled")
        ids = self._listed("sealed", "spilled", "created")
        if not ids:
            return
        o = data.draw(st.sampled_from(spilled if spilled and wait else ids))
        try:
            res = self.store.get(client, [o], timeout=1.0 if wait else 0.0, now=self.now)
        except BadRequest:  # (too many calls waiting)
            return
        if isinstance(res, Pending):
            self.waiting[res.token] = (client, "get", [o])
            if cancel:
                self.clients[client].cancelled.add(res.token)
            return
        (r,) = res
        if isinstance(r, ObjectLocation):
            self.clients[client].refs.append(self._got(client, o, r, "get"))

    @precondition(lambda self: any(c.refs for c in self.clients.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        cid, i = data.draw(
            st.sampled_from([(c.id, i) for c in self.clients.values() for i in range(len(c.refs))])
        )
        self._release(cid, self.clients[cid].refs[i])

    @rule(data=st.data(), slot=SLOTS)
    def fast_get(self, data: st.DataObject, slot: int) -> None:
        ids = self._listed("sealed")
        if ids:
            self._take_pinned(self.slots[slot], data.draw(st.sampled_from(ids)))

    @rule(data=st.data(), current=st.booleans())
    def fast_get_of_a_copy(self, data: st.DataObject, current: bool) -> None:
        """A client on a node with a copy of the object reads it; ``current``: with the
        current directory (as a client does once it found its own superseded and mapped
        the new one), else with the one it has."""
        copied = [(i.id, n) for i in self.store.objects() for n in i.replicas]
        if copied:
            o, node = data.draw(st.sampled_from(sorted(copied)))
            slot = next(s for s, n in CLIENTS.items() if n == node)
            if current:
                self.remap(slot)
            self._take_pinned(self.slots[slot], o)

    def _take_pinned(self, client: int, o: bytes) -> None:
        """``ClientCore.take_pinned``: the copy on the client's node if there is one, else
        the object; pin, re-read."""
        c = self.clients[client]
        reader = c.reader
        found = None
        how = "pinned"
        if reader.replicas and c.node is not None:
            found = reader.lookup(replica_id(o, c.node), REPLICA)
            how = "pinned a copy"
        if found is None:
            found, how = reader.lookup(o), "pinned"
        if found is None:
            return
        index = c.pins.pin(found.generation)
        if index is None:
            return
        if not reader.unchanged(found):
            c.pins.unpin(index)
            if reader.dying(found):
                self.store.rescan_pins_soon(now=self.now)
            self.outcomes["pin lost the race"] += 1
            return
        hold = self._got(client, o, found.location, how)
        hold.found, hold.index, hold.reader = found, index, reader
        c.pinned.append(hold)

    @precondition(lambda self: any(c.pinned for c in self.clients.values()))
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        cid, i = data.draw(
            st.sampled_from(
                [(c.id, i) for c in self.clients.values() for i in range(len(c.pinned))]
            )
        )
        self._unpin(cid, self.clients[cid].pinned[i])

    @rule(slot=SLOTS)
    def remap(self, slot: int) -> None:
        """The client maps the current directory (it found its own superseded)."""
        client = self.slots[slot]
        c = self.clients[client]
        if c.reader.superseded:
            self.outcomes["remapped"] += 1
        c.reader = DirectoryReader(*self.store.directory_buffers)

    # ------------------------------------------------------------ rules: the store's work

    @rule(data=st.data(), slot=SLOTS)
    def delete(self, data: st.DataObject, slot: int) -> None:
        client = self.slots[slot]
        ids = self._listed("sealed", "spilled")
        if ids:
            self.store.delete(client, [data.draw(st.sampled_from(ids))], now=self.now)

    @rule(nbytes=st.sampled_from([1, 1000, 8000, 10**6]))
    def evict(self, nbytes: int) -> None:
        self.store.evict(nbytes, now=self.now)

    @rule(n=st.sampled_from([0, 1, 3]))
    def keep_idle(self, n: int) -> None:
        """Keep the records of the ``n`` idle objects touched last (the others compact)."""
        self.store._objects.keep_idle = n

    @rule(dt=st.sampled_from([GRACE / 2, GRACE * 2, 0.3, 1.0]))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.store.expire(self.now)

    @precondition(lambda self: self.batch is None)
    @rule(max_bytes=st.sampled_from([3000, 16 * KIB]))
    def spill_batch(self, max_bytes: int) -> None:
        batch = self.store.spill_batch(self.now, max_bytes)
        if batch is not None:
            file_id, objects = batch
            holds = [
                self._hold(f"spill source {o.hex()[-4:]}", where, o) for o, where, _ in objects
            ]
            for h in holds:
                assert h.bytes_then == pattern(h.oid, self.sizes[h.oid]), "spilling wrong bytes"
            self.batch = (file_id, objects, holds)

    @precondition(lambda self: self.batch is not None)
    @rule(ok=st.sampled_from([True, True, False]))
    def spill_done(self, ok: bool) -> None:
        assert self.batch is not None
        file_id, objects, holds = self.batch
        self.batch = None
        if not ok:
            self.store.spill_failed(file_id, "ENOSPC", self.now)
            return
        entries = []
        offset = 8
        for i, ((o, where, t), h) in enumerate(zip(objects, holds, strict=True)):
            self.disk[(file_id, o)] = h.bytes_then
            length = where.data_size + where.metadata_size
            crc = int.from_bytes(hashlib.blake2b(h.bytes_then, digest_size=4).digest(), "big")
            e = SpillEntry(o, where.data_size, where.metadata_size, where.node, t, offset,
                           length, crc, i)  # fmt: skip
            self.entries[(file_id, o)] = e
            entries.append(e)
            offset += length
        self.files_live.add(file_id)
        self.store.spilled(file_id, entries, 64 + len(entries), 0.0, self.now)
        self.outcomes["spilled"] += 1

    @precondition(lambda self: self.batch is None)
    @rule(node=st.sampled_from(NODES))
    def spill_and_evict(self, node: int) -> None:
        """A batch written at once, then memory wanted: the copies on disk are dropped (after
        their grace period)."""
        self.store.evict(BUDGETS[node], now=self.now)
        self.spill_batch(16 * KIB)
        if self.batch is not None:
            self.spill_done(True)
        self.store.evict(BUDGETS[node], now=self.now)

    @precondition(lambda self: self.batch is None)
    @rule(data=st.data(), node=st.sampled_from(NODES), slot=SLOTS)
    def spill_out_and_ask_back(self, data: st.DataObject, node: int, slot: int) -> None:
        """What it takes to restore, in one step (else rare): spilled, evicted, the grace
        period over, and a get of what is only on disk."""
        self.spill_and_evict(node)
        self.advance(GRACE * 2)
        self.get(data, slot, wait=True, cancel=False)

    @precondition(lambda self: self.restores)
    @rule(data=st.data(), outcome=st.sampled_from(["ok", "ok", "lost", "error"]))
    def restore_done(self, data: st.DataObject, outcome: str) -> None:
        r, hold = self.restores.pop(data.draw(st.integers(0, len(self.restores) - 1)))
        assert r.entry == self.entries[(r.file, r.oid)], "a restore of another copy"
        if outcome == "ok":
            self.memory.write(hold.segment, hold.offset, self.disk[(r.file, r.oid)])
            self.store.restored(r.token, now=self.now)
            self.outcomes["restored"] += 1
        else:
            self.store.restored(r.token, outcome, lost=outcome == "lost", now=self.now)

    @rule(data=st.data(), slot=SLOTS, node=st.sampled_from(NODES))
    def migrate(self, data: st.DataObject, slot: int, node: int) -> None:
        client = self.slots[slot]
        ids = self._listed("sealed")
        if ids:
            o = data.draw(st.sampled_from(ids))
            with contextlib.suppress(PlasmaError):  # (refusals with a reason are fine here)
                res = self.store.migrate(client, o, node, now=self.now)
                if isinstance(res, Pending):
                    self.waiting[res.token] = (client, "migrate", [o])

    @rule(
        data=st.data(),
        slot=SLOTS,
        nodes=st.sampled_from([[0], [1], [0, 1]]),
        at_once=st.booleans(),
    )
    def replicate(self, data: st.DataObject, slot: int, nodes: list[int], at_once: bool) -> None:
        """Copy an object to other nodes; ``at_once``: the copies are done before anything
        else happens (so that a copy is read often enough, not only after a rare
        ``move_done`` of the right move)."""
        client = self.slots[slot]
        ids = self._listed("sealed")
        if ids:
            o = data.draw(st.sampled_from(ids))
            with contextlib.suppress(PlasmaError):
                res = self.store.replicate(client, o, nodes, now=self.now)
                if isinstance(res, Pending):
                    self.waiting[res.token] = (client, "replicate", [o])
                    moves_before = len(self.moves)
                    self._events()
                    while at_once and len(self.moves) > moves_before:
                        self._finish_move(*self.moves.pop(), ok=True)

    @rule(rounds=st.integers(1, 3))
    def follow(self, rounds: int) -> None:
        """Objects read mostly from another node move there (--follow-readers): the
        coordinator's loop runs ``rounds`` times in a row (a read held across rounds counts
        in each)."""
        for _ in range(rounds):
            if self.store.follow(self.now):
                self.outcomes["followed"] += 1

    @precondition(lambda self: self.moves)
    @rule(data=st.data(), ok=st.sampled_from([True, True, False]))
    def move_done(self, data: st.DataObject, ok: bool) -> None:
        self._finish_move(*self.moves.pop(data.draw(st.integers(0, len(self.moves) - 1))), ok)

    def _finish_move(self, event: Place | Copy, holds: list[Hold], ok: bool) -> None:
        if isinstance(event, Copy) and ok:
            source = holds[0].bytes_then
            for t in event.targets:
                self.memory.write(t.segment, t.offset, source)
            self.outcomes["copied"] += 1
        self.store.placed(event.token, None if ok else "EIO", now=self.now)

    @rule(slot=SLOTS)
    def disconnect(self, slot: int) -> None:
        """The client goes (its references, pins, arena and waiting calls with it) and
        comes back with a fresh pin table."""
        self._disconnect(self.slots[slot])
        self._connect(slot)

    def _disconnect(self, client: int) -> None:
        self.store.disconnect(client, now=self.now)
        for token, (cid, _, _) in list(self.waiting.items()):
            if cid == client:
                del self.waiting[token]
        del self.clients[client]

    # ------------------------------------------------------------ invariants

    @invariant()
    def nothing_held_is_freed_or_written(self) -> None:
        self._events()
        free = {sid: seg.alloc.free_ranges() for sid, seg in self.store._segments.items()}
        for h in self._all_holds():
            assert h.segment in self.memory.mem, f"{h.what}: segment {h.segment} was given back"
            now = self.memory.read(h.segment, h.offset, h.length)
            assert now == h.bytes_then, f"{h.what}: its bytes changed under it"
            for start, size in free.get(h.segment, ()):
                assert not (start < h.offset + h.length and h.offset < start + size), (
                    f"{h.what}: [{h.offset}, {h.offset + h.length}) is partly free"
                )

    @invariant()
    def live_objects_do_not_overlap_and_charges_add_up(self) -> None:
        store = self.store
        ranges = []
        for o, rec in store_records(store):
            if rec.state is not State.SPILLED or rec.io is Io.RESTORING:
                ranges.append((rec.loc.segment, rec.loc.offset, rec.size, o))
        for o, rec in [*store._replicas.items(), *store._dying.orphans]:
            ranges.append((rec.loc.segment, rec.loc.offset, rec.size, o))
        ranges = sorted(set(ranges))
        for (s1, o1, n1, id1), (s2, o2, _, id2) in itertools.pairwise(ranges):
            if s1 == s2:
                assert o1 + n1 <= o2, f"{id1.hex()} and {id2.hex()} share memory"
        in_memory = [
            rec
            for _, rec in store_records(store)
            if rec.state is not State.SPILLED or rec.io is Io.RESTORING
        ]
        want = charges_placed_in(store, in_memory)
        assert {n: store.stats()["nodes"][n]["placed_in"] for n in NODES} == {
            n: want[n] for n in NODES
        }

    @invariant()
    def the_object_table_agrees_with_the_directory(self) -> None:
        """Every listed id once; a compact object (no record) is a sealed, idle object of
        the directory, and every published record is the one its slot keeps."""
        self._events()
        table = self.store._objects
        publisher = self.store._dir
        listed = list(table)
        assert len(listed) == len(set(listed)) == len(table)
        busy = dict(table._busy)
        compact = 0
        for chunk in publisher.directory.ids_in_state(SEALED):
            for slot, oid in chunk:
                rec = publisher.slots.records.get(slot)
                if rec is None:
                    compact += 1
                    assert oid not in busy, f"{oid.hex()} is compact and has a record"
                    assert table.peek(oid).state is State.SEALED  # type: ignore[union-attr]
                else:
                    assert busy[oid] is rec, f"slot {slot} keeps another record of {oid.hex()}"
        assert compact == table.compact
        for oid in table.spilled.ids():  # (spilled, idle, in arrays)
            assert oid not in busy, f"{oid.hex()} is compact (spilled) and has a record"
            made = table.peek(oid)
            assert made is not None and made.state is State.SPILLED and made.io is Io.NONE
            assert made.spill is not None and made.spill[0] in self.files_live
        for oid, rec in busy.items():
            if rec.slot >= 0:
                assert publisher.slots.records[rec.slot] is rec, f"{oid.hex()}: not its slot's"
        if table.materialized > self.materialized:
            self.materialized = table.materialized
            self.outcomes["compact object touched"] += 1
        if table.materialized_spilled > self.materialized_spilled:
            self.materialized_spilled = table.materialized_spilled
            self.outcomes["compact spilled object touched"] += 1

    @invariant()
    def every_record_is_in_a_state_where_it_is_kept(self) -> None:
        """Each record's state and I/O agree with the table (plasma.store.objects) and with
        where the store keeps it: listed records are not freed, CLOCK candidates sealed,
        records waiting for their pin scan evicting or deleted, pinned deleted ones deleted,
        copies sealed (made) or being made."""
        store = self.store
        for _, rec in store_records(store):
            assert rec.io in IO_ALLOWED[rec.state], (rec.state, rec.io)
        assert all(rec.state is not State.FREED for rec in store._objects.values())
        for nd in store._nodes.values():
            assert all(rec.state is State.SEALED for rec in nd.clock.records())
        dying = {rec.state for _, _, rec in store._dying.waiting.values()}
        assert dying <= {State.EVICTING, State.DELETED}
        assert all(rec.state is State.DELETED for _, rec in store._dying.pinned.values())
        copies = {rec.state for rec in store._replicas.values()}
        assert copies <= {State.CREATED, State.SEALED}

    def teardown(self) -> None:
        """Every I/O finishes: every call waiting for one is answered. Every client goes,
        everything is deleted: nothing is left."""
        self._events()
        while self.moves:
            self._finish_move(*self.moves.pop(), ok=True)
            self._events()
        moving = [w for w in self.waiting.values() if w[1] in ("migrate", "replicate")]
        assert not moving, f"calls never answered although their I/O ended: {moving}"
        for cid in list(self.clients):
            self._disconnect(cid)
            self._events()  # (what its going made possible for the others)
        self._connect(1)
        last = self.slots[1]
        for _ in range(20):
            self._events()
            if self.batch is not None:
                self.spill_done(True)
            while self.restores:
                r, hold = self.restores.pop()
                self.memory.write(hold.segment, hold.offset, self.disk[(r.file, r.oid)])
                self.store.restored(r.token, now=self.now)
            while self.moves:
                event, _ = self.moves.pop()
                self.store.placed(event.token, now=self.now)
            self._events()
            self.store.delete(last, self._listed(), now=self.now)
            self.now += 1.0
            self.store.expire(self.now)
            self._events()
            if not (self.batch or self.restores or self.moves or self.store.objects()):
                break
        self.store.disconnect(last, now=self.now)
        self.now += 1.0
        self.store.expire(self.now)
        self._events()
        stats = self.store.stats()
        assert (stats["used"], stats["objects"], stats["dying"]) == (0, 0, 0), stats
        assert stats["directory"]["objects"] == 0
        assert stats["spill"]["objects"] == 0
        assert not self.files_live, f"spill files left: {sorted(self.files_live)}"
        assert not self.store._after_io and not self.store._placing
        assert all(v == 0 for v in (n["placed_in"] for n in stats["nodes"].values()))


EXAMPLES = int(os.environ.get("COMBINED_EXAMPLES", "300"))
COMBINED_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCombinedMachine = CombinedMachine.TestCase
TestCombinedMachine.settings = COMBINED_SETTINGS


def test_the_combined_machine_reaches_where_features_meet() -> None:
    """The machine gets where the bugs were (a change to the rules that loses these
    interleavings fails here instead of silently testing less)."""
    wanted = [
        "get",
        "pinned",
        "pinned a copy",
        "waited get",
        "spilled",
        "restored",
        "copied",
        "followed",
        "remapped",
        "late grant returned",
        "stale return",
        "stale seal refused",
        "create done",
        "interleaved create done",
        "compact object touched",
        "compact spilled object touched",
    ]
    reached(CombinedMachine, COMBINED_SETTINGS, wanted, examples=150, at_least=1, runs=6)
