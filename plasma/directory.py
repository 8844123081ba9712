"""The shared object directory and pin tables (internal, sans-I/O): layout, writer, reader.

The coordinator publishes every sealed object in a *directory*: one shared-memory file it
alone writes and every client maps read-only. Each client gets a *pin table*: a small file
only that client writes and the coordinator reads. A client gets a sealed object with no
message at all: a consistent (seqlock) read of the object's directory slot, a pin (the
object's generation written into its pin table), a re-read of the slot's sequence word. The
coordinator never frees an object's bytes while a pin on it may exist: it marks the slot
dying, waits a grace period, and scans the pin tables. docs/protocol.md ("The object
directory") has the layout byte by byte and the memory-ordering argument.

This module only reads and writes buffers (``bytearray``, ``mmap``): the coordinator and
the clients create, map and hand over the files. Its bulk work (pin scans, a rebuild's
placement) is C (:mod:`plasma._native`), or numpy where the extension is not built: the
coordinator does not import numpy.

Directory: a 64-byte header, then ``capacity`` (a power of two) 64-byte slots::

    header  0 magic b"PLSMDIR1"  8 u32 version  12 u32 slot size  16 u64 capacity
            24 u64 superseded (0; 1 once a new directory replaced this one)  32 u64 max probe
            40 u64 replicas (1: look up plasma.ids.replica_id(id, your node) first)
            48 u64 token (random 63 bits, never 0: names this directory when a client asks for
            the one that superseded it, so only a client that mapped it can ask)
    slot    0 u64 seq (odd while being written)  8 u64 generation  16 id[20]  36 u32 segment
            40 u64 offset  48 u64 data size  56 u32 metadata size  60 u16 node  62 u8 state
            63 u8 flags (bit 0: a read-only copy on another node, published under
            plasma.ids.replica_id: only lookups of copies see it, so an object a client
            created under such an id never passes for a copy)
    header  56 u64 ordered (1: every slot write is ordered by release stores, the C writer's;
            readers on CPUs weaker than x86-64 require it)

An id lives at its home slot (:func:`home_slot`) or at most ``max probe - 1`` slots after
it (linear probing); a free slot ends a probe. Generations are unique for the life of the
coordinator (never reused, 0 is none), so a pin is just a generation; their low 32 bits are
random, so a client cannot pin an object before it is published (it must read it).

Pin table: a 64-byte header whose first u64 is the high-water mark (entries at and past it
are all zero), then u64 entries, 0 for free, else a pinned generation.
"""

from __future__ import annotations

import array
import collections
import itertools
import math
import os
import platform
import struct
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any, NamedTuple

from plasma._native import native
from plasma.ids import ID_SIZE
from plasma.records import ObjectLocation

MAGIC = b"PLSMDIR1"
VERSION = 2
HEADER_SIZE = 64
SLOT_SIZE = 64
MAX_PROBE = 32  # slots a lookup visits at most; an insert that finds none free there fails
SCAN_CHUNK = 1 << 15  # slots copied at once by a scan of the whole directory (2 MiB)
MIN_CAPACITY = 1 << 14
MAX_LOAD = 0.75  # live + tombstone slots beyond this share of the capacity: rebuild
MAX_METADATA = 2**32 - 1  # larger metadata does not fit a slot: such objects use requests
MAX_SEGMENT = 2**32 - 1
PIN_HEADER = 64
PIN_ENTRIES = 4096  # pins per client by default (32 KiB)

FREE, SEALED, DYING, TOMBSTONE = 0, 1, 2, 3
REPLICA = 1  # a slot's flags: a copy of an object on another node
# The Python reader's and writer's seqlock and pin protocol rely on x86-64's ordering (loads
# are not reordered with loads, stores not with stores) and issue no fences. The C read path
# and writer (plasma._native) use acquire loads and release stores instead, safe anywhere:
# elsewhere a client reads the directory only through them, and only a directory whose
# writer was the C one (its header says ordered), else it uses requests.
ORDERED_MEMORY = platform.machine().lower() in {"x86_64", "amd64"}

