"""What one object costs the sans-I/O store alone: ``python -m bench.store_ops``.

Times, per object, a create + seal + release by one client (what ``create`` then
``seal`` with an acknowledgement costs the coordinator's store), a ``seal_arena`` of one
object written into the client's arena (what ``create_and_seal`` of a small object costs
it), and a ``delete`` of ``DELETE_BATCH`` objects sealed just before (the ``scale`` bench's
round) with, apart, the free of their memory by the pin scan after the grace period, over
``--objects`` objects, best of ``--rounds`` rounds: no socket, no coordinator, so the
store's own per-object work shows. ``cd TREE && PYTHONPATH=TREE python -m
bench.store_ops`` runs another tree's store (an extracted ``git archive``), for
before/after comparisons on one machine (ratios); from this tree's directory, ``python -m``
finds this tree's ``plasma`` first (the current directory goes ahead of ``PYTHONPATH``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from plasma.records import ArenaObject
from plasma.store import Grant, Store


class _Provider:
    """Segment ids only: the store's memory is bookkeeping here."""

    def __init__(self) -> None:
        self.next = 0

    def new_segment(self, node: int, size: int) -> int:
        self.next += 1
        return self.next

    def free_segment(self, segment: int) -> None:
        pass

    def new_fallback_segment(self, node: int, size: int) -> int:
        raise NotImplementedError


def _store(objects: int) -> Store:
    capacity = 1 << (2 * objects - 1).bit_length()  # (a power of two, at most half full)
    store = Store({0: 1 << 32}, _Provider(), directory_capacity=capacity)
    store.register_client(1)
    return store


def create_seal_release(objects: int) -> float:
    """Seconds per object of create + seal + release."""
    store = _store(objects)
    start = time.perf_counter()
    for i in range(objects):
        oid = i.to_bytes(20, "little")
        store.create(1, oid, 64)
        store.seal(1, oid)
        store.release(1, oid)
        store.drain_events()
    return (time.perf_counter() - start) / objects


def seal_arena(objects: int) -> float:
    """Seconds per object of a seal_arena of one 64-byte object."""
    store = _store(objects)
    grant = store.grant_arena(1, 64 * objects)
    assert isinstance(grant, Grant)
    start = time.perf_counter()
    for i in range(objects):
        obj = ArenaObject(i.to_bytes(20, "little"), grant.offset + 64 * i, 64, 0)
        store.seal_arena(1, grant.grant, [obj])
        store.drain_events()
    return (time.perf_counter() - start) / objects


DELETE_BATCH = 2000


def delete_and_free(objects: int) -> tuple[float, float]:
    """Seconds per object of a delete of ``DELETE_BATCH`` objects sealed just before, and
    of the free of their memory by the pin scan after the grace period."""
    store = _store(DELETE_BATCH)
    grant = store.grant_arena(1, 64 * objects)
    assert isinstance(grant, Grant)
    deleting = freeing = 0.0
    now = 0.0
    for first in range(0, objects, DELETE_BATCH):
        ids = [i.to_bytes(20, "little") for i in range(first, min(objects, first + DELETE_BATCH))]
        at = grant.offset + 64 * first
        store.seal_arena(
            1, grant.grant, [ArenaObject(o, at + 64 * i, 64, 0) for i, o in enumerate(ids)]
        )
        store.drain_events()
        start = time.perf_counter()
        store.delete(1, ids, now=now)
        store.drain_events()
        middle = time.perf_counter()
        now += 1.0  # (past the grace period)
        store.expire(now)
        store.drain_events()
        freeing += time.perf_counter() - middle
        deleting += middle - start
        stats = store.stats()
        if stats["objects"] or stats["dying"]:
            raise RuntimeError(f"a round left objects behind: {stats}")
    return deleting / objects, freeing / objects


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    for name, case in (("create+seal+release", create_seal_release), ("seal_arena", seal_arena)):
        best = min(case(args.objects) for _ in range(args.rounds))
        print(f"{name}: {best * 1e6:.2f} us per object")
    rounds = [delete_and_free(args.objects) for _ in range(args.rounds)]
    deletes, frees = (min(seconds) for seconds in zip(*rounds, strict=True))
    print(f"delete: {deletes * 1e6:.2f} us per object")
    print(f"free after the pin scan: {frees * 1e6:.2f} us per object")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
