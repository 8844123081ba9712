"""The shared object directory and pin tables (plasma.directory) on their own, over plain
buffers: the byte layout, linear probing, the seqlock, generations, pin tables and the
scanner, and a hypothesis state machine of writer + readers against a dict model."""

from __future__ import annotations

import array
import collections
import mmap
import struct
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import plasma.directory as directory_module
from plasma import _bulk_numpy
from plasma._client_core.fast_path import ReadPath
from plasma._native import native
from plasma.directory import (
    DYING,
    FREE,
    HEADER_SIZE,
    MAGIC,
    MAX_LOAD,
    MAX_METADATA,
    MAX_PROBE,
    MAX_SEGMENT,
    PIN_ENTRIES,
    PIN_HEADER,
    SEALED,
    SLOT_SIZE,
    TOMBSTONE,
    VERSION,
    Directory,
    DirectoryReader,
    Found,
    GenerationSource,
    PinScanner,
    directory_size,
    home_slot,
    pin_table_size,
    rebuilt_capacity,
)
from plasma.ids import ID_SIZE
from plasma.records import ObjectLocation
from tests.helpers import (
    BULK_PATHS,
    KEY,
    READ_PATHS,
    bulk_path,
    colliding,
    directory_ids,
)
from tests.helpers import oid as ident

U64 = struct.Struct("<Q")


def at_home(slot: int, bits: int, count: int, start: int = 0) -> list[bytes]:
    """``count`` ordinary ids whose home slot is ``slot`` in a directory of ``2**bits``."""
    out: list[bytes] = []
    n = start
    while len(out) < count:
        n += 1
        if home_slot(ident(n), bits) == slot:
            out.append(ident(n))
    return out


def where(n: int = 1, size: int = 100) -> ObjectLocation:
    return ObjectLocation(n, 64 * n, size, n % 7, n % 3)


def new_directory(capacity: int = 16, max_probe: int = MAX_PROBE) -> tuple[Directory, bytearray]:
    buf = bytearray(directory_size(capacity))
    return Directory(buf, capacity, max_probe), buf


@pytest.fixture(params=["native", "python"])
def writer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Directories made in this test write their slots through this writer: the C one (one
    call per insert), then the Python fallback (where the extension is not built); pin scans
    and a rebuild's placement run in C, then in numpy (tests.helpers.bulk_path)."""
    if request.param == "python":
        monkeypatch.setattr(directory_module, "native", None)
    elif native is None:
        pytest.skip("the C writer is not built")
    return str(request.param)


def slot_base(slot: int) -> int:
    return HEADER_SIZE + slot * SLOT_SIZE


def raw_seq(buf: bytearray, slot: int) -> int:
    return int(U64.unpack_from(buf, slot_base(slot))[0])


# ---------------------------------------------------------------- layout


def test_sizes() -> None:
    assert (HEADER_SIZE, SLOT_SIZE, PIN_HEADER) == (64, 64, 64)
    assert directory_size(16) == 64 + 16 * 64
    assert pin_table_size(8) == 64 + 8 * 8
    assert pin_table_size() == 64 + 8 * PIN_ENTRIES


def test_header_layout() -> None:
    d, buf = new_directory(16, max_probe=8)
    assert buf[0:8] == MAGIC == b"PLSMDIR1"
    assert struct.unpack_from("<I", buf, 8) == (VERSION,)
    assert struct.unpack_from("<I", buf, 12) == (SLOT_SIZE,)
    assert struct.unpack_from("<Q", buf, 16) == (16,)
    assert struct.unpack_from("<Q", buf, 24) == (0,)  # not superseded
    assert struct.unpack_from("<Q", buf, 32) == (8,)  # max probe
    assert buf[40:48] == bytes(8)
    (token,) = struct.unpack_from("<Q", buf, 48)
    assert token == d.token and 0 < token < 1 << 63  # tells one directory from the next
    # ordered: 1 where the C writer writes the slots (release stores)
    assert struct.unpack_from("<Q", buf, 56) == (0 if native is None else 1,)
    assert buf[64:] == bytes(len(buf) - 64)  # every slot: zero
    d.supersede()
    assert struct.unpack_from("<Q", buf, 24) == (1,)
    assert buf[32:40] == struct.pack("<Q", 8)  # nothing else moved


def test_max_probe_is_at_most_the_capacity() -> None:
    d, buf = new_directory(4)
    assert d.max_probe == 4 and struct.unpack_from("<Q", buf, 32) == (4,)
    assert DirectoryReader(buf)._probe == 4


def test_slot_layout_byte_by_byte() -> None:
    d, buf = new_directory(16)
    oid = bytes(range(1, 21))
    loc = ObjectLocation(0x0102_0304, 0x1122_3344_5566_7788, 0x0A0B_0C0D_0E0F, 0xFFFF_FFFF, 0xBEEF)
    slot = d.insert(oid, 0xDEAD_BEEF_0000_0001, loc)
    assert slot == home_slot(oid, 4)
    b = slot_base(slot)
    assert struct.unpack_from("<Q", buf, b) == (2,)  # seq: even, written once
    assert struct.unpack_from("<Q", buf, b + 8) == (0xDEAD_BEEF_0000_0001,)
    assert bytes(buf[b + 16 : b + 36]) == oid
    assert struct.unpack_from("<I", buf, b + 36) == (0x0102_0304,)
    assert struct.unpack_from("<Q", buf, b + 40) == (0x1122_3344_5566_7788,)
    assert struct.unpack_from("<Q", buf, b + 48) == (0x0A0B_0C0D_0E0F,)
    assert struct.unpack_from("<I", buf, b + 56) == (0xFFFF_FFFF,)
    assert struct.unpack_from("<H", buf, b + 60) == (0xBEEF,)
    assert buf[b + 62] == SEALED
    assert buf[b + 63] == 0
    others = bytes(buf[HEADER_SIZE:b]) + bytes(buf[b + SLOT_SIZE :])
    assert others == bytes(len(others))  # no other slot was touched
    d.set_state(slot, DYING)
    assert buf[b + 62] == DYING and raw_seq(buf, slot) == 4
    d.remove(slot)
    assert raw_seq(buf, slot) == 6
    assert buf[b + 8 : b + 62] == bytes(54) and buf[b + 62] == TOMBSTONE


