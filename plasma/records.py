"""Records of the store (internal): where objects and segments are, what ``list()`` shows.

These msgspec Structs are what :mod:`plasma.store`, :mod:`plasma.segments` and the clients
pass around, and they travel inside :mod:`plasma.protocol` messages unchanged: every one is
array-like, so its field order (and each default, for an older peer) is its wire encoding;
never reorder, rename or drop a field. They live here, apart from the message union and the
frame codec, so the layers below the coordinator need not import the wire protocol.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from plasma.ids import ID_SIZE

# The largest seq, size, offset, byte count, segment id or relay id a request may carry (a
# signed 64-bit integer, what the store and the kernel interfaces below it take).
MAX_INT = 2**63 - 1

# Bounds of the fields a client sends inside a record (``CreateItem``, ``ArenaObject``);
# plasma.protocol bounds its requests' fields with the same two.
BoundedInt = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
IdBytes = Annotated[bytes, msgspec.Meta(min_length=ID_SIZE, max_length=ID_SIZE)]


class SegmentInfo(msgspec.Struct, array_like=True, gc=False):
    """A shared-memory segment; its fd accompanies the frame that first lists it."""

    id: int
    size: int
    node: int
    page_size: int
    writable: bool = True  # False: the fd is read-only, map it PROT_READ


class ObjectLocation(msgspec.Struct, array_like=True, gc=False):
    """Where an object's bytes live: data at ``offset``, metadata right after it."""

    segment: int
    offset: int
    data_size: int
    metadata_size: int
    node: int


class ObjectInfo(msgspec.Struct, array_like=True, gc=False):
    """One row of ``list()``."""

    id: bytes
    data_size: int
    metadata_size: int
    node: int
    state: str  # "created" | "sealed"
    ref_count: int
    create_time: float
    owner: int  # client id of the creator
    # seconds from create to seal (kept to 7 significant digits); -1 while unsealed
    construct_duration: float = -1.0
    pages_on: list[int] = []  # the nodes its pages were moved to (interleaved, migrated)
    replicas: list[int] = []  # the nodes with a read-only copy of it


class TablesInfo(msgspec.Struct, array_like=True, gc=False):
    """The shared tables of reads without requests (:mod:`plasma.directory`): byte sizes of
    the directory (its fd read-only), of its access bytes (0: none sent; the fd is
    read-write) and of the client's pin table (read-write; 0 when the directory moved and
    the pin table stays). The fds accompany the frame in that order, those of size 0
    left out."""

    directory_size: int
    access_size: int
    pin_size: int = 0


class NodeInfo(msgspec.Struct, array_like=True, gc=False):
    id: int
    capacity: int
    cpus: list[int]


class CreateItem(msgspec.Struct, array_like=True, gc=False):
    id: IdBytes
    data_size: BoundedInt
    metadata_size: BoundedInt = 0


class SpillEntry(msgspec.Struct, array_like=True, gc=False):
    """One object in a spill file (:mod:`plasma.spill_files`): its payload (data, then
    metadata) is ``length`` bytes at ``offset`` of the file, with CRC-32C ``crc``; ``index``
    is its position in the file's index."""

    id: bytes
    data_size: int
    metadata_size: int
    node: int
    create_time: float
    offset: int
    length: int
    crc: int
    index: int = 0


class ArenaObject(msgspec.Struct, array_like=True, gc=False):
    """An object a client carved out of its arena, registered sealed by ``SealArena``."""

    id: IdBytes
    offset: BoundedInt
    data_size: BoundedInt
    metadata_size: BoundedInt