_HEADER = struct.Struct("<8sIIQQQ")  # magic, version, slot size, capacity, superseded, probe
_SUPERSEDED = 24
_REPLICAS = 40  # u64, 1 once replicas (plasma.ids.replica_id) may be in the directory
_TOKEN = 48  # u64, random: this directory's name
_SEQ = struct.Struct("<Q")
# a slot after its seq word: generation, id, segment, offset, data size, metadata size, node,
# state, flags
_BODY = struct.Struct("<Q20sIQQIHBB")
_STATE = 62
_FLAGS = 63
_KEY = struct.Struct("<QQI")
_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
assert _BODY.size == _FLAGS - 8 + 1 and _SEQ.size + _BODY.size == SLOT_SIZE


def _only(value: int) -> bytes:
    """The translation table that maps byte ``value`` to 1 and every other byte to 0."""
    table = bytearray(256)
    table[value] = 1
    return bytes(table)


def home_slot(oid: bytes, bits: int) -> int:
    """The slot an id is looked up from in a directory of ``2**bits`` slots: the top bits of
    (the id's three little-endian words xor-ed) times the golden-ratio constant."""
    a, b, c = _KEY.unpack(oid)
    return (((a ^ b ^ c) * _GOLDEN) & _MASK64) >> (64 - bits)


_PINNED, _COUNTS, _HOLDERS = 0, 1, 2  # the questions of a pins_match pass


def _bulk() -> ModuleType:
    """Where pin scans and a rebuild's placement run: the C extension, or numpy (imported
    only then: the coordinator's import graph has no numpy)."""
    if native is not None:
        return native
    from plasma import _bulk_numpy

    return _bulk_numpy


def directory_size(capacity: int) -> int:
    """Bytes of a directory of ``capacity`` slots."""
    return HEADER_SIZE + capacity * SLOT_SIZE


def pin_table_size(entries: int = PIN_ENTRIES) -> int:
    """Bytes of a pin table of ``entries`` pins."""
    return PIN_HEADER + 8 * entries


def _check_capacity(capacity: int) -> int:
    if capacity < 2 or capacity & (capacity - 1):
        raise ValueError(f"directory capacity must be a power of two >= 2, got {capacity}")
    return capacity.bit_length() - 1


