"""The ``scale`` scenario: a store as it grows to a million live 64 B objects.

Runs in a peer's worker, in a store of its own, one case per size in ascending order: each
case grows the store to its size by the peer's fastest batch create (what the earlier cases
made stays), checks that the store evicted nothing, measures the store process's memory, then
times create+seal, get and delete of batches of extra objects at that size.
"""

from __future__ import annotations

import statistics
import time
import weakref

from bench.peers.base import Key, Peer, store_memory

MiB = 1 << 20
SIZE = 64
PAYLOAD = bytes(range(SIZE))
GROW_BATCH = 10_000  # objects per put_many while growing
BATCH = 2000  # extra objects per timed round
ROUNDS = (5, 2)  # timed rounds per repeat: (full, quick); the rates are their medians
# Store bytes one 64 B object takes, data included: Arrow Plasma's dlmalloc puts a header
# before each 64-byte-aligned block (about 125 B of its heap per object at a million);
# plasma-coord packs them 64-byte-aligned into arenas.
FOOTPRINT = {"arrow-plasma": 128}
DEFAULT_FOOTPRINT = SIZE

# The objects each store has grown to so far (its worker runs every size in one store).
_grown: weakref.WeakKeyDictionary[Peer, list[Key]] = weakref.WeakKeyDictionary()


def store_bytes(peer: str, objects: int) -> int:
    """Store bytes for ``peer`` to hold ``objects`` live objects and a batch without evicting,
    with room to spare (twice the footprint)."""
    return 2 * (objects + BATCH) * FOOTPRINT.get(peer, DEFAULT_FOOTPRINT)


def scale(peer: Peer, n_objects: int, quick: bool) -> dict[str, float]:
    """Grow ``peer``'s store to ``n_objects`` live objects; its memory, and the medians over
    rounds of the create+seal, get and delete rates of ``BATCH`` more objects."""
    keys = _grown.setdefault(peer, [])
    if n_objects < len(keys):
        raise ValueError(f"the store holds {len(keys):,} objects already, more than {n_objects:,}")
    while len(keys) < n_objects:
        keys += peer.put_many([PAYLOAD] * min(GROW_BATCH, n_objects - len(keys)))
    peer.sync()
    _check_nothing_evicted(peer, len(keys))
    mem = store_memory(peer.store_pids())
    rounds = [_round(peer) for _ in range(ROUNDS[1] if quick else ROUNDS[0])]
    _check_nothing_evicted(peer, len(keys))
    create, get, delete = (statistics.median(rates) for rates in zip(*rounds, strict=True))
    return {
        "private_MiB": mem["private"] / MiB,
        "shmem_MiB": mem["shmem"] / MiB,
        "create_ops_per_s": create,
        "get_ops_per_s": get,
        "delete_ops_per_s": delete,
    }


def _check_nothing_evicted(peer: Peer, grown: int) -> None:
    objects, evictions = peer.store_counts()
    if evictions or objects < grown:
        raise RuntimeError(
            f"the store evicted {evictions:,} objects: it holds {objects:,} of the {grown:,} "
            "grown (its memory is too small)"
        )


def _round(peer: Peer) -> tuple[float, float, float]:
    """Ops/s of create+seal (until the store applied the seals), of get + read one byte +
    drop, and of delete, of ``BATCH`` new objects."""
    clock = time.perf_counter
    t0 = clock()
    keys = peer.put_many([PAYLOAD] * BATCH)
    peer.sync()
    t1 = clock()
    for key in keys:
        view = peer.get(key)
        view[0]
        del view
    t2 = clock()
    peer.delete(keys)
    t3 = clock()
    return BATCH / (t1 - t0), BATCH / (t2 - t1), BATCH / (t3 - t2)