@pytest.mark.parametrize("capacity", [0, 1, 3, 6, 12, 100])
def test_capacity_must_be_a_power_of_two(capacity: int) -> None:
    with pytest.raises(ValueError, match="power of two"):
        Directory(bytearray(directory_size(max(capacity, 1))), capacity)


def test_buffer_must_hold_the_directory() -> None:
    with pytest.raises(ValueError, match="no directory"):
        Directory(bytearray(directory_size(16) - 1), 16)


@pytest.mark.parametrize("path", READ_PATHS)
def test_reader_checks_the_header(path: ReadPath) -> None:
    _, buf = new_directory(16)
    path.reader(buf)
    for offset, value, fmt in [(0, b"PLSMDIR0", "8s"), (8, VERSION - 1, "I"), (12, 32, "I")]:
        bad = bytearray(buf)
        struct.pack_into("<" + fmt, bad, offset, value)
        with pytest.raises(ValueError, match="not a version"):
            path.reader(bad)
    bad = bytearray(buf)
    struct.pack_into("<Q", bad, 16, 12)
    with pytest.raises(ValueError, match="power of two"):
        path.reader(bad)
    with pytest.raises(ValueError, match=r"needs|shorter"):
        path.reader(buf[: directory_size(16) - 1])
    with pytest.raises(ValueError):
        path.reader(bytearray(directory_size(16)))  # all zero: no magic


# ---------------------------------------------------------------- insert and lookup


@given(
    oid=st.binary(min_size=20, max_size=20),
    gen=st.integers(1, 2**64 - 1),
    seg=st.integers(0, MAX_SEGMENT),
    off=st.integers(0, 2**64 - 1),
    dsize=st.integers(0, 2**64 - 1),
    msize=st.integers(0, MAX_METADATA),
    node=st.integers(0, 2**16 - 1),
    bits=st.integers(1, 8),
)
@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_insert_lookup_round_trip(
    path: ReadPath,
    oid: bytes,
    gen: int,
    seg: int,
    off: int,
    dsize: int,
    msize: int,
    node: int,
    bits: int,
) -> None:
    d, buf = new_directory(1 << bits)
    loc = ObjectLocation(seg, off, dsize, msize, node)
    slot = d.insert(oid, gen, loc)
    assert slot == home_slot(oid, bits)
    assert (d.generation(slot), d.state(slot), d.live, d.tombstones) == (gen, SEALED, 1, 0)
    assert path.reader(buf).lookup(oid) == Found(slot, 2, gen, loc)
    assert list(d.entries()) == [(oid, gen, loc, SEALED)]


@given(oid=st.binary(min_size=20, max_size=20), bits=st.integers(1, 32))
def test_home_slot_is_the_top_bits_of_the_mixed_key(oid: bytes, bits: int) -> None:
    a, b, c = KEY.unpack(oid)
    mixed = ((a ^ b ^ c) * 0x9E3779B97F4A7C15) % 2**64
    assert home_slot(oid, bits) == mixed >> (64 - bits)
    assert 0 <= home_slot(oid, bits) < 2**bits


@given(n=st.integers(0, 2**40), m=st.integers(0, 2**40), bits=st.integers(1, 32))
def test_colliding_family_shares_a_home_in_every_size(n: int, m: int, bits: int) -> None:
    assert home_slot(colliding(n), bits) == home_slot(colliding(m), bits)


@pytest.mark.parametrize("path", READ_PATHS)
def test_lookup_of_an_absent_id_in_an_empty_directory(path: ReadPath) -> None:
    _, buf = new_directory(16)
    assert path.reader(buf).lookup(ident(1)) is None


@pytest.mark.parametrize("path", READ_PATHS)
def test_generations_are_whatever_the_writer_gives(path: ReadPath) -> None:
    d, buf = new_directory(16)
    reader = path.reader(buf)
    for n, gen in enumerate([5, 1, 2**63], start=1):
        d.insert(ident(n), gen, where(n))
    assert [reader.lookup(ident(n)).generation for n in (1, 2, 3)] == [5, 1, 2**63]  # type: ignore[union-attr]


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_linear_probing_wraps_around(path: ReadPath) -> None:
    d, buf = new_directory(8)
    ids = at_home(7, 3, 3)  # the last slot: the probe wraps to 0, 1
    slots = [d.insert(o, n + 1, where(n)) for n, o in enumerate(ids)]
    assert slots == [7, 0, 1]
    reader = path.reader(buf)
    for n, o in enumerate(ids):
        assert reader.lookup(o) == Found(slots[n], 2, n + 1, where(n))