class Directory:
    """The coordinator's side: the only writer of a directory in ``buf`` (zero-filled,
    :func:`directory_size` bytes). Every change of a slot is a seqlock write: seq made odd,
    the fields written, seq made even again."""

    def __init__(self, buf: Any, capacity: int, max_probe: int = MAX_PROBE) -> None:
        self._bits = _check_capacity(capacity)
        self.capacity = capacity
        self.max_probe = min(max_probe, capacity)
        self._mv = buf  # bytearray or mmap: indexable, sliceable, writable by struct
        if len(buf) < directory_size(capacity):
            raise ValueError(f"{len(buf)} bytes hold no directory of {capacity} slots")
        _HEADER.pack_into(self._mv, 0, MAGIC, VERSION, SLOT_SIZE, capacity, 0, self.max_probe)
        self.token = int.from_bytes(os.urandom(8), "little") >> 1 | 1  # 63 bits: a msgpack int
        _SEQ.pack_into(self._mv, _TOKEN, self.token)
        if native is not None:  # every slot write below goes through the C writer
            native.set_ordered(self._mv)
        self.live = 0  # sealed and dying slots
        self.tombstones = 0
        self._most = math.ceil(capacity * MAX_LOAD)  # live + tombstones when full

    def insert(self, oid: bytes, generation: int, loc: ObjectLocation, flags: int = 0) -> int:
        """Publish a sealed object (not in the directory yet; ``flags`` REPLICA for a copy);
        its slot, or -1 when it cannot be published (no free slot within the probe limit,
        or a field too large for a slot): such an object is served by requests only."""
        if native is not None:  # the probe and the write in one call
            placed = native.insert(
                self._mv,
                self.capacity,
                self.max_probe,
                generation,
                oid,
                loc.segment,
                loc.offset,
                loc.data_size,
                loc.metadata_size,
                loc.node,
                flags,
            )
            if placed < 0:
                return -1
            self.live += 1
            self.tombstones -= placed & 1  # (1: it took a tombstone)
            return placed >> 1
        if (
            len(oid) != ID_SIZE
            or loc.metadata_size > MAX_METADATA
            or not 0 <= loc.segment <= MAX_SEGMENT
        ):
            return -1
        mv = self._mv
        mask = self.capacity - 1
        slot = home_slot(oid, self._bits)
        for _ in range(self.max_probe):
            state = mv[HEADER_SIZE + slot * SLOT_SIZE + _STATE]
            if state in (FREE, TOMBSTONE):
                if state == TOMBSTONE:
                    self.tombstones -= 1
                self.live += 1
                self._write(slot, generation, oid, loc, SEALED, flags)
                return slot
            slot = (slot + 1) & mask
        return -1

    def copy_from(self, old: Directory, slots: array.array[int]) -> array.array[int]:
        """Fill this new, empty directory (no reader maps it yet) with the live objects of
        ``old``'s ``slots``: same generation, location and state. Returns their slots here,
        in order, -1 for any that found no slot within the probe limit (then ``live`` is
        below ``len(slots)``).

        Placed in bulk (one C call, or numpy without the extension: linear probing in order
        of home slot is a running maximum) when every object fits; otherwise inserted one by
        one in the order given, so the ones left out are the last ones given."""
        if self.live or self.tombstones:
            raise ValueError("copy_from fills an empty directory")
        placed = array.array("q", [0]) * len(slots)
        if native is not None:
            fits = native.place(
                self._mv, self.capacity, self.max_probe, old._mv, old.capacity, slots, placed
            )
        else:
            fits = _bulk().place_in_bulk(self, old, slots, placed)
        if fits:
            self.live, self.tombstones = len(slots), 0
            return placed
        self.live = self.tombstones = 0  # (the bulk placement left every slot free)
        return array.array("q", [self._copy_slot(old, slot) for slot in slots])

    def _copy_slot(self, old: Directory, slot: int) -> int:
        oid, generation, loc, state = old.entry(slot)
        new_slot = self.insert(oid, generation, loc, old.flags(slot))
        if new_slot >= 0 and state == DYING:
            self.set_state(new_slot, DYING)
        return new_slot

    def entry(self, slot: int) -> tuple[bytes, int, ObjectLocation, int]:
        """``(id, generation, location, state)`` of a live slot."""
        gen, oid, seg, off, dsize, msize, node, state, _ = _BODY.unpack_from(
            self._mv, HEADER_SIZE + slot * SLOT_SIZE + 8
        )
        return oid, gen, ObjectLocation(seg, off, dsize, msize, node), state

    def ids_in_state(self, state: int, flags: int = 0) -> Iterator[list[tuple[int, bytes]]]:
        """``(slot, id)`` of every slot that reads ``state`` with ``flags``, in slot order:
        a list per ``SCAN_CHUNK`` slots (each chunk copied and read at once)."""
        for first in range(0, self.capacity, SCAN_CHUNK):
            n = min(SCAN_CHUNK, self.capacity - first)
            start = HEADER_SIZE + first * SLOT_SIZE
            with memoryview(self._mv) as mv:
                chunk = mv[start : start + n * SLOT_SIZE].tobytes()
            wanted = int.from_bytes(chunk[_STATE::SLOT_SIZE].translate(_only(state)), "little")
            wanted &= int.from_bytes(chunk[_FLAGS::SLOT_SIZE].translate(_only(flags)), "little")
            at = range(16, n * SLOT_SIZE, SLOT_SIZE)
            yield [
                (first + i, chunk[at[i] : at[i] + ID_SIZE])
                for i in itertools.compress(range(n), wanted.to_bytes(n, "little"))
            ]

    def unrecorded_ids(self, recorded: bytes | bytearray) -> list[bytes]:
        """The ids of the slots that read sealed, hold no copy, and have a 0 in
        ``recorded`` (a byte by slot), in slot order."""
        if native is not None:
            return native.compact_ids(self._mv, self.capacity, recorded)
        return [
            oid for chunk in self.ids_in_state(SEALED) for slot, oid in chunk if not recorded[slot]
        ]

    def set_state(self, slot: int, state: int) -> None:
        """Mark a live slot SEALED or DYING."""
        if native is not None:
            native.set_state(self._mv, self.capacity, slot, state)
            return
        base = HEADER_SIZE + slot * SLOT_SIZE
        (seq,) = _SEQ.unpack_from(self._mv, base)
        _SEQ.pack_into(self._mv, base, seq + 1)
        self._mv[base + _STATE] = state
        _SEQ.pack_into(self._mv, base, seq + 2)

    def remove(self, slot: int) -> None:
        """The slot's object is gone: leave a tombstone (probes go on past it)."""
        if native is not None:
            native.clear_slot(self._mv, self.capacity, slot)
        else:
            base = HEADER_SIZE + slot * SLOT_SIZE
            mv = self._mv
            (seq,) = _SEQ.unpack_from(mv, base)
            _SEQ.pack_into(mv, base, seq + 1)
            mv[base + 8 : base + SLOT_SIZE] = bytes(SLOT_SIZE - 8)
            mv[base + _STATE] = TOMBSTONE
            _SEQ.pack_into(mv, base, seq + 2)
        self.live -= 1
        self.tombstones += 1

    def id(self, slot: int) -> bytes:
        """The id in a live slot."""
        base = HEADER_SIZE + slot * SLOT_SIZE + 16
        return bytes(self._mv[base : base + ID_SIZE])

    def generation(self, slot: int) -> int:
        return int(_SEQ.unpack_from(self._mv, HEADER_SIZE + slot * SLOT_SIZE + 8)[0])

    def state(self, slot: int) -> int:
        return self._mv[HEADER_SIZE + slot * SLOT_SIZE + _STATE]

    def flags(self, slot: int) -> int:
        return self._mv[HEADER_SIZE + slot * SLOT_SIZE + _FLAGS]

    def entries(self) -> Iterator[tuple[bytes, int, ObjectLocation, int]]:
        """``(id, generation, location, state)`` of every live slot."""
        mv = self._mv
        for slot in range(self.capacity):
            base = HEADER_SIZE + slot * SLOT_SIZE
            state = mv[base + _STATE]
            if state in (SEALED, DYING):
                gen, oid, seg, off, dsize, msize, node, _, _ = _BODY.unpack_from(mv, base + 8)
                yield oid, gen, ObjectLocation(seg, off, dsize, msize, node), state

    def full(self) -> bool:
        """True when live and tombstone slots pass ``MAX_LOAD`` of the capacity: time to
        rebuild (:func:`rebuilt_capacity`)."""
        return self.live + self.tombstones >= self._most

    def supersede(self) -> None:
        """Tell readers this directory is stale (they fall back to requests and re-map)."""
        if native is not None:
            native.set_superseded(self._mv)
        else:
            _SEQ.pack_into(self._mv, _SUPERSEDED, 1)

    def announce_replicas(self) -> None:
        """Tell readers to look for a copy on their node first (written once, before the
        first replica is published)."""
        _SEQ.pack_into(self._mv, _REPLICAS, 1)

    def _write(
        self, slot: int, generation: int, oid: bytes, loc: ObjectLocation, state: int, flags: int
    ) -> None:
        base = HEADER_SIZE + slot * SLOT_SIZE
        mv = self._mv
        (seq,) = _SEQ.unpack_from(mv, base)
        _SEQ.pack_into(mv, base, seq + 1)
        _BODY.pack_into(
            mv,
            base + 8,
            generation,
            oid,
            loc.segment,
            loc.offset,
            loc.data_size,
            loc.metadata_size,
            loc.node,
            state,
            flags,
        )
        _SEQ.pack_into(mv, base, seq + 2)


