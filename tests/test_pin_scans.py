"""Pin scans cost the coordinator a bounded amount of work (issue 27, item 1): every question
to the pin tables is one vectorised pass (``PinScanner.passes``), Unpin hints are
rate-limited, the rescans of pinned deleted objects back off while they free nothing, and
list, info, delete and the eviction walk take one pass, not one per object. Counted in
passes, never timed (``python -m bench.pin_scan`` has the timings)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plasma
from plasma import _bulk_numpy
from plasma import protocol as p
from plasma.coordinator import MESSAGES_PER_TURN
from plasma.directory import PIN_HEADER, PinScanner, pin_table_size
from plasma.errors import StoreFull
from plasma.store import PIN_RESCAN, PIN_RESCAN_MAX, UNPIN_INTERVAL
from tests.conftest import RunningCoordinator
from tests.helpers import (
    BULK_PATHS,
    GRACE,
    KIB,
    RawClient,
    bulk_path,
    held_deleted,
    imports_after,
    oid,
    pin,
    pin_reader,
    pin_scan_store,
    put,
)


def test_a_flood_of_unpin_hints_costs_one_scan_per_interval() -> None:
    """2,000 Unpin hints in 0.1 s of the store's clock: at most one scan per
    ``UNPIN_INTERVAL`` (before: a scan of every table per hint)."""
    store, _, _, now = held_deleted()
    scans = store._pins.passes
    hints, span = 2000, 0.1
    for i in range(hints):
        store.rescan_pins_soon(now=now + span * i / hints)
    bound = math.ceil(span / UNPIN_INTERVAL) + 1
    assert store._pins.passes - scans <= bound
    assert store.stats()["dying"] == 1  # (still pinned)


def test_a_hint_still_frees_promptly_after_a_backed_off_rescan() -> None:
    """The rescans have backed off to ``PIN_RESCAN_MAX``; the client lets go and says so:
    the object is freed within ``UNPIN_INTERVAL``, not at the next periodic rescan."""
    store, table, index, now = held_deleted()
    for _ in range(40):  # idle: the gaps grow to the maximum
        now = store.next_deadline()  # type: ignore[assignment]
        store.expire(now)
    deadline = store.next_deadline()
    assert deadline is not None and deadline - now == pytest.approx(PIN_RESCAN_MAX)
    table.unpin(index)
    now += PIN_RESCAN_MAX / 2  # half-way to the next periodic rescan
    store.rescan_pins_soon(now=now)  # the last scan was long ago: scans now
    assert store.stats()["dying"] == 0 and store.stats()["used"] == 7 * 64


def test_hints_right_after_a_scan_wait_for_the_interval_not_longer() -> None:
    store, table, index, now = held_deleted()
    store.rescan_pins_soon(now=now)  # a scan now (still pinned)
    table.unpin(index)
    store.rescan_pins_soon(now=now + UNPIN_INTERVAL / 4)  # too soon: brought forward, not run
    assert store.stats()["dying"] == 1
    deadline = store.next_deadline()
    assert deadline == pytest.approx(now + UNPIN_INTERVAL)
    store.expire(deadline)  # type: ignore[arg-type]
    assert store.stats()["dying"] == 0


def test_idle_pins_on_a_deleted_object_cost_about_one_scan_a_second() -> None:
    """Nothing changes for 60 s of the store's clock: the rescans back off (doubling from
    ``PIN_RESCAN``) to one per ``PIN_RESCAN_MAX`` (before: 20 a second, for ever)."""
    store, _, _, now = held_deleted()
    scans = store._pins.passes
    end = now + 60.0
    while (deadline := store.next_deadline()) is not None and deadline <= end:
        store.expire(deadline)
    doublings = math.ceil(math.log2(1.0 / PIN_RESCAN)) + 1
    assert store._pins.passes - scans <= 60 + doublings + 1  # about one a second
    assert store.stats()["dying"] == 1


def test_a_scan_that_frees_some_resets_the_gap() -> None:
    store = pin_scan_store()
    store.register_client(1)
    for n in range(1, 4):
        put(store, 1, n)
    read, table = pin_reader(store, 100)
    first, second = pin(store, read, table, 1), pin(store, read, table, 2)
    store.delete(1, [oid(1), oid(2)], now=0.0)
    now = 2 * GRACE
    store.expire(now)
    for _ in range(5):  # backs off
        now = store.next_deadline()  # type: ignore[assignment]
        store.expire(now)
    assert store.next_deadline() - now > PIN_RESCAN  # type: ignore[operator]
    table.unpin(first)  # without a hint: found at the next periodic rescan
    now = store.next_deadline()  # type: ignore[assignment]
    store.expire(now)
    assert store.stats()["dying"] == 1
    assert store.next_deadline() == pytest.approx(now + PIN_RESCAN)
    table.unpin(second)


def test_a_disconnect_hint_is_rate_limited_too() -> None:
    store, _, _, now = held_deleted(clients=20)
    scans = store._pins.passes
    for c in range(20):  # twenty readers leave at once: one scan, not twenty
        store.disconnect(200 + c, now=now)
    assert store._pins.passes - scans <= 1
    store.disconnect(100, now=now)  # the holder leaves: freed once the interval ends
    store.expire(now + UNPIN_INTERVAL)
    assert store.stats()["dying"] == 0


def test_list_info_and_delete_take_one_pass_whatever_the_number_of_objects() -> None:
    store = pin_scan_store()
    store.register_client(1)
    for n in range(1, 41):
        put(store, 1, n)
    read, table = pin_reader(store, 100)
    for n in range(1, 41):
        pin(store, read, table, n)
    passes = store._pins.passes
    listed = store.objects()
    assert store._pins.passes - passes == 1
    assert {o.ref_count for o in listed} == {1}  # the pins count
    assert store.info(oid(3)).ref_count == 1 and store._pins.passes - passes == 2
    assert [o.ref_count for o in store.objects([oid(2), oid(9)])] == [1, 1]
    assert store._pins.passes - passes == 3
    deleted, deferred, _ = store.delete(1, [oid(n) for n in range(1, 41)], now=0.0)
    assert not deleted and len(deferred) == 40
    assert store._pins.passes - passes == 4  # (before: one per pinned object more)


def test_an_eviction_walk_scans_per_chunk_not_per_candidate() -> None:
    """A create that must evict many pinned-past objects: the CLOCK walk asks the pin tables
    once per (doubling) chunk of candidates."""
    store = pin_scan_store(budget=128 * KIB)
    store.register_client(1)
    for n in range(1, 513):  # 512 objects of 256 bytes fill the store
        put(store, 1, n, size=256 - 64)
    read, table = pin_reader(store, 100, entries=512)
    for n in range(1, 257):  # the oldest half is pinned: the walk passes over them
        pin(store, read, table, n)
    passes = store._pins.passes
    store.create(1, oid(1000), 64 * KIB, now=0.0)
    assert store._pins.passes - passes <= 6  # (before: a set of every pin, per walk)


# ---------------------------------------------------------------- the vectorised pass


@settings(max_examples=60, deadline=None)
@given(
    wanted=st.integers(1, 3000),
    tables=st.integers(0, 6),
    seed=st.integers(0, 2**32 - 1),
)
@pytest.mark.parametrize("bulk", BULK_PATHS)
def test_one_pass_agrees_with_a_per_table_isin(
    bulk: str, wanted: int, tables: int, seed: int
) -> None:
    """Random 64-bit generations, some wanted, in tables of random fill (entries past the
    mark ignored): pinned, holders_of and counts agree with numpy's isin table by table, in
    C and in numpy's fallback."""
    with bulk_path(bulk):
        one_pass_agrees_with_a_per_table_isin(wanted, tables, seed)


