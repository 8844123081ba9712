"""ObjectID and byte-size parsing."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasma.ids import ObjectID, as_id_bytes
from plasma.units import format_size, parse_size


@given(st.binary(min_size=20, max_size=20))
def test_object_id_round_trips(raw):
    oid = ObjectID(raw)
    assert oid.binary() == raw == bytes(oid)
    assert ObjectID.from_hex(oid.hex()) == oid
    assert pickle.loads(pickle.dumps(oid)) == oid
    assert hash(ObjectID(raw)) == hash(oid)
    assert as_id_bytes(oid) == as_id_bytes(raw) == raw


def test_object_id_rejects_wrong_input():
    with pytest.raises(ValueError, match="20 bytes"):
        ObjectID(b"short")
    with pytest.raises(ValueError, match="from_name"):  # as pyarrow.plasma: ValueError
        ObjectID("a" * 20)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="20 bytes"):
        ObjectID(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        as_id_bytes(b"x" * 19)


def test_random_and_named_ids():
    assert ObjectID.from_random() != ObjectID.from_random()
    assert ObjectID.from_name("frame") == ObjectID.from_name("frame") != ObjectID.from_name("x")


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("512MiB", 512 << 20),
        ("4GiB", 4 << 30),
        ("2M", 2 << 20),
        ("1G", 1 << 30),
        ("1.5KiB", 1536),
        ("10MB", 10_000_000),
        (" 3 k ", 3072),
    ],
)
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "-1", "12XB", "MiB", "1e3"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError, match="not a size"):
        parse_size(text)


def test_format_size():
    assert format_size(512) == "512 B"
    assert format_size(3 << 30) == "3.0 GiB"
    assert format_size(1536) == "1.5 KiB"


def test_replica_ids_differ_per_node_and_from_the_object() -> None:
    from plasma.ids import ID_SIZE, replica_id

    oid = bytes(range(20))
    ids = {replica_id(oid, n) for n in range(8)}
    assert len(ids) == 8 and oid not in ids
    assert all(len(i) == ID_SIZE for i in ids)
    assert replica_id(oid, 3) == replica_id(bytes(range(20)), 3)  # what clients derive too