class GenerationSource:
    """Generations for published objects: a counter in the high 32 bits (unique for the
    life of the coordinator, never 0), random bits in the low 32 (from the kernel's CSPRNG,
    drawn ``batch`` at a time), so a client cannot write a pin on an object before it is
    published: it must read the generation in the directory."""

    def __init__(self, batch: int = 1024) -> None:
        self._count = 0
        self._batch = batch
        self._random: list[int] = []

    def next(self) -> int:
        if not self._random:
            self._random = array.array("I", os.urandom(4 * self._batch)).tolist()
        self._count += 1
        return self._count << 32 | self._random.pop()


def rebuilt_capacity(live: int, minimum: int = MIN_CAPACITY) -> int:
    """The capacity of a rebuilt directory for ``live`` objects: the least power of two (at
    least ``minimum``) at most half full after the rebuild, so a million objects take at most
    2M slots (128 MiB), and it takes a quarter of its slots more (at least half as many
    objects again) before the next one (at ``MAX_LOAD``)."""
    capacity = minimum
    while capacity < 2 * (live + 1):
        capacity *= 2
    return capacity


class Found(NamedTuple):
    """A consistent read of a sealed object's slot."""

    slot: int
    seq: int
    generation: int
    location: ObjectLocation


class DirectoryReader:
    """A client's side: lookups in a directory mapped read-only (``buf``), and the access
    bytes (``access``, one per slot, written 1 by readers, cleared by the coordinator's
    eviction hand; None for a client that may not write them)."""

    def __init__(self, buf: Any, access: Any = None) -> None:
        self._mv = buf
        magic, version, slot_size, capacity, _, probe = _HEADER.unpack_from(buf, 0)
        if (magic, version, slot_size) != (MAGIC, VERSION, SLOT_SIZE):
            raise ValueError(
                f"not a version {VERSION} directory (magic {magic!r}, version {version}, "
                f"slot size {slot_size})"
            )
        self._bits = _check_capacity(capacity)
        if len(self._mv) < directory_size(capacity):
            need = directory_size(capacity)
            raise ValueError(f"a directory of {capacity} slots needs {need} bytes")
        self.capacity = capacity
        self._probe = probe
        self._access = access if access is not None and len(access) >= capacity else None

    def lookup(self, oid: bytes, flags: int = 0) -> Found | None:
        """The sealed object ``oid`` as a consistent read of its slot, or None: not in this
        directory, not sealed, or its slot changing (each means: ask the coordinator).
        ``flags`` REPLICA looks up a copy (``oid`` a :func:`plasma.ids.replica_id`): slots
        of the other kind are passed over."""
        mv = self._mv
        mask = self.capacity - 1
        slot = home_slot(oid, self._bits)
        unpack_seq = _SEQ.unpack_from
        unpack = _BODY.unpack_from
        for _ in range(self._probe):
            base = HEADER_SIZE + slot * SLOT_SIZE
            (seq,) = unpack_seq(mv, base)
            if seq & 1:
                return None
            gen, key, seg, off, dsize, msize, node, state, kind = unpack(mv, base + 8)
            if unpack_seq(mv, base)[0] != seq:
                return None
            if state == FREE:
                return None
            # (a dying slot of an earlier object, or a slot of the other kind: go on)
            if key == oid and state == SEALED and kind == flags:
                access = self._access
                if access is not None and not access[slot]:  # read first: no line bouncing
                    access[slot] = 1
                return Found(slot, seq, gen, ObjectLocation(seg, off, dsize, msize, node))
            slot = (slot + 1) & mask
        return None

    def unchanged(self, found: Found) -> bool:
        """True when the slot was not written since ``found`` was read and the directory is
        still current: read after the pin is written, this makes the pin safe."""
        return (
            _SEQ.unpack_from(self._mv, HEADER_SIZE + found.slot * SLOT_SIZE)[0] == found.seq
            and not self.superseded
        )

    def dying(self, found: Found) -> bool:
        """True when ``found``'s object is now marked dying (its delete waits for pins);
        False also for a read of an older directory (its slot may lie anywhere here)."""
        if found.slot >= self.capacity:
            return False
        base = HEADER_SIZE + found.slot * SLOT_SIZE
        mv = self._mv
        return mv[base + _STATE] == DYING and _SEQ.unpack_from(mv, base + 8)[0] == found.generation

    @property
    def superseded(self) -> bool:
        return _SEQ.unpack_from(self._mv, _SUPERSEDED)[0] != 0

    @property
    def token(self) -> int:
        """This directory's name (see the layout): what ``Tables`` asks to replace."""
        return int(_SEQ.unpack_from(self._mv, _TOKEN)[0])

    @property
    def replicas(self) -> bool:
        """Whether copies of objects on other nodes may be published here (the flag's low
        byte: one load on every get)."""
        return self._mv[_REPLICAS] != 0