@pytest.mark.parametrize("path", READ_PATHS)
def test_lookup_stops_at_a_free_slot(path: ReadPath) -> None:
    d, buf = new_directory(16)
    a, b, c = (colliding(n) for n in range(3))
    h = home_slot(a, 4)
    assert [d.insert(o, n + 1, where(n)) for n, o in enumerate((a, b, c))] == [
        h,
        (h + 1) % 16,
        (h + 2) % 16,
    ]
    reader = path.reader(buf)
    assert reader.lookup(colliding(3)) is None  # the probe ends at the free slot h + 3
    buf[slot_base((h + 1) % 16) + 62] = FREE  # (not something a writer does: a free slot)
    assert reader.lookup(c) is None  # c lies past it: never reached
    assert reader.lookup(a) is not None


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_lookup_goes_on_past_tombstones(path: ReadPath) -> None:
    d, buf = new_directory(16)
    a, b, c = (colliding(n) for n in range(3))
    slots = [d.insert(o, n + 1, where(n)) for n, o in enumerate((a, b, c))]
    d.remove(slots[0])
    d.remove(slots[1])
    assert (d.live, d.tombstones) == (1, 2)
    reader = path.reader(buf)
    assert reader.lookup(a) is None and reader.lookup(b) is None
    assert reader.lookup(c) == Found(slots[2], 2, 3, where(2))
    # an insert takes the first tombstone of its probe
    assert d.insert(colliding(7), 9, where(7)) == slots[0]
    assert (d.live, d.tombstones) == (2, 1)


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_a_recreated_id_is_found_past_its_dying_slot(path: ReadPath) -> None:
    d, buf = new_directory(16)
    x = colliding(0)
    first = d.insert(x, 1, where(1))
    d.set_state(first, DYING)
    reader = path.reader(buf)
    assert reader.lookup(x) is None  # dying: not served
    second = d.insert(x, 2, where(2))  # the id created again while the old one dies
    assert second == (first + 1) % 16
    assert reader.lookup(x) == Found(second, 2, 2, where(2))
    d.remove(first)
    assert reader.lookup(x) == Found(second, 2, 2, where(2))


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_a_recreated_id_may_take_an_earlier_tombstone(path: ReadPath) -> None:
    """The new object is not always after the dying one: an insert takes the first free or
    tombstone slot of the probe. The lookup still finds the sealed one."""
    d, buf = new_directory(16)
    y, x = colliding(0), colliding(1)
    sy = d.insert(y, 1, where(1))
    sx = d.insert(x, 2, where(2))
    d.remove(sy)
    d.set_state(sx, DYING)
    assert d.insert(x, 3, where(3)) == sy
    assert path.reader(buf).lookup(x) == Found(sy, 6, 3, where(3))  # 3 writes there
    assert sorted((g, s) for _, g, _, s in d.entries()) == [(2, DYING), (3, SEALED)]


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_insert_fails_past_the_probe_limit(path: ReadPath) -> None:
    d, buf = new_directory(8, max_probe=3)
    ids = [colliding(n) for n in range(4)]
    h = home_slot(ids[0], 3)
    window = [(h + i) % 8 for i in range(3)]
    assert [d.insert(o, n + 1, where(n)) for n, o in enumerate(ids[:3])] == window
    before = bytes(buf)
    assert d.insert(ids[3], 4, where(3)) == -1  # slots 4 and on are free, but out of reach
    assert bytes(buf) == before and (d.live, d.tombstones) == (3, 0)
    assert path.reader(buf).lookup(ids[3]) is None
    elsewhere = next(ident(n) for n in range(1, 1000) if home_slot(ident(n), 3) not in window)
    assert d.insert(elsewhere, 5, where(5)) == home_slot(elsewhere, 3)
    d.remove(window[1])
    assert d.insert(ids[3], 6, where(6)) == window[1]  # a tombstone in reach: taken


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize(
    ("oid", "loc"),
    [
        (ident(1), ObjectLocation(1, 0, 10, MAX_METADATA + 1, 0)),
        (ident(1), ObjectLocation(MAX_SEGMENT + 1, 0, 10, 0, 0)),
        (ident(1), ObjectLocation(-1, 0, 10, 0, 0)),
        (b"short", ObjectLocation(1, 0, 10, 0, 0)),
        (ident(1) + b"x", ObjectLocation(1, 0, 10, 0, 0)),
    ],
)
def test_insert_refuses_what_a_slot_cannot_hold(oid: bytes, loc: ObjectLocation) -> None:
    d, buf = new_directory(16)
    before = bytes(buf)
    assert d.insert(oid, 1, loc) == -1
    assert bytes(buf) == before and d.live == 0


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_largest_fields_fit(path: ReadPath) -> None:
    d, buf = new_directory(16)
    loc = ObjectLocation(MAX_SEGMENT, 2**64 - 1, 2**64 - 1, MAX_METADATA, 2**16 - 1)
    slot = d.insert(ident(1), 2**64 - 1, loc)
    assert path.reader(buf).lookup(ident(1)) == Found(slot, 2, 2**64 - 1, loc)


def test_generations_grow_with_the_counter_high_and_random_bits_low() -> None:
    """Across batches: the high 32 bits count from 1, the low 32 are drawn (not all equal)."""
    source = GenerationSource(batch=4)
    gens = [source.next() for _ in range(11)]
    assert [g >> 32 for g in gens] == list(range(1, 12))
    assert all(isinstance(g, int) for g in gens) and len({g & 0xFFFFFFFF for g in gens}) > 1