def one_pass_agrees_with_a_per_table_isin(wanted: int, tables: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    universe = rng.integers(1, 2**64 - 1, size=2 * wanted + 8, dtype=np.uint64)
    want = rng.choice(universe, size=wanted, replace=False)
    scanner = PinScanner()
    snapshot: dict[int, np.ndarray] = {}
    for c in range(tables):
        buf = bytearray(pin_table_size(64))
        words = np.frombuffer(buf, dtype="<u8")
        mark = int(rng.integers(0, 65))
        words[PIN_HEADER // 8 :] = rng.choice(universe, size=64)
        words[PIN_HEADER // 8 :][rng.random(64) < 0.2] = 0  # free entries
        words[0] = mark
        scanner.add(c, buf)
        snapshot[c] = words[PIN_HEADER // 8 : PIN_HEADER // 8 + mark]
    expect_holders: dict[int, list[int]] = {}
    expect_counts: dict[int, int] = {}
    for c, pins in snapshot.items():
        for g in pins[np.isin(pins, want)].tolist():
            if c not in expect_holders.setdefault(g, []):
                expect_holders[g].append(c)
            expect_counts[g] = expect_counts.get(g, 0) + 1
    assert scanner.pinned(want.tolist()) == set(expect_holders)
    assert scanner.holders_of(want.tolist()) == expect_holders
    assert scanner.counts(want.tolist()) == expect_counts
    assert scanner.passes == (3 if tables else 0)


def test_colliding_hashes_are_still_told_apart() -> None:
    """Many wanted generations share hash slots (a table of 4 slots per wanted one): those
    are matched by binary search, and every pin is found exactly once."""
    rng = np.random.default_rng(7)
    gens = np.unique(rng.integers(1, 2**64 - 1, size=50_000, dtype=np.uint64))
    pins = rng.permutation(np.concatenate([gens, gens[:1000]]))
    positions, which = _bulk_numpy.match(pins, gens)
    assert len(positions) == len(pins) == len(set(positions.tolist()))
    assert (gens[which] == pins[positions]).all()


def test_the_bench_runs_small() -> None:
    """``python -m bench.pin_scan`` at a toy size: every figure is there, and the flood of
    hints made at most one scan per ``UNPIN_INTERVAL`` of its clock."""
    from bench.pin_scan import store_bench

    res = store_bench(clients=4, pins=64, unpins=200, gap=0.0001, idle=5.0)
    assert res["flood_scans"] <= math.ceil(200 * 0.0001 / UNPIN_INTERVAL) + 1
    assert res["idle_scans_per_s"] <= 3
    assert {"scan_ms", "counts_ms", "list_ms", "info_ms", "stats_ms"} <= res.keys()


def test_a_flood_in_one_buffer_is_answered_in_order_across_turns(
    coordinator: RunningCoordinator,
) -> None:
    """Thousands of small frames in one write (handled ``MESSAGES_PER_TURN`` at a time, the
    other connections served in between): every request answered once, in order, and
    another client is answered meanwhile."""
    with RawClient(coordinator.socket) as raw, plasma.connect(coordinator.socket) as other:
        raw.connect()
        other.create_and_seal(oid(1), b"x" * 64)
        other.flush()
        frames, expected = [], []
        for n in range(30 * MESSAGES_PER_TURN):
            raw.seq += 1
            if n % 7:
                frames.append(p.encode(p.Unpin(seq=raw.seq, ids=[oid(1)])))
            else:  # contains of object 1 (there), then 2 (not), ...
                frames.append(p.encode(p.Contains(seq=raw.seq, id=oid(1 + n % 2))))
                expected.append((raw.seq, n % 2 == 0))
        raw.sock.sendall(b"".join(frames))
        assert other.contains(oid(1))
        got = [raw.receive() for _ in expected]
        assert [(r.seq, r.present) for r in got] == expected


def test_store_full_says_what_holds_the_memory_and_who() -> None:
    """Pinned bytes are not "unreferenced": the message tells them apart, and names the
    clients that hold the most."""
    store = pin_scan_store(budget=16 * KIB)
    store.register_client(1, label="client 1 'writer' (pid 11)")
    for n in range(1, 9):
        put(store, 1, n, 1024)  # 8 KiB unreferenced ...
    read, table = pin_reader(store, 100)
    store._clients[100].label = "client 100 'reader' (pid 100)"
    for n in range(1, 5):
        pin(store, read, table, n)  # ... 4 KiB of it pinned by a reader
    store.create(1, oid(20), 2048)  # being written
    store.create(1, oid(21), 1024)
    store.seal(1, oid(21))  # referenced
    with pytest.raises(StoreFull) as full:
        store.create(1, oid(30), 12 * KIB)
    text = str(full.value)
    assert "1024 bytes referenced, 2048 being written, 0 in arenas, 4096 pinned by readers" in text
    assert "4096 unreferenced" in text
    assert "held most by client 100 'reader' (pid 100) (4096 bytes: 4096 pinned)" in text
    assert "client 1 'writer' (pid 11) (3072 bytes: 1024 referenced, 2048 being written)" in text
    assert "`plasma-coord memory` lists every holder" in text


def test_a_pin_scan_does_not_import_numpy_ma() -> None:
    """np.unique imports numpy.ma: 19 ms on the coordinator's first scan, and 1.2 MiB."""
    code = (
        "from plasma.directory import PIN_HEADER, PinScanner, pin_table_size\n"
        "buf = bytearray(pin_table_size(64))\n"
        "buf[0] = 8\n"
        "buf[PIN_HEADER] = 5\n"
        "scanner = PinScanner()\n"
        "scanner.add(1, buf)\n"
        "gens = list(range(1, 40))\n"
        "assert scanner.pinned(gens) == {5} and scanner.holders_of(gens) == {5: [1]}\n"
        "assert scanner.holders_of([5, 6, 7]) == {5: [1]} and scanner.counts(gens) == {5: 1}\n"
    )
    assert not imports_after(code, "numpy.ma")
