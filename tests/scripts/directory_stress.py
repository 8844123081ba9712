"""Workers of the directory stress test (``tests/test_directory_stress.py``).

Each function here runs in a process of its own (multiprocessing, "spawn"). Writers churn a
fixed space of ids at full speed: create with content derived from the id alone, delete,
create the same ids again, evict; the store is small, so creates evict too. Readers get ids
at random through the public client API, check every byte of every object against the
content its id implies, hold the views a while and check them again: an object whose memory
was freed and reused under a reader shows another id's bytes.

``hide_pins`` is the negative control: a reader's pins are written and at once erased from
its pin table, so the coordinator never sees them and frees memory under the reader's feet.

Processes meet at a barrier once connected (writers after filling the store), report
milestones on a shared queue (quota reached, corruption seen, crashed) and send their
counts over a pipe when told to stop. Nothing here sleeps to wait for another process.
"""

from __future__ import annotations

import hashlib
import random
import struct
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

SMALL_MIN = 64
SMALL_MAX = 64 << 10
LARGE_MIN = 256 << 10
LARGE_MAX = 2 << 20
PATTERN = 64  # bytes of an object's repeating pattern; every size is a multiple of it
LARGE_SHARE = 4  # one id in this many is a large object


@dataclass(frozen=True)
class Params:
    """What every worker of one run is told."""

    socket: str
    ids: int = 256  # the id space, shared by writers (partitioned) and readers
    writers: int = 2
    readers: int = 3
    hide_pins: bool = False
    hold: float = 0.002  # seconds a reader holds its views between the two checks
    batch: int = 4  # ids per get_buffers call
    reader_quota: int = 1000  # pinned objects a reader gets before it reports "quota"
    writer_quota: int = 6000  # churn operations a writer does before it reports "quota"
    evict_every: int = 50  # a writer asks for an eviction every this many operations
    seed: int = 0


def object_id(i: int) -> bytes:
    """The 20-byte id number ``i`` of the id space."""
    return hashlib.blake2b(b"directory-stress:%d" % i, digest_size=20).digest()


def object_size(oid: bytes) -> int:
    """The data size an id implies: one in ``LARGE_SHARE`` is 256 KiB-2 MiB (larger ones
    leave the client's arena), the rest 64 B-64 KiB; a multiple of ``PATTERN``."""
    h = int.from_bytes(hashlib.blake2b(oid, digest_size=8, person=b"size").digest(), "little")
    if h % LARGE_SHARE == 0:
        lo, hi = LARGE_MIN, LARGE_MAX
    else:
        lo, hi = SMALL_MIN, SMALL_MAX
    return lo + ((h >> 8) % (hi - lo + PATTERN)) // PATTERN * PATTERN


def pattern(oid: bytes) -> np.ndarray:
    """The 64 bytes an object's content repeats, as eight little-endian u64 words."""
    digest = hashlib.blake2b(oid, digest_size=PATTERN, person=b"content").digest()
    return np.frombuffer(digest, dtype="<u8")


