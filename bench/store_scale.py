"""What many objects cost the sans-I/O store: ``python -m bench.store_scale``.

For ``--objects`` idle sealed 64 B objects (sealed into an arena) and as many objects only on
disk (adopted from spill files, as after a restart with ``--restore``): the Python memory
each takes (tracemalloc, its id included; the directory's shared buffers not counted), and
how long ``stats()``, ``object_ids()``, one page of ``objects()`` and ``holders()`` take
(what ``list``, ``stats`` and ``/metrics`` call); then the longest seal call while a store
grows to ``--objects`` from the smallest directory: the one in which the directory was
rebuilt last. No coordinator: the store's own share.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable, Sequence

from bench.store_ops import _Provider, _store
from plasma.records import ArenaObject, SpillEntry
from plasma.store import Grant, Store

BATCH = 10_000
PAGE = 1000


def _ids(start: int, stop: int) -> list[bytes]:
    return [i.to_bytes(20, "little") for i in range(start, stop)]


def _sealed(objects: int, store: Store | None = None) -> Store:
    """A store (with a directory of room for ``objects``, unless ``store`` is given) that
    ``objects`` idle sealed objects were sealed into, ``BATCH`` a call."""
    store = _store(objects) if store is None else store
    _grow(store, objects)
    return store


def _grow(store: Store, objects: int) -> list[float]:
    """Seal ``objects`` objects into ``store``, ``BATCH`` a call: the seconds of each call."""
    grant = store.grant_arena(1, 64 * objects)
    assert isinstance(grant, Grant)
    clock = time.perf_counter
    seconds = []
    for start in range(0, objects, BATCH):
        ids = _ids(start, min(objects, start + BATCH))
        began = clock()
        store.seal_arena(
            1,
            grant.grant,
            [ArenaObject(o, grant.offset + 64 * (start + i), 64, 0) for i, o in enumerate(ids)],
        )
        store.drain_events()
        seconds.append(clock() - began)
    return seconds


def _rebuilds(objects: int) -> None:
    """Grow a store from the smallest directory: the seal calls in which it was rebuilt
    (the coordinator answers no one meanwhile) against the others."""
    store = Store({0: 1 << 40}, _Provider())
    store.register_client(1)
    seconds = _grow(store, objects)
    directory = store.stats()["directory"]
    slowest = max(seconds)
    print(
        f"{objects:,} objects sealed {BATCH:,} a call, {directory['rebuilds']} directory "
        f"rebuilds (to {directory['capacity']:,} slots): the slowest call "
        f"{slowest * 1e3:.0f} ms, the median {statistics.median(seconds) * 1e3:.0f} ms"
    )


def _spilled(objects: int) -> Store:
    store = Store({0: 1 << 30}, _Provider(), spill=True)
    files = {}
    for n, start in enumerate(range(0, objects, BATCH), 1):
        ids = _ids(start, min(objects, start + BATCH))
        entries = [SpillEntry(o, 64, 0, 0, 0.0, 64 * i, 64, 0, i) for i, o in enumerate(ids)]
        files[n] = (entries, 64 * len(entries))
    store.adopt_spilled(files)
    store.drain_events()  # (as the coordinator does after it: the idle records made compact)
    return store


def _measure(name: str, make: Callable[[int], Store], objects: int) -> None:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    store = make(objects)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    shared = [tracemalloc.Filter(False, "*directory_memory.py")]
    grown = sum(
        s.size_diff
        for s in after.filter_traces(shared).compare_to(before.filter_traces(shared), "filename")
    )
    print(f"{objects:,} {name}: {grown / objects:.0f} B of Python memory each")
    clock = time.perf_counter
    ids: list[bytes] = []
    for what, call in (
        ("stats()", store.stats),
        ("object_ids()", lambda: ids.extend(store.object_ids())),
        (f"objects() of {PAGE:,} ids", lambda: store.objects(ids[:PAGE])),
        ("holders()", store.holders),
    ):
        start = clock()
        call()
        print(f"  {what}: {(clock() - start) * 1e3:.1f} ms")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    _measure("idle sealed objects", _sealed, args.objects)
    _measure("spilled objects", _spilled, args.objects)
    _rebuilds(args.objects)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
