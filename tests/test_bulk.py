"""The coordinator's bulk work in C (plasma/_native/bulk.c: pin scans, a rebuild's placement
and moves, the generation index's compaction) against its fallbacks (plasma._bulk_numpy, the
code the coordinator ran before; the Python loops of plasma.store.slots): the same answers,
byte for byte, on random input; and a pin table its client writes while it is scanned is
read entry by entry."""

from __future__ import annotations

import itertools
import mmap
import os
import struct
from array import array
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasma import _bulk_numpy
from plasma._native import native
from plasma.directory import (
    DYING,
    HEADER_SIZE,
    MAX_PROBE,
    PIN_HEADER,
    REPLICA,
    SEALED,
    Directory,
    PinScanner,
    directory_size,
    home_slot,
    pin_table_size,
)
from plasma.records import ObjectLocation
from plasma.store import slots
from tests.helpers import BULK_PATHS, bulk_path, directory_ids
from tests.helpers import oid as ident

pytestmark = pytest.mark.skipif(native is None, reason="the C extension is not built")
U64 = struct.Struct("<Q")


# ---------------------------------------------------------------- pin scans


def random_tables(seed: int, tables: int, universe: np.ndarray) -> list[bytearray]:
    """``tables`` pin tables of random sizes, fill (a fifth free) and marks (some past the
    table, some short of what is written)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(tables):
        entries = int(rng.integers(0, 80))
        buf = bytearray(pin_table_size(entries))
        words = np.frombuffer(buf, dtype="<u8")
        words[PIN_HEADER // 8 :] = rng.choice(universe, size=entries)
        words[PIN_HEADER // 8 :][rng.random(entries) < 0.2] = 0
        marks = [0, entries, int(rng.integers(0, entries + 1)), 2**40, 2**64 - 1]
        words[0] = marks[int(rng.integers(0, len(marks)))]
        del words
        out.append(buf)
    return out


@settings(max_examples=300, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    tables=st.integers(0, 7),
    universe=st.integers(1, 400),
    wanted=st.integers(0, 3000),
)
def test_pin_scans_agree_with_numpy(seed: int, tables: int, universe: int, wanted: int) -> None:
    """Every question (pinned, counts, holders, the count, each table's pins) asked of random
    tables for random generations (duplicates, zeros, many or few, some not pinned): the
    same answer from both, dicts in the same order."""
    rng = np.random.default_rng(seed)
    gens = rng.integers(1, 2**64 - 1, size=universe, dtype=np.uint64, endpoint=True)
    bufs = random_tables(seed, tables, gens)
    ask = np.concatenate([rng.choice(gens, size=wanted), rng.integers(0, 9, size=wanted % 5)])
    asked = [int(g) for g in ask]
    clients = [f"client {i}" for i in range(tables)]
    for what in (_bulk_numpy.PINNED, _bulk_numpy.COUNTS, _bulk_numpy.HOLDERS):
        mine = native.pins_match(bufs, iter(asked), what, clients)
        theirs = _bulk_numpy.pins_match(bufs, asked, what, clients)
        assert mine == theirs
        if isinstance(theirs, dict):
            assert list(mine.items()) == list(theirs.items())
    assert native.pin_count(bufs) == _bulk_numpy.pin_count(bufs)
    assert native.pins_by_table(bufs) == _bulk_numpy.pins_by_table(bufs)


def test_a_scan_takes_any_buffer_and_refuses_what_is_no_table() -> None:
    table = bytearray(pin_table_size(4))
    U64.pack_into(table, 0, 2)
    U64.pack_into(table, PIN_HEADER, 7)
    mapped = mmap.mmap(-1, len(table))
    mapped[:] = table
    views: list[Any] = [table, mapped, memoryview(mapped), bytes(table), bytearray(10)]
    assert native.pin_count(views) == 4  # (a buffer shorter than the header: no entries)
    assert native.pins_match(views, range(10), _bulk_numpy.HOLDERS, "abcde") == {7: list("abcd")}
    assert native.pins_match(views, [0, 0], _bulk_numpy.PINNED, None) is None  # (no pass)
    with pytest.raises(ValueError, match="aligned"):
        native.pin_count([memoryview(table)[1:]])
    with pytest.raises(ValueError, match="one client per table"):
        native.pins_match(views, [7], _bulk_numpy.HOLDERS, "ab")
    with pytest.raises(OverflowError):
        native.pins_match(views, [-1], _bulk_numpy.PINNED, None)
    with pytest.raises(TypeError):
        native.pin_count([object()])
    del views
    mapped.close()


@pytest.mark.parametrize("path", BULK_PATHS)
def test_a_table_written_while_it_is_scanned_is_read_entry_by_entry(path: str) -> None:
    """A client (a forked process) flips every entry of its full table between two
    generations while the coordinator scans it: each scan sees each entry once, as one or
    the other, so every answer counts every entry exactly once, whatever the interleaving
    (a scan that read an entry twice, say once to hash it and once to compare it, would
    miss entries that changed in between)."""
    entries = 1 << 16
    table = mmap.mmap(-1, pin_table_size(entries))  # (anonymous, shared with the child)
    words = memoryview(table).cast("Q")
    first, second = 5 << 32 | 1, 7 << 32 | 3
    table[PIN_HEADER:] = U64.pack(first) * entries
    words[0] = entries
    stop = 1  # (a header word no scan reads: the child flips until it is set)
    started, child_started = os.pipe()
    pid = os.fork()
    if pid == 0:  # the client
        try:
            os.write(child_started, b"s")
            while not words[stop]:
                for i in range(PIN_HEADER // 8, PIN_HEADER // 8 + entries, 7):
                    words[i] = second if words[i] == first else first
        finally:
            os._exit(0)
    os.close(child_started)
    try:
        assert os.read(started, 1) == b"s"
        with bulk_path(path):
            scanner = PinScanner()
            scanner.add(1, table)
            for n in range(1000 if path == "native" else 200):  # (numpy's are slower)
                counts = scanner.counts([first, second])
                assert sum(counts.values()) == entries, counts
                holders = scanner.holders_of([first, second, 9])
                assert set(holders) <= {first, second} and holders
                if n % 50 == 0:
                    assert scanner.pinned([first, second]) <= {first, second}
                    assert scanner.total() == entries == scanner.pins_of(1)
                    pins = scanner.by_client()[1]
                    assert len(pins) == entries and set(pins) <= {first, second}
            scanner.remove(1)
    finally:
        words[stop] = 1
        os.waitpid(pid, 0)
        os.close(started)
        del words
        table.close()


# ---------------------------------------------------------------- a rebuild's placement

placement_ids = directory_ids(max_size=60)


def filled(ids: list[bytes], dying: set[int], replicas: set[int]) -> tuple[Directory, array[int]]:
    old = Directory(bytearray(directory_size(256)), 256)
    loc = [ObjectLocation(n, 64 * n, 100 + n, n % 7, n % 3) for n in range(len(ids))]
    slots = array(
        "q", (old.insert(o, n + 1, loc[n], REPLICA * (n in replicas)) for n, o in enumerate(ids))
    )
    assert -1 not in slots
    for i in dying & set(range(len(ids))):
        old.set_state(slots[i], DYING)
    return old, slots


@settings(max_examples=300, deadline=None)
@given(
    ids=placement_ids,
    dying=st.sets(st.integers(0, 59)),
    replicas=st.sets(st.integers(0, 59)),
    bits=st.integers(1, 7),
    probe=st.sampled_from([1, 2, 4, 8, MAX_PROBE]),
    order=st.randoms(use_true_random=False),
)
def test_placement_agrees_with_numpy(
    ids: list[bytes], dying: set[int], replicas: set[int], bits: int, probe: int, order: Any
) -> None:
    """A rebuild's copy of random objects (colliding ones, dying ones, copies; in any order)
    into directories of 2 to 128 slots: the C placement writes the same bytes and gives the
    same slots as numpy's, or fails where it fails (then leaving every slot zero)."""
    old, slots = filled(ids, dying, replicas)
    order.shuffle(slots)
    capacity = 1 << bits

    def copy(place: Callable[[Directory, array[int]], bool]) -> tuple[Any, bytes]:
        new = Directory(bytearray(directory_size(capacity)), capacity, max_probe=probe)
        placed = array("q", [-2]) * len(slots)
        return place(new, placed) and placed, bytes(new._mv[HEADER_SIZE:])

    mine = copy(
        lambda new, placed: native.place(
            new._mv, capacity, new.max_probe, old._mv, old.capacity, slots, placed
        )
    )
    with bulk_path("numpy"):
        theirs = copy(lambda new, placed: _bulk_numpy.place_in_bulk(new, old, slots, placed))
    assert mine == theirs
    if mine[0] is False:
        assert not any(mine[1])


@pytest.mark.parametrize("path", BULK_PATHS)
def test_a_run_that_wraps_is_inserted_from_the_first_slot(path: str) -> None:
    """Three objects at home in the last of 8 slots (the middle one dying, the last a copy)
    and one at home in slot 0: the first keeps the last slot (seq 0, as written in bulk), the
    others wrap past the one at home in slot 0, inserted as a publish would write them (seq
    2) and the dying one marked dying after (seq 4)."""
    last = [o for o in (ident(n) for n in range(1, 500)) if home_slot(o, 3) == 7][:3]
    first = next(o for o in (ident(n) for n in range(1, 500)) if home_slot(o, 3) == 0)
    old, slots = filled([*last, first], {1}, {2})
    with bulk_path(path):
        new = Directory(bytearray(directory_size(8)), 8, max_probe=4)
        assert new.copy_from(old, slots).tolist() == [7, 1, 2, 0]
    seqs = [U64.unpack_from(new._mv, HEADER_SIZE + 64 * s)[0] for s in (7, 1, 2, 0)]
    assert seqs == [0, 4, 2, 0]
    assert [new.state(s) for s in (7, 1, 2, 0)] == [SEALED, DYING, SEALED, SEALED]
    assert [new.flags(s) for s in (7, 1, 2, 0)] == [0, 0, REPLICA, 0]
    assert [new.entry(s)[:3] for s in (7, 1, 2, 0)] == [old.entry(s)[:3] for s in slots]
    assert new.live == 4 and new.tombstones == 0
    with bulk_path(path):  # (a probe limit of 2: the last one finds no slot in bulk)
        new = Directory(bytearray(directory_size(8)), 8, max_probe=2)
        placed = new.copy_from(old, slots)  # (one by one, in the order given)
        assert placed.tolist() == [7, 0, -1, 1] and new.live == 3


def test_placement_refuses_slots_outside_the_old_directory() -> None:
    old, slots = filled([ident(1), ident(2)], set(), set())
    new = bytearray(directory_size(16))
    placed = array("q", [0, 0])
    for bad in ([slots[0], 256], [-1, slots[0]]):
        with pytest.raises(IndexError, match="outside the old directory"):
            native.place(new, 16, 8, old._mv, 256, array("q", bad), placed)
    with pytest.raises(ValueError, match="too short"):
        native.place(new, 32, 8, old._mv, 256, slots, placed)
    with pytest.raises(ValueError):
        native.place(new, 12, 8, old._mv, 256, slots, placed)  # (not a power of two)
    with pytest.raises(ValueError, match="as many places as slots"):
        native.place(new, 16, 8, old._mv, 256, slots, array("q", [0]))
    with pytest.raises(ValueError, match="overlaps"):
        native.place(new, 16, 8, old._mv, 256, slots, slots)
    with pytest.raises(ValueError, match="8-byte words"):
        native.place(new, 16, 8, old._mv, 256, array("i", [1, 2, 3]), placed)
    with pytest.raises(TypeError):
        native.place(new, 16, 8, old._mv, 256, list(slots), placed)
    assert not any(new) and native.place(new, 16, 8, old._mv, 256, array("q"), array("q"))


# ---------------------------------------------------------------- the generation index


@settings(max_examples=300, deadline=None)
@given(
    slots=st.lists(st.integers(-1, 40), max_size=200),
    new_of_old=st.none() | st.lists(st.integers(-3, 500), min_size=0, max_size=45),
)
def test_compaction_agrees_with_numpy(slots: list[int], new_of_old: list[int] | None) -> None:
    """Random slots (-1: removed), moved through a random map (too short for some: an
    IndexError, nothing changed) or not: the same entries kept, in order, from both."""
    from array import array

    gens = array("Q", range(1, len(slots) + 1))
    mapping = None if new_of_old is None else array("q", new_of_old)
    results = []
    for compact in (native.compact, _bulk_numpy.compact):
        g, s = array("Q", gens), array("q", slots)
        try:
            kept: int | str = compact(g, s, mapping)
        except IndexError:
            kept = "IndexError"
            assert (g, s) == (gens, array("q", slots))
        else:
            assert isinstance(kept, int)
            del g[kept:], s[kept:]
        results.append((kept, g, s))
    assert results[0] == results[1]


# ---------------------------------------------------------------- a rebuild's moves


@settings(max_examples=300, deadline=None)
@given(
    typecode=st.sampled_from("bid"),
    dst_n=st.integers(0, 40),
    index=st.lists(st.integers(-2, 45), max_size=60),
)
def test_scatter_agrees_with_python(typecode: str, dst_n: int, index: list[int]) -> None:
    """Random items moved through a random index (some -1 or -2: not moved; some past dst:
    an IndexError with nothing written) into columns of each item size the store keeps."""
    from array import array

    src = array(typecode, [(i * 7 + 1) % 100 for i in range(len(index))])
    indexes = array("q", index)
    results = []
    for path in ("native", "numpy"):
        dst = array(typecode, [0]) * dst_n
        with bulk_path(path):
            try:
                slots.scatter(dst, src, indexes)
            except IndexError:
                results.append(("IndexError", array(typecode, [0]) * dst_n))
                assert dst == array(typecode, [0]) * dst_n  # (nothing written)
                continue
        results.append(("ok", dst))
    assert results[0] == results[1]
    expected = [0] * dst_n
    outside = any(at >= dst_n for at in index)
    for i, at in enumerate(index):
        if at >= 0 and not outside:
            expected[at] = src[i]
    assert results[0] == ("IndexError" if outside else "ok", array(typecode, expected))


def test_scatter_refuses_mismatched_buffers() -> None:
    from array import array

    with pytest.raises(ValueError, match="different sizes"):
        native.scatter(array("i", [0]), array("q", [1]), array("q", [0]))
    with pytest.raises(ValueError, match="as many indexes"):
        native.scatter(array("q", [0, 0]), array("q", [1]), array("q", [0, 1]))
    with pytest.raises(ValueError, match="8-byte words"):
        native.scatter(bytearray(2), bytearray(1), array("i", [0]))
    with pytest.raises(BufferError):  # (read-only)
        native.scatter(b"\0", b"\1", array("q", [0]))


def random_ring(seed: int, old_n: int, new_n: int) -> tuple[int, Any, Any]:
    """A ring through some of ``old_n`` slots in random order (``head``, ``next``), and a
    random map of slots to distinct new ones (a third or so left without one)."""
    from array import array

    rng = np.random.default_rng(seed)
    members = rng.permutation(old_n)[: int(rng.integers(0, old_n + 1))].tolist()
    old_next = array("i", [-1]) * old_n
    for a, b in itertools.pairwise(members):
        old_next[a] = b
    targets = rng.permutation(new_n).tolist()
    new_of_old = array("q", [-1]) * old_n
    for old in range(old_n):
        if targets and rng.random() < 0.7:
            new_of_old[old] = targets.pop()
    return (members[0] if members else -1), old_next, new_of_old


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), old_n=st.integers(0, 60), new_n=st.integers(0, 90))
def test_relink_agrees_with_python(seed: int, old_n: int, new_n: int) -> None:
    """A random ring relinked through a random map: the same ring (order kept, as the walk
    of the new links shows) and the same members left out, from both."""
    from array import array

    head, old_next, new_of_old = random_ring(seed, old_n, new_n)
    results = []
    for path in ("native", "numpy"):
        prev, nxt = array("i", [-2]) * new_n, array("i", [-1]) * new_n
        with bulk_path(path):
            ring = slots.relink(head, old_next, new_of_old, prev, nxt)
        results.append((ring, prev, nxt))
    assert results[0] == results[1]
    (first, last, linked, left), prev, nxt = results[0]
    members = []
    at = head
    while at != -1:
        members.append(at)
        at = old_next[at]
    assert left == [m for m in members if new_of_old[m] < 0]
    walk, at = [], first
    while at != -1:
        walk.append(at)
        at = nxt[at]
    assert walk == [new_of_old[m] for m in members if new_of_old[m] >= 0] and len(walk) == linked
    assert last == (walk[-1] if walk else -1)
    assert all(prev[b] == a for a, b in zip([-1, *walk], walk, strict=False))


@pytest.mark.parametrize("path", BULK_PATHS)
def test_relink_refuses_a_cycle_and_slots_outside(path: str) -> None:
    from array import array

    cycle = array("i", [1, 0])
    with bulk_path(path), pytest.raises(IndexError):
        slots.relink(0, cycle, array("q", [0, 1]), array("i", [-2]) * 2, array("i", [-1]) * 2)
    with bulk_path(path), pytest.raises(IndexError):
        slots.relink(5, array("i", [-1]), array("q", [0]), array("i", [-2]), array("i", [-1]))
    with bulk_path(path), pytest.raises(IndexError):  # (a new slot outside prev)
        slots.relink(0, array("i", [-1]), array("q", [3]), array("i", [-2]), array("i", [-1]))