@pytest.mark.usefixtures("writer")
def test_full_counts_live_and_tombstone_slots() -> None:
    d, _ = new_directory(8)
    threshold = int(8 * MAX_LOAD)  # 6
    slots = []
    for n in range(threshold - 1):
        slots.append(d.insert(ident(n + 1), n + 1, where(n)))
        assert not d.full()
    slots.append(d.insert(ident(99), 99, where(9)))
    assert d.full() and d.live == threshold
    d.remove(slots[0])
    assert d.full() and (d.live, d.tombstones) == (threshold - 1, 1)  # tombstones count
    d.set_state(slots[1], DYING)
    assert d.full() and d.live == threshold - 1  # dying slots are live


@given(live=st.integers(0, 10**6), shift=st.integers(1, 16))
def test_rebuilt_capacity_is_the_least_half_empty_power_of_two(live: int, shift: int) -> None:
    minimum = 1 << shift
    cap = rebuilt_capacity(live, minimum)
    assert cap >= minimum and cap & (cap - 1) == 0
    assert cap >= 2 * (live + 1)  # (at most half full)
    assert cap == minimum or cap // 2 < 2 * (live + 1)  # (the least such)
    assert (cap * MAX_LOAD - live) >= (live + 1) / 2  # (room for half as many again)


# ---------------------------------------------------------------- seqlock and readers


@pytest.mark.parametrize("path", READ_PATHS)
def test_a_slot_being_written_reads_as_absent(path: ReadPath) -> None:
    d, buf = new_directory(16)
    slot = d.insert(ident(1), 1, where(1))
    reader = path.reader(buf)
    U64.pack_into(buf, slot_base(slot), 3)  # a writer is between its two seq stores
    assert reader.lookup(ident(1)) is None
    U64.pack_into(buf, slot_base(slot), 4)
    assert reader.lookup(ident(1)) == Found(slot, 4, 1, where(1))


@pytest.mark.parametrize("path", READ_PATHS)
def test_an_odd_seq_earlier_in_the_probe_also_reads_as_absent(path: ReadPath) -> None:
    d, buf = new_directory(16)
    a, b = colliding(0), colliding(1)
    sa = d.insert(a, 1, where(1))
    sb = d.insert(b, 2, where(2))
    U64.pack_into(buf, slot_base(sa), 1)  # a's slot is being rewritten
    assert path.reader(buf).lookup(b) is None  # ask the coordinator
    U64.pack_into(buf, slot_base(sa), 2)
    assert path.reader(buf).lookup(b) == Found(sb, 2, 2, where(2))


@pytest.mark.parametrize("path", READ_PATHS)
def test_unchanged_until_the_slot_is_written(path: ReadPath) -> None:
    d, buf = new_directory(16)
    a, b = ident(1), next(o for o in at_home(0, 4, 2) if o != ident(1))
    sa = d.insert(a, 1, where(1))
    sb = d.insert(b, 2, where(2))
    assert sa != sb
    reader = path.reader(buf)
    found = reader.lookup(a)
    assert found is not None and reader.unchanged(found)
    d.set_state(sb, DYING)  # another slot: no effect
    assert reader.unchanged(found)
    d.set_state(sa, DYING)
    assert not reader.unchanged(found)
    d.set_state(sa, SEALED)  # back to sealed: still a different seq
    assert not reader.unchanged(found)
    again = reader.lookup(a)
    assert again == Found(found.slot, found.seq + 4, *found[2:]) and reader.unchanged(again)
    d.remove(sa)
    assert not reader.unchanged(again)
    d.insert(ident(3), 3, where(3))  # (whichever slot it takes)
    found_b = reader.lookup(b)
    assert found_b is None  # dying
    d.set_state(sb, SEALED)
    found_b = reader.lookup(b)
    assert found_b is not None and reader.unchanged(found_b)
    d.supersede()
    assert reader.superseded and not reader.unchanged(found_b)


@pytest.mark.parametrize("path", READ_PATHS)
def test_a_reused_slot_is_not_unchanged(path: ReadPath) -> None:
    d, buf = new_directory(16)
    slot = d.insert(ident(1), 1, where(1))
    reader = path.reader(buf)
    found = reader.lookup(ident(1))
    assert found is not None
    d.remove(slot)
    assert d.insert(ident(1), 2, where(2)) == slot  # same id, same slot, a new object
    assert not reader.unchanged(found)
    assert reader.lookup(ident(1)) == Found(slot, 6, 2, where(2))


@pytest.mark.parametrize("path", READ_PATHS)
def test_dying_names_the_generation_read(path: ReadPath) -> None:
    d, buf = new_directory(16)
    slot = d.insert(ident(1), 1, where(1))
    reader = path.reader(buf)
    found = reader.lookup(ident(1))
    assert found is not None and not reader.dying(found)
    d.set_state(slot, DYING)
    assert reader.dying(found)
    d.remove(slot)
    assert not reader.dying(found)
    assert d.insert(ident(1), 2, where(2)) == slot
    d.set_state(slot, DYING)
    assert not reader.dying(found)  # another generation dies there now