def content(oid: bytes) -> np.ndarray:
    """The full content an id implies (a fresh uint8 array)."""
    return np.tile(pattern(oid), object_size(oid) // PATTERN).view(np.uint8)


def bad_bytes(view: Any, oid: bytes) -> int:
    """How many bytes of ``view`` differ from the content ``oid`` implies (a wrong length
    counts as all of them bad); every byte is compared."""
    size = object_size(oid)
    if len(view) != size:
        return max(size, len(view))
    words = np.frombuffer(view, dtype="<u8").reshape(-1, PATTERN // 8)
    wrong = words != pattern(oid)
    if not wrong.any():
        return 0
    expected = content(oid).reshape(-1, PATTERN)
    got = np.frombuffer(view, dtype=np.uint8).reshape(-1, PATTERN)
    return int(np.count_nonzero(got != expected))


def _run_worker(kind: str, index: int, params: Params, queue: Any, conn: Any, body: Any) -> None:
    """Run ``body``; a crash is reported on the queue and the pipe alike."""
    try:
        result = body()
    except BaseException:
        text = traceback.format_exc()
        queue.put((kind, index, "error"))
        result = {"error": text}
    conn.send(result)
    conn.close()


def reader(index: int, params: Params, barrier: Any, stop: Any, queue: Any, conn: Any) -> None:
    """Get random ids until ``stop``; check each object twice around a hold; send counts."""
    _run_worker(
        "reader", index, params, queue, conn, lambda: _reader(index, params, barrier, stop, queue)
    )


def _hide_pins() -> None:
    """The negative control: every pin is taken (the entry is in use, the free list right)
    and erased from the table as soon as the get that took it returns, so no scan of the
    coordinator ever finds it. (Whichever read path took it: the C one or Python's.)"""
    from plasma._client_core import ClientCore
    from plasma.directory import PIN_HEADER

    real_take_pinned = ClientCore.take_pinned

    def take_pinned(self: ClientCore, oid: bytes) -> Any:
        views = real_take_pinned(self, oid)
        held = self.refs.held.get(oid)
        if views is not None and held is not None and self.maps.pin_map is not None:
            struct.pack_into("<Q", self.maps.pin_map, PIN_HEADER + 8 * held.pin, 0)
        return views

    ClientCore.take_pinned = take_pinned  # type: ignore[method-assign]


def _count_paths(counts: Counter[str]) -> None:
    """Count the objects the client serves from pins (``pinned``) and from references it
    holds already (``reused``); the rest of a get's objects came by request."""
    from plasma._client_core import ClientCore
    from plasma._client_core.refs import Refs

    real_take_pinned = ClientCore.take_pinned
    real_reuse = Refs.reuse

    def take_pinned(self: ClientCore, oid: bytes) -> Any:
        views = real_take_pinned(self, oid)
        counts["pin_attempts"] += 1
        if views is not None:
            counts["pinned"] += 1
        return views

    def reuse(self: Refs, oid: bytes) -> Any:
        views = real_reuse(self, oid)
        if views is not None:
            counts["reused"] += 1
        return views

    ClientCore.take_pinned = take_pinned  # type: ignore[method-assign]
    Refs.reuse = reuse  # type: ignore[method-assign]


def _reader(index: int, params: Params, barrier: Any, stop: Any, queue: Any) -> dict[str, Any]:
    import plasma

    counts: Counter[str] = Counter()
    _count_paths(counts)
    if params.hide_pins:
        _hide_pins()
    rng = random.Random(params.seed * 1000 + 100 + index)
    ids = [object_id(i) for i in range(params.ids)]
    examples: list[str] = []
    # reader 0 lets go of every object at once; the others keep released ones cached (and
    # pinned) the default way, so cached pins of deleted objects are exercised too
    options = {"release_delay": 0} if index == 0 else {}
    reported_quota = reported_corrupt = False
    with plasma.connect(params.socket, f"stress-reader-{index}", **options) as client:
        counts["fast_path"] = int(
            client._core.maps.reader is not None and client._core.maps.pins is not None
        )
        barrier.wait()
        while not stop.is_set():
            if rng.random() < 0.5:
                wanted = [rng.choice(ids)]
                try:
                    views = [client.get(wanted[0], timeout=0)]
                except (plasma.ObjectNotFound, plasma.ObjectNotSealed, plasma.PlasmaTimeout) as exc:
                    counts[f"error:get:{type(exc).__name__}"] += 1  # absent, or being made
                    continue
            else:
                wanted = rng.sample(ids, params.batch)
                views = client.get_buffers(wanted, timeout=0)
            counts["get_calls"] += 1
            counts["asked"] += len(wanted)
            got = [(oid, v) for oid, v in zip(wanted, views, strict=True) if v is not None]
            counts["missing"] += len(wanted) - len(got)
            del views
            _check(got, counts, examples, "first")
            time.sleep(params.hold)  # widen the window a free under the reader would hit
            _check(got, counts, examples, "second")
            counts["objects"] += len(got)
            got.clear()  # the last views go: the objects' pins are let go (or cached)
            if not reported_corrupt and counts["corrupt_checks"]:
                reported_corrupt = True
                queue.put(("reader", index, "corrupt"))
            if not reported_quota and counts["pinned"] >= params.reader_quota:
                reported_quota = True
                queue.put(("reader", index, "quota"))
    return {"counts": dict(counts), "examples": examples}


def _check(
    got: list[tuple[bytes, Any]], counts: Counter[str], examples: list[str], phase: str
) -> None:
    """Check every byte of every view in ``got``; count (and describe a few) bad ones."""
    for oid, view in got:
        bad = bad_bytes(view, oid)
        counts["checked_bytes"] += len(view)
        if bad:
            counts["corrupt_checks"] += 1
            counts["corrupt_bytes"] += bad
            counts[f"corrupt_{phase}"] += 1
            if len(examples) < 5:
                examples.append(f"{oid.hex()} size {len(view)}: {bad} bytes bad ({phase} check)")


def writer(index: int, params: Params, barrier: Any, stop: Any, queue: Any, conn: Any) -> None:
    """Fill the store with this writer's ids, then churn them until ``stop``; send counts."""
    _run_worker(
        "writer", index, params, queue, conn, lambda: _writer(index, params, barrier, stop, queue)
    )


def _writer(index: int, params: Params, barrier: Any, stop: Any, queue: Any) -> dict[str, Any]:
    import plasma

    counts: Counter[str] = Counter()
    rng = random.Random(params.seed * 1000 + index)
    mine = [object_id(i) for i in range(index, params.ids, params.writers)]
    present: set[bytes] = set()  # what this writer believes is stored (eviction forgets)
    errors: list[str] = []  # the first few errors of each kind, in order

    def failed(where: str, oid: bytes, exc: Exception) -> None:
        if isinstance(exc, plasma.Disconnected):
            raise exc  # the coordinator is gone: nothing more to do here
        key = f"error:{where}:{type(exc).__name__}"
        counts[key] += 1
        if counts[key] <= 3:
            errors.append(f"op {counts['ops']} {where} {oid.hex()[:8]}: {exc!r}")

    def create(client: plasma.Client, oid: bytes) -> None:
        try:
            client.create_and_seal(oid, content(oid))
        except plasma.PlasmaError as exc:
            failed("create", oid, exc)
        else:
            counts["creates"] += 1
            present.add(oid)

    with plasma.connect(params.socket, f"stress-writer-{index}") as client:
        for oid in mine:
            create(client, oid)
        try:
            client.flush()  # the fill is in before the readers start
        except plasma.PlasmaError as exc:
            failed("flush", b"", exc)
        barrier.wait()
        reported = False
        while not stop.is_set():
            oid = rng.choice(mine)
            if oid in present:
                try:
                    deferred = client.delete([oid])
                except plasma.ObjectNotFound:
                    present.discard(oid)  # evicted meanwhile: nothing to delete
                    counts["delete:evicted"] += 1
                except plasma.PlasmaError as exc:  # an earlier create's deferred error:
                    failed("delete", oid, exc)  # this delete was not sent
                else:
                    present.discard(oid)
                    counts["deletes"] += 1
                    counts["deletes_deferred"] += len(deferred)
                    # the same id again at once, unless the delete was deferred: held by
                    # a reader's reference, the id exists until that goes (ObjectExists)
                    if not deferred and rng.random() < 0.75:
                        create(client, oid)
            else:
                create(client, oid)
            counts["ops"] += 1
            if counts["ops"] % params.evict_every == 0:
                try:
                    counts["evicted_bytes"] += client.evict(rng.randrange(1 << 20, 4 << 20))
                except plasma.PlasmaError as exc:
                    failed("evict", b"", exc)
            if not reported and counts["ops"] >= params.writer_quota:
                reported = True
                queue.put(("writer", index, "quota"))
        try:
            client.flush()  # surface deferred errors of the last creates
        except plasma.PlasmaError as exc:
            failed("flush", b"", exc)
    return {"counts": dict(counts), "errors": errors}