class PinTable:
    """A client's side: the pins it holds, in its pin table ``buf`` (writable, zero-filled).

    A pin is written after the high-water mark that covers it, so whoever sees the pin sees
    the mark (stores are not reordered with stores on x86-64)."""

    def __init__(self, buf: Any) -> None:
        self._mv = buf
        self.entries = (len(buf) - PIN_HEADER) // 8
        self._free: list[int] = []
        self._hwm = 0
        self.count = 0

    def pin(self, generation: int) -> int | None:
        """Pin ``generation``; the entry's index, or None when the table is full."""
        if self._free:
            index = self._free.pop()
        elif self._hwm < self.entries:
            index = self._hwm
            self._hwm += 1
            _SEQ.pack_into(self._mv, 0, self._hwm)
        else:
            return None
        _SEQ.pack_into(self._mv, PIN_HEADER + 8 * index, generation)
        self.count += 1
        return index

    def unpin(self, index: int) -> None:
        _SEQ.pack_into(self._mv, PIN_HEADER + 8 * index, 0)
        self._free.append(index)
        self.count -= 1


class PinScanner:
    """The coordinator's side: every client's pin table (mapped read-only), scanned for
    generations.

    Every question is answered by one *pass*: one C call (``plasma._native``'s
    ``pins_match``, ``pin_count``, ``pins_by_table``) that reads every table's entries below
    its high-water mark once each (a client writes its table meanwhile: each entry is used
    as read, a snapshot entry by entry) and answers from them; no Python work per entry,
    and whatever the question, at most one pass (``passes`` counts them, so the store's
    callers can be held to a bound). Without the extension, the same passes in numpy
    (:mod:`plasma._bulk_numpy`, imported then)."""

    def __init__(self) -> None:
        self._tables: dict[int, memoryview] = {}
        self.passes = 0  # passes made so far (each reads every table once)

    def add(self, client: int, table: Any) -> None:
        """Start reading client ``client``'s pin table (a buffer of u64 words)."""
        self._tables[client] = memoryview(table).cast("B")

    def remove(self, client: int) -> bool:
        """The client is gone, and its pins with it; False if it had no table."""
        return self._tables.pop(client, None) is not None

    def __deepcopy__(self, memo: dict[int, Any]) -> PinScanner:
        """A scanner of a copy of every table as it is now (a store's copy, in tests)."""
        clone = PinScanner()
        clone.passes = self.passes
        for client, table in self._tables.items():
            clone.add(client, bytearray(table))
        return clone

    def _match(self, generations: Iterable[int], what: int) -> Any:
        """One pass for the distinct nonzero ``generations`` (none: no pass, None)."""
        if not self._tables:
            return None
        tables = list(self._tables.values())
        clients = list(self._tables) if what == _HOLDERS else None
        found = _bulk().pins_match(tables, generations, what, clients)
        if found is not None:
            self.passes += 1
        return found

    def pinned(self, generations: Iterable[int]) -> set[int]:
        """Which of ``generations`` some client pins now (one pass)."""
        found: set[int] | None = self._match(generations, _PINNED)
        return set() if found is None else found

    def holders_of(self, generations: Iterable[int]) -> dict[int, list[int]]:
        """The clients pinning each of ``generations`` now, in the order they were added
        (generations no client pins left out; ascending; one pass)."""
        found: dict[int, list[int]] | None = self._match(generations, _HOLDERS)
        return {} if found is None else found

    def total(self) -> int:
        """How many pins all clients hold now."""
        self.passes += 1
        return int(_bulk().pin_count(list(self._tables.values())))

    def by_client(self) -> dict[int, list[int]]:
        """The generations each client pins now (clients pinning nothing left out)."""
        if not self._tables:
            return {}
        self.passes += 1
        by_table = _bulk().pins_by_table(list(self._tables.values()))
        return {c: pins for c, pins in zip(self._tables, by_table, strict=True) if pins}

    def counts(self, generations: Iterable[int]) -> collections.Counter[int]:
        """Pins per generation of ``generations``, over all clients (one pass)."""
        counts: collections.Counter[int] = collections.Counter()
        found: dict[int, int] | None = self._match(generations, _COUNTS)
        if found is not None:
            counts.update(found)
        return counts

    def pins_of(self, client: int) -> int:
        """How many pins client ``client`` holds now."""
        table = self._tables.get(client)
        return 0 if table is None else int(_bulk().pin_count([table]))