@pytest.mark.parametrize("path", READ_PATHS)
def test_dying_of_a_read_from_a_bigger_directory_is_false(path: ReadPath) -> None:
    """A client may ask the directory it maps now about a pin taken in the one before,
    which may have been bigger: a slot past the end is simply not dying here."""
    big, big_buf = new_directory(64)
    far = next(ident(n) for n in range(1, 1000) if home_slot(ident(n), 6) >= 16)
    slot = big.insert(far, 1, where(1))
    found = path.reader(big_buf).lookup(far)
    assert found is not None and found.slot == slot >= 16
    big.set_state(slot, DYING)
    assert path.reader(big_buf).dying(found)
    _, small_buf = new_directory(16)
    assert not path.reader(small_buf).dying(found)


@pytest.mark.parametrize("path", READ_PATHS)
def test_access_bytes_are_set_by_lookups_only_with_a_buffer(path: ReadPath) -> None:
    d, buf = new_directory(16)
    a, b = colliding(0), colliding(1)
    d.insert(a, 1, where(1))
    sb = d.insert(b, 2, where(2))
    access = bytearray(16)
    reader = path.reader(buf, access)
    assert reader.lookup(colliding(5)) is None
    assert access == bytearray(16)  # a miss touches nothing
    assert reader.lookup(b) is not None
    assert [i for i, v in enumerate(access) if v] == [sb]  # not the slot probed past
    quiet = bytearray(16)
    assert path.reader(buf).lookup(b) is not None
    assert path.reader(buf, bytearray(8)).lookup(b) is not None  # too short: not used
    assert quiet == bytearray(16)


@pytest.mark.parametrize("path", READ_PATHS)
def test_reader_over_read_only_and_shared_memory(path: ReadPath) -> None:
    size = directory_size(16)
    mm = mmap.mmap(-1, size)
    d = Directory(mm, 16)
    slot = d.insert(ident(1), 7, where(1))
    reader = path.reader(memoryview(mm).toreadonly())
    assert reader.lookup(ident(1)) == Found(slot, 2, 7, where(1))
    d.set_state(slot, DYING)
    d.remove(slot)
    assert reader.lookup(ident(1)) is None and d.state(slot) == TOMBSTONE
    del reader
    mm.close()


# ---------------------------------------------------------------- pin tables


@pytest.mark.parametrize("path", READ_PATHS)
def test_pin_table_layout_and_high_water_mark(path: ReadPath) -> None:
    buf = bytearray(pin_table_size(4))
    table = path.pins(buf)
    assert table.entries == 4
    assert table.pin(11) == 0
    assert U64.unpack_from(buf, 0) == (1,) and U64.unpack_from(buf, 64) == (11,)
    assert table.pin(12) == 1
    assert U64.unpack_from(buf, 0) == (2,) and U64.unpack_from(buf, 72) == (12,)
    table.unpin(0)
    assert U64.unpack_from(buf, 64) == (0,) and U64.unpack_from(buf, 0) == (2,)
    assert table.count == 1
    assert table.pin(13) == 0  # a freed entry is reused; the mark stays
    assert U64.unpack_from(buf, 0) == (2,) and U64.unpack_from(buf, 64) == (13,)
    assert buf[8:64] == bytes(56)  # the rest of the header stays zero
    assert buf[64 + 16 :] == bytes(len(buf) - 80)  # past the mark: all zero


@pytest.mark.parametrize("path", READ_PATHS)
def test_full_pin_table_returns_none(path: ReadPath) -> None:
    table = path.pins(bytearray(pin_table_size(3)))
    assert [table.pin(g) for g in (1, 2, 3)] == [0, 1, 2]
    assert table.pin(4) is None and table.count == 3
    table.unpin(1)
    assert table.pin(5) == 1
    assert table.pin(6) is None


def every_pinned(scanner: PinScanner) -> set[int]:
    """Every generation some client pins now."""
    return {g for gens in scanner.by_client().values() for g in gens}


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_a_generation_may_be_pinned_twice(path: ReadPath) -> None:
    buf = bytearray(pin_table_size(4))
    table = path.pins(buf)
    first, second = table.pin(9), table.pin(9)
    assert first != second
    scanner = PinScanner()
    scanner.add(1, buf)
    assert scanner.counts([9]) == {9: 2}
    table.unpin(first)  # type: ignore[arg-type]
    assert scanner.counts([9]) == {9: 1} and scanner.pinned([9]) == {9}


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_scanner_reads_every_table(path: ReadPath) -> None:
    bufs = {c: bytearray(pin_table_size(4)) for c in (1, 2, 3)}
    tables = {c: path.pins(b) for c, b in bufs.items()}
    scanner = PinScanner()
    for c, b in bufs.items():
        scanner.add(c, b)
    tables[1].pin(5)
    tables[1].pin(6)
    tables[2].pin(6)
    assert scanner.pinned([5, 6, 7]) == {5, 6}
    assert scanner.pinned([]) == set() and scanner.pinned(iter([7])) == set()
    assert every_pinned(scanner) == {5, 6}
    assert scanner.total() == 3
    assert scanner.holders_of([6, 7]) == {6: [1, 2]}
    assert scanner.counts([5, 6, 7]) == {5: 1, 6: 2}
    assert [scanner.pins_of(c) for c in (1, 2, 3, 4)] == [2, 1, 0, 0]
    assert scanner.remove(2) and not scanner.remove(2)
    assert scanner.holders_of([6]) == {6: [1]} and scanner.total() == 2
    assert PinScanner().pinned([5]) == set()


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_scanner_ignores_entries_past_the_high_water_mark(path: ReadPath) -> None:
    buf = bytearray(pin_table_size(4))
    table = path.pins(buf)
    table.pin(5)  # mark 1
    U64.pack_into(buf, PIN_HEADER + 8 * 2, 77)  # garbage past the mark
    U64.pack_into(buf, PIN_HEADER + 8 * 3, 78)
    scanner = PinScanner()
    scanner.add(1, buf)
    assert scanner.pinned([5, 77, 78]) == {5}
    assert every_pinned(scanner) == {5}
    assert scanner.total() == 1 and scanner.pins_of(1) == 1
    assert scanner.holders_of([77]) == {} and scanner.counts([5, 77, 78]) == {5: 1}
    U64.pack_into(buf, 0, 3)
    assert every_pinned(scanner) == {5, 77}
    U64.pack_into(buf, 0, 2**40)  # a mark past the table: clamped to its entries
    assert every_pinned(scanner) == {5, 77, 78} and scanner.total() == 3


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_scanner_sees_writes_made_after_it_was_added(path: ReadPath) -> None:
    buf = bytearray(pin_table_size(8))
    scanner = PinScanner()
    scanner.add(1, buf)
    assert scanner.total() == 0
    table = path.pins(buf)
    index = table.pin(3)
    assert scanner.pinned([3]) == {3}
    table.unpin(index)  # type: ignore[arg-type]
    assert scanner.pinned([3]) == set() and scanner.total() == 0


