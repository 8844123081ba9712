"""Object identifiers: 20 opaque bytes, as in Arrow Plasma."""

from __future__ import annotations

import hashlib
import os

__all__ = ["ID_SIZE", "ObjectID", "as_id_bytes", "replica_id"]

ID_SIZE = 20


def replica_id(oid: bytes, node: int) -> bytes:
    """The id object ``oid``'s read-only copy on ``node`` is published under in the object
    directory (hidden from every request: readers find it by this derivation only)."""
    key = oid + node.to_bytes(4, "little")
    return hashlib.blake2b(key, digest_size=ID_SIZE, person=b"plasma-replica").digest()


class ObjectID:
    """A 20-byte object identifier; hashable, comparable and picklable."""

    __slots__ = ("_b",)

    def __init__(self, binary: bytes) -> None:
        if isinstance(binary, ObjectID):
            binary = binary._b
        if not isinstance(binary, (bytes, bytearray, memoryview)):
            # ValueError, as pyarrow.plasma's ObjectID raised for anything but 20 bytes
            raise ValueError(
                f"ObjectID needs {ID_SIZE} bytes, got {type(binary).__name__} {binary!r:.40} "
                "(use ObjectID.from_name or ObjectID.from_hex for text)"
            )
        b = bytes(binary)
        if len(b) != ID_SIZE:
            raise ValueError(f"ObjectID must be {ID_SIZE} bytes, got {len(b)}")
        self._b = b

    @classmethod
    def from_random(cls) -> ObjectID:
        return cls(os.urandom(ID_SIZE))

    @classmethod
    def from_hex(cls, text: str) -> ObjectID:
        return cls(bytes.fromhex(text))

    @classmethod
    def from_name(cls, name: str) -> ObjectID:
        """A stable id for a human-readable name (BLAKE2b digest of the UTF-8 name)."""
        import hashlib

        return cls(hashlib.blake2b(name.encode(), digest_size=ID_SIZE).digest())

    def binary(self) -> bytes:
        return self._b

    def hex(self) -> str:
        return self._b.hex()

    def __bytes__(self) -> bytes:
        return self._b

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectID) and other._b == self._b

    def __lt__(self, other: ObjectID) -> bool:
        return self._b < other._b

    def __hash__(self) -> int:
        return hash(self._b)

    def __repr__(self) -> str:
        return f"ObjectID({self._b.hex()})"

    def __reduce__(self) -> tuple[type[ObjectID], tuple[bytes]]:
        return (ObjectID, (self._b,))


def as_id_bytes(oid: ObjectID | bytes) -> bytes:
    """The 20 raw bytes of an ``ObjectID`` or of bytes of the right length."""
    if type(oid) is bytes and len(oid) == ID_SIZE:  # the common case first
        return oid
    if isinstance(oid, ObjectID):
        return oid.binary()
    if isinstance(oid, (bytes, bytearray)) and len(oid) == ID_SIZE:
        return bytes(oid)
    raise TypeError(f"expected ObjectID or {ID_SIZE} bytes, got {oid!r}")
