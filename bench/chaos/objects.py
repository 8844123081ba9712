"""Objects whose contents derive from their id: written through each client path, read back
and checked byte for byte.

An id encodes how the object was made (``put``, ``create_and_seal``, ``many`` for
``create_and_seal_many``, ``create`` for create + write + seal + release) and its size, so a
reader needs nothing but the id to know what it must find.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

import plasma
from plasma import serialization
from plasma.errors import PlasmaError
from plasma.ids import ID_SIZE

KINDS = ("put", "create_and_seal", "many", "create")


class CorruptRead(Exception):
    """An object read back did not hold the bytes its id prescribes."""


def new_id(kind: str, size: int, rng: random.Random) -> bytes:
    """A fresh id: kind, size, then random bytes."""
    return bytes([KINDS.index(kind)]) + size.to_bytes(4, "little") + rng.randbytes(ID_SIZE - 5)


def kind_of(oid: bytes) -> str:
    return KINDS[oid[0] % len(KINDS)]


def size_of(oid: bytes) -> int:
    return int.from_bytes(oid[1:5], "little")


def content(oid: bytes) -> np.ndarray:
    """The bytes ``oid`` must hold: a per-id hash block repeated, each 64-byte block xor its
    index, so bytes of another object, or from another offset, do not match."""
    size = size_of(oid)
    block = np.frombuffer(hashlib.blake2b(oid, digest_size=64).digest(), np.uint8)
    blocks = -(-size // 64)
    data = np.tile(block, blocks)
    data ^= np.repeat(np.arange(blocks, dtype=np.uint64).astype(np.uint8), 64)
    return data[:size]


def metadata(oid: bytes) -> bytes:
    """Metadata of the raw kinds: 0..7 bytes derived from the id."""
    return oid[5 : 5 + oid[-1] % 8]


def mismatch(oid: bytes, data: Any, meta: Any = None) -> str | None:
    """None when ``data`` (and ``meta``, if given) are what ``oid`` must hold, else what differs."""
    got = np.frombuffer(data, np.uint8)
    want = content(oid)
    what = f"{oid.hex()} ({kind_of(oid)}, {want.size} B)"
    if got.size != want.size:
        return f"{what}: {got.size} bytes read"
    if not np.array_equal(got, want):
        differ = got != want
        first = int(np.flatnonzero(differ)[0])
        return f"{what}: {int(np.count_nonzero(differ))} bytes differ, from offset {first}"
    if meta is not None and bytes(meta) != metadata(oid):
        return f"{what}: metadata {bytes(meta)!r}, expected {metadata(oid)!r}"
    return None


def log_uniform(rng: random.Random, low: int, high: int) -> int:
    """A size between ``low`` and ``high``, uniform in log scale."""
    return int(low * (high / low) ** rng.random())


def write(client: plasma.Client, oids: Sequence[bytes]) -> None:
    """Store ``oids`` by the path each id names (``many`` ones in one batch)."""
    batch = [(oid, content(oid).data, metadata(oid)) for oid in oids if kind_of(oid) == "many"]
    if batch:
        client.create_and_seal_many(batch)
    for oid in oids:
        kind = kind_of(oid)
        if kind == "put":
            client.put(content(oid), oid)
        elif kind == "create_and_seal":
            client.create_and_seal(oid, content(oid).data, metadata(oid))
        elif kind == "create":
            buf = client.create(oid, size_of(oid), metadata(oid))
            buf[:] = content(oid).data
            buf.release()
            client.seal(oid)
            client.release(oid)


def check(client: plasma.Client, oid: bytes, timeout: float | None = 0) -> Any:
    """Get ``oid`` and check every byte; CorruptRead if wrong (PlasmaError if absent).

    Returns the view read: the object stays referenced while it is kept.
    """
    data, meta = client.get(oid, timeout, with_metadata=True)
    if kind_of(oid) != "put":
        problem = mismatch(oid, data, meta)
    else:
        try:
            data = serialization.decode(data, meta)
        except PlasmaError as exc:
            raise CorruptRead(f"{oid.hex()} (put): unreadable metadata: {exc}") from None
        problem = mismatch(oid, data)
    if problem is not None:
        raise CorruptRead(problem)
    return data