@settings(max_examples=200)
@given(
    ops=st.lists(
        st.tuples(st.integers(0, 2), st.booleans(), st.integers(1, 6)), min_size=1, max_size=60
    )
)
@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("bulk", BULK_PATHS)
def test_pin_tables_and_scanner_agree_with_a_model(
    path: ReadPath, bulk: str, ops: list[tuple[int, bool, int]]
) -> None:
    """Random pins and unpins by three clients of 5-entry tables against a multiset."""
    with bulk_path(bulk):
        pin_tables_and_scanner_agree_with_a_model(path, ops)


def pin_tables_and_scanner_agree_with_a_model(
    path: ReadPath, ops: list[tuple[int, bool, int]]
) -> None:
    bufs = [bytearray(pin_table_size(5)) for _ in range(3)]
    tables = [path.pins(b) for b in bufs]
    scanner = PinScanner()
    for c, b in enumerate(bufs):
        scanner.add(c, b)
    held: list[dict[int, int]] = [{}, {}, {}]  # client -> index -> generation
    for client, do_pin, gen in ops:
        if do_pin or not held[client]:
            index = tables[client].pin(gen)
            if len(held[client]) == 5:
                assert index is None
            else:
                assert index is not None and index not in held[client]
                held[client][index] = gen
        else:
            index = min(held[client])
            tables[client].unpin(index)
            del held[client][index]
        counts: collections.Counter[int] = collections.Counter()
        for c in range(3):
            counts.update(held[c].values())
            assert tables[c].count == len(held[c]) == scanner.pins_of(c)
            hwm = U64.unpack_from(bufs[c], 0)[0]
            assert all(i < hwm for i in held[c]) and hwm <= 5
            words = np.frombuffer(bufs[c], dtype="<u8")[PIN_HEADER // 8 :]
            assert not words[hwm:].any()  # nothing at or past the mark
        assert scanner.counts(range(1, 8)) == counts
        assert scanner.total() == sum(counts.values())
        assert every_pinned(scanner) == set(counts)
        assert scanner.pinned(range(1, 8)) == set(counts)
        for g in range(1, 7):
            assert scanner.holders_of([g]).get(g, []) == [
                c for c in range(3) if g in held[c].values()
            ]


# ---------------------------------------------------------------- the state machine


@dataclass
class Entry:
    """The model of one live slot."""

    oid: bytes
    generation: int
    loc: ObjectLocation
    state: int


@dataclass
class Read:
    """A lookup result kept to ask ``unchanged`` and ``dying`` about later."""

    reader: DirectoryReader
    epoch: int  # which directory it was read from
    found: Found
    writes: int  # writes to its slot when it was read


POOL = [ident(n) for n in range(1, 6)] + [colliding(n) for n in range(6)]
MAX_PROBE_SMALL = 4
LOCATIONS = st.builds(
    ObjectLocation,
    st.integers(0, MAX_SEGMENT),
    st.integers(0, 2**40),
    st.integers(0, 2**40),
    st.integers(0, MAX_METADATA),
    st.integers(0, 3),
)


class DirectoryMachine(RuleBasedStateMachine):
    """One writer (inserts, state changes, removes, rebuilds into a new directory) and
    readers of the current and of superseded directories, against a model of the slots.

    Invariants: a lookup in the current directory returns exactly the model's sealed entry
    for the id (its slot, seq, generation, location) or None when it has none; live and
    tombstone counts, ``entries()`` and ``full()`` match; every seq is even; a kept read is
    ``unchanged`` exactly while its slot was not written and its directory is current, and
    never once superseded."""

    def __init__(self) -> None:
        super().__init__()
        self.epoch = 0
        self._new(8)
        self.next_gen = 1
        self.reads: list[Read] = []
        self.old: list[tuple[DirectoryReader, bytearray]] = []

    def _new(self, capacity: int) -> None:
        self.capacity = capacity
        self.bits = capacity.bit_length() - 1
        self.buf = bytearray(directory_size(capacity))
        self.access = bytearray(capacity)
        self.d = Directory(self.buf, capacity, MAX_PROBE_SMALL)
        self.reader = DirectoryReader(self.buf, self.access)
        self.quiet = DirectoryReader(self.buf)  # sets no access bytes
        self.live: dict[int, Entry] = {}
        self.tombstones: set[int] = set()
        self.writes = [0] * capacity

    def _sealed_slot(self, oid: bytes) -> int | None:
        slots = [s for s, e in self.live.items() if e.oid == oid and e.state == SEALED]
        assert len(slots) <= 1
        return slots[0] if slots else None

    def _expected_slot(self, oid: bytes) -> int:
        slot = home_slot(oid, self.bits)
        for _ in range(min(MAX_PROBE_SMALL, self.capacity)):
            if slot not in self.live:
                return slot
            slot = (slot + 1) % self.capacity
        return -1

    def _insert(self, oid: bytes, gen: int, loc: ObjectLocation) -> int:
        expected = self._expected_slot(oid)
        slot = self.d.insert(oid, gen, loc)
        assert slot == expected
        if slot >= 0:
            self.tombstones.discard(slot)
            self.live[slot] = Entry(oid, gen, loc, SEALED)
            self.writes[slot] += 1
        return slot

    @rule(oid=st.sampled_from(POOL), loc=LOCATIONS)
    def insert(self, oid: bytes, loc: ObjectLocation) -> None:
        if self._sealed_slot(oid) is not None:
            return  # (the writer inserts only ids it has not published sealed)
        self._insert(oid, self.next_gen, loc)
        self.next_gen += 1

    @rule(oid=st.sampled_from(POOL))
    def insert_too_big(self, oid: bytes) -> None:
        before = bytes(self.buf)
        assert self.d.insert(oid, self.next_gen, ObjectLocation(0, 0, 1, MAX_METADATA + 1, 0)) == -1
        assert bytes(self.buf) == before

    @precondition(lambda self: self.live)
    @rule(data=st.data(), state=st.sampled_from([SEALED, DYING]))
    def set_state(self, data: st.DataObject, state: int) -> None:
        slot = data.draw(st.sampled_from(sorted(self.live)))
        e = self.live[slot]
        if state == SEALED and e.state != SEALED and self._sealed_slot(e.oid) is not None:
            return  # at most one sealed object per id
        self.d.set_state(slot, state)
        e.state = state
        self.writes[slot] += 1

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from(sorted(self.live)))
        self.d.remove(slot)
        del self.live[slot]
        self.tombstones.add(slot)
        self.writes[slot] += 1

    @rule(oid=st.sampled_from(POOL))
    def lookup(self, oid: bytes) -> None:
        found = self.reader.lookup(oid)
        slot = self._sealed_slot(oid)
        assert (found is None) == (slot is None)
        if found is not None:
            assert self.access[found.slot] == 1
            self.access[found.slot] = 0  # (the coordinator's hand clears it)
            self.reads.append(Read(self.reader, self.epoch, found, self.writes[found.slot]))

    @rule(grow=st.sampled_from([0, 1, 2]))
    def rebuild(self, grow: int) -> None:
        """Copy the live slots into a new directory (dying ones stay dying), supersede the
        old one; what does not fit in the new one's probe limit is left out."""
        old, old_buf, old_reader = self.d, self.buf, self.quiet
        entries = list(old.entries())
        assert sorted((o, g, s) for o, g, _, s in entries) == sorted(
            (e.oid, e.generation, e.state) for e in self.live.values()
        )
        capacity = rebuilt_capacity(len(entries), 8) << grow
        self.epoch += 1
        self._new(capacity)
        for oid, gen, loc, state in entries:
            slot = self._insert(oid, gen, loc)
            if slot >= 0 and state == DYING:
                self.d.set_state(slot, DYING)
                self.live[slot].state = DYING
                self.writes[slot] += 1
        old.supersede()
        assert old_reader.superseded and not self.quiet.superseded
        self.old.append((old_reader, old_buf))

    @invariant()
    def lookups_match_the_model(self) -> None:
        for oid in POOL:
            slot = self._sealed_slot(oid)
            found = self.quiet.lookup(oid)
            if slot is None:
                assert found is None
            else:
                e = self.live[slot]
                assert found == Found(slot, 2 * self.writes[slot], e.generation, e.loc)

    @invariant()
    def counts_match(self) -> None:
        d = self.d
        assert (d.live, d.tombstones) == (len(self.live), len(self.tombstones))
        assert d.full() == (len(self.live) + len(self.tombstones) >= self.capacity * MAX_LOAD)
        got = sorted((o, g, loc, s) for o, g, loc, s in d.entries())
        want = sorted((e.oid, e.generation, e.loc, e.state) for e in self.live.values())
        assert got == want
        for slot in range(self.capacity):
            assert raw_seq(self.buf, slot) == 2 * self.writes[slot]
            state = d.state(slot)
            if slot in self.live:
                assert state == self.live[slot].state
                assert d.generation(slot) == self.live[slot].generation
            else:
                assert state == (TOMBSTONE if slot in self.tombstones else FREE)

    @invariant()
    def kept_reads(self) -> None:
        for r in self.reads:
            if r.epoch != self.epoch:
                assert r.reader.superseded and not r.reader.unchanged(r.found)
                continue
            slot = r.found.slot
            assert r.reader.unchanged(r.found) == (self.writes[slot] == r.writes)
            e = self.live.get(slot)
            dying = e is not None and e.state == DYING and e.generation == r.found.generation
            assert r.reader.dying(r.found) == dying
        for reader, _ in self.old:
            assert reader.superseded


