"""The ``spill`` scenario: a working set 3x the store's memory streamed through a store that
spills to disk.

Runs in a peer's worker, in a store of its own (plasma-coord: ``serve --spill-dir`` in the
session's work dir, see ``Scenario.serve_args``; Ray: its default spilling), one case per
object size: put (create + write + seal) numpy arrays of that size until 3x the store's memory
went in, then get every one once in creation order, compare every byte with what was written
and delete it. A byte that differs fails the case.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from bench.peers.base import Peer

MiB = 1 << 20
VOLUME = 3  # the working set, in store memories
RESIDENT = 16  # the store holds this many objects of the largest size
MIN_STORE = 96 * MiB  # Ray refuses an object store under 75 MiB
PAGE_WORDS = 4096 // 8


def store_bytes(peer: str, largest: int) -> int:
    """The store's bytes (exactly: ``Scenario.exact_memory``): ``RESIDENT`` objects of the
    largest size, at least ``MIN_STORE``."""
    return max(MIN_STORE, RESIDENT * largest)


def contents(template: np.ndarray, index: int) -> np.ndarray:
    """Object ``index``'s contents, written into ``template`` (uint64 0, 1, 2, ...): the
    first word of every 4 KiB page is the index, every other word its position, so a byte
    from another object, from elsewhere in this one, or never written shows."""
    template[::PAGE_WORDS] = index
    return template


def spill(peer: Peer, size: int) -> dict[str, float]:
    """Stream ``VOLUME`` times the store's memory through it in objects of ``size`` bytes;
    objects/s and GB/s of the writes (until the store applied the seals) and of the read-back
    (get + compare every byte + delete), and the bytes verified."""
    n = VOLUME * peer.memory // size
    template = np.arange(size // 8, dtype=np.uint64)
    clock = time.perf_counter
    t0 = clock()
    keys: list[Any] = [peer.put_array(contents(template, i)) for i in range(n)]
    peer.sync()
    t1 = clock()
    wrong = []
    for i in range(n):
        got = peer.get_array(keys[i])
        if not np.array_equal(got, contents(template, i)):
            wrong.append(i)
        del got
        peer.delete([keys[i]])
        keys[i] = None  # Ray frees an object with its last reference
    t2 = clock()
    if wrong:
        raise AssertionError(
            f"{len(wrong)} of {n} objects read back differ from what was written "
            f"(first: object {wrong[0]})"
        )
    written = n * size / 1e9
    return {
        "write_objects_per_s": n / (t1 - t0),
        "write_GB_per_s": written / (t1 - t0),
        "read_objects_per_s": n / (t2 - t1),
        "read_GB_per_s": written / (t2 - t1),
        "verified_GB": written,
    }
