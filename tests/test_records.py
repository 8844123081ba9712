"""The store's records: the same classes in plasma.protocol, and the same wire encodings."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from plasma import protocol as p
from plasma import records

OID = bytes(range(20))

# each record with distinct field values, its field names and its encoding as a plain list
ENCODINGS: list[tuple[msgspec.Struct, list[str], list[Any]]] = [
    (
        records.SegmentInfo(1, 8192, 2, 4096, False),
        ["id", "size", "node", "page_size", "writable"],
        [1, 8192, 2, 4096, False],
    ),
    (
        records.ObjectLocation(1, 64, 10, 2, 3),
        ["segment", "offset", "data_size", "metadata_size", "node"],
        [1, 64, 10, 2, 3],
    ),
    (
        records.ObjectInfo(OID, 10, 2, 1, "sealed", 4, 1.5, 7, 0.25, [1, 3], [2]),
        [
            "id",
            "data_size",
            "metadata_size",
            "node",
            "state",
            "ref_count",
            "create_time",
            "owner",
            "construct_duration",
            "pages_on",
            "replicas",
        ],
        [OID, 10, 2, 1, "sealed", 4, 1.5, 7, 0.25, [1, 3], [2]],
    ),
    (records.NodeInfo(1, 1 << 20, [0, 1]), ["id", "capacity", "cpus"], [1, 1 << 20, [0, 1]]),
    (records.CreateItem(OID, 10, 2), ["id", "data_size", "metadata_size"], [OID, 10, 2]),
    (
        records.ArenaObject(OID, 64, 10, 2),
        ["id", "offset", "data_size", "metadata_size"],
        [OID, 64, 10, 2],
    ),
]


@pytest.mark.parametrize(
    ("record", "names", "fields"), ENCODINGS, ids=[type(r).__name__ for r, _, _ in ENCODINGS]
)
def test_records_keep_their_encoding(record, names, fields):
    kind = type(record)
    assert getattr(p, kind.__name__) is kind  # re-exported: p.ObjectLocation and the rest
    assert [f.name for f in msgspec.structs.fields(kind)] == names
    data = msgspec.msgpack.encode(record)
    assert data == msgspec.msgpack.encode(fields)  # array-like, in field order
    assert msgspec.msgpack.decode(data, type=kind) == record


def test_record_defaults_are_kept():
    decode = msgspec.msgpack.decode
    segment = decode(msgspec.msgpack.encode([1, 8192, 2, 4096]), type=p.SegmentInfo)
    assert segment.writable is True  # an older peer's SegmentInfo has no ``writable``
    assert p.CreateItem(OID, 10) == decode(msgspec.msgpack.encode([OID, 10]), type=p.CreateItem)
    assert p.CreateItem(OID, 10).metadata_size == 0


@pytest.mark.parametrize(
    "fields",
    [[b"short", 10, 0], [OID, -1, 0], [OID, 10, records.MAX_INT + 1]],
    ids=["short id", "negative size", "size too large"],
)
def test_records_a_client_sends_are_bounded(fields):
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(msgspec.msgpack.encode(fields), type=records.CreateItem)
    assert p.MAX_INT == records.MAX_INT