class PythonWriterMachine(DirectoryMachine):
    """The same, with directories the Python fallback writes (the C writer above, if built)."""

    def __init__(self) -> None:
        self.patch = pytest.MonkeyPatch()
        self.patch.setattr(directory_module, "native", None)
        super().__init__()

    def teardown(self) -> None:
        self.patch.undo()


TestDirectoryMachine = DirectoryMachine.TestCase
TestDirectoryMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestPythonWriterMachine = PythonWriterMachine.TestCase
TestPythonWriterMachine.settings = TestDirectoryMachine.settings


# ---------------------------------------------------------------- rebuild: bulk copy

ids_for_copy = directory_ids(max_size=48)


@settings(max_examples=300, deadline=None)
@given(
    ids=ids_for_copy,
    dying=st.sets(st.integers(0, 47)),
    bits=st.integers(3, 7),
    probe=st.sampled_from([2, 4, 8, MAX_PROBE]),
)
@pytest.mark.parametrize("path", READ_PATHS)
@pytest.mark.parametrize("bulk", BULK_PATHS)
def test_copy_from_keeps_every_object_it_places_findable(
    path: ReadPath, bulk: str, ids: list[bytes], dying: set[int], bits: int, probe: int
) -> None:
    """The bulk copy of a rebuild: every object placed is found at its slot with its
    generation, location and state, every slot between an object's home and its slot is
    taken (a lookup never stops short of it), and when some object finds no slot the copy
    is exactly the one-by-one insertion in the order given (the last ones are left out)."""
    with bulk_path(bulk):
        copy_from_keeps_every_object_it_places_findable(path, ids, dying, bits, probe)


def copy_from_keeps_every_object_it_places_findable(
    path: ReadPath, ids: list[bytes], dying: set[int], bits: int, probe: int
) -> None:
    old = Directory(bytearray(directory_size(256)), 256)
    slots = array.array("q", (old.insert(oid, n + 1, where(n + 1)) for n, oid in enumerate(ids)))
    assert -1 not in slots  # (256 slots, probe 32: at most 41 of one family)
    for i in dying & set(range(len(ids))):
        old.set_state(slots[i], DYING)
    capacity = 1 << bits
    new = Directory(bytearray(directory_size(capacity)), capacity, max_probe=probe)
    placed = new.copy_from(old, slots)
    assert len(placed) == len(ids)
    kept = [s for s in placed if s >= 0]
    assert len(kept) == len(set(kept)) == new.live and new.tombstones == 0
    reader = path.reader(new._mv)
    for n, (oid, slot) in enumerate(zip(ids, placed, strict=True)):
        if slot < 0:
            assert reader.lookup(oid) is None
            continue
        assert new.entry(slot) == old.entry(slots[n])
        home = home_slot(oid, bits)
        assert (slot - home) % capacity < probe
        for s in range(home, home + (slot - home) % capacity):
            assert new.state(s % capacity) in (SEALED, DYING)
        found = reader.lookup(oid)
        if n in dying:
            assert found is None and new.state(slot) == DYING
        else:
            assert found is not None and found.slot == slot and found.generation == n + 1
    if -1 in placed:
        one_by_one = Directory(bytearray(directory_size(capacity)), capacity, max_probe=probe)
        expected = []
        for n, oid in enumerate(ids):
            slot = one_by_one.insert(oid, n + 1, where(n + 1))
            if slot >= 0 and n in dying:
                one_by_one.set_state(slot, DYING)
            expected.append(slot)
        assert placed.tolist() == expected
        # (no bulk write left behind; each directory has its own token)
        assert new._mv[:48] == one_by_one._mv[:48] and new._mv[56:] == one_by_one._mv[56:]


def test_copy_from_fills_only_an_empty_directory() -> None:
    old = Directory(bytearray(directory_size(16)), 16)
    slot = old.insert(ident(1), 1, where())
    new = Directory(bytearray(directory_size(16)), 16)
    new.insert(ident(2), 2, where())
    with pytest.raises(ValueError, match="empty directory"):
        new.copy_from(old, array.array("q", [slot]))


@pytest.mark.usefixtures("writer")
@pytest.mark.parametrize("path", READ_PATHS)
def test_copy_from_places_many_objects_in_bulk(
    path: ReadPath, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild of a big directory is one C call (numpy work without the extension: then
    only objects whose probe run wraps past the last slot are inserted one by one)."""
    n, capacity = 1 << 18, 1 << 20
    old = Directory(bytearray(directory_size(capacity)), capacity)
    ids = np.random.default_rng(1).bytes(ID_SIZE * n)
    # (the old slots need not be where lookups would find them)
    rows = _bulk_numpy.slot_records(old)[:n]
    rows["id"] = np.frombuffer(ids, dtype=f"V{ID_SIZE}")
    rows["gen"] = np.arange(1, n + 1)
    rows["state"] = SEALED
    del rows
    one_by_one = []
    real = Directory._copy_slot
    monkeypatch.setattr(
        Directory, "_copy_slot", lambda d, o, s: one_by_one.append(s) or real(d, o, s)
    )
    new = Directory(bytearray(directory_size(capacity)), capacity)
    placed = new.copy_from(old, array.array("q", range(n)))
    assert -1 not in placed and new.live == n and len(one_by_one) < 64
    reader = path.reader(new._mv)
    for i in range(0, n, 997):
        found = reader.lookup(ids[ID_SIZE * i : ID_SIZE * (i + 1)])
        assert found is not None and found.generation == i + 1 and found.slot == placed[i]
