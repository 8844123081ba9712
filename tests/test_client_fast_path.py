"""The directory fast path of a get (``plasma._client_core.fast_path``), without a
coordinator: a directory and a pin table in plain buffers; each test of both read paths
(the C one and the Python one) unless it says otherwise."""

from __future__ import annotations

from typing import Any

import pytest

from plasma._client_core.fast_path import PYTHON, ReadPath, pin_from_directory
from plasma.directory import (
    REPLICA,
    Directory,
    DirectoryReader,
    directory_size,
    pin_table_size,
)
from plasma.ids import replica_id
from plasma.records import ObjectLocation
from tests.helpers import READ_PATHS

OID = b"o" * 20


BUFFERS: dict[int, bytearray] = {}  # each directory's buffer, for a second reader of it


def setup(path: ReadPath = PYTHON, entries: int = 4) -> tuple[Directory, Any, Any]:
    """A directory and ``path``'s reader of it, and a pin table of ``entries``."""
    buf = bytearray(directory_size(16))
    directory = Directory(buf, 16)
    BUFFERS[id(directory)] = buf
    return directory, path.reader(buf, None), path.pins(bytearray(pin_table_size(entries)))


def where(segment: int, node: int = 0) -> ObjectLocation:
    return ObjectLocation(segment, 64, 100, 0, node)


@pytest.mark.parametrize("path", READ_PATHS)
def test_a_sealed_object_in_a_mapped_segment_is_found_and_pinned(path: ReadPath) -> None:
    directory, reader, pins = setup(path)
    directory.insert(OID, 7, where(1))
    got = path.pin(reader, pins, {1}, OID, None)
    assert got is not None
    found, index = got
    assert found.location == where(1) and found.generation == 7
    assert pins.count == 1 and pins.pin(8) != index  # the entry is taken


@pytest.mark.parametrize("path", READ_PATHS)
def test_nothing_is_pinned_for_an_unknown_id_or_an_unmapped_segment(path: ReadPath) -> None:
    directory, reader, pins = setup(path)
    assert path.pin(reader, pins, {1}, OID, None) is None
    directory.insert(OID, 7, where(2))
    assert path.pin(reader, pins, {1}, OID, None) is None  # segment 2 not mapped
    assert pins.count == 0


@pytest.mark.parametrize("path", READ_PATHS)
def test_a_full_pin_table_serves_nothing(path: ReadPath) -> None:
    directory, reader, pins = setup(path, entries=1)
    directory.insert(OID, 7, where(1))
    assert pins.pin(99) is not None
    assert path.pin(reader, pins, {1}, OID, None) is None


def test_a_slot_changed_between_read_and_pin_gives_the_pin_back() -> None:
    directory, _, pins = setup()
    slot = directory.insert(OID, 7, where(1))

    class Racing(DirectoryReader):
        def unchanged(self, found: object) -> bool:
            directory.remove(slot)  # (the coordinator, between the pin and the re-read)
            return super().unchanged(found)  # type: ignore[arg-type]

    racing = Racing(BUFFERS[id(directory)])
    assert pin_from_directory(racing, pins, {1}, OID, None) is None
    assert pins.count == 0


@pytest.mark.parametrize("path", READ_PATHS)
def test_the_copy_on_the_readers_node_comes_first(path: ReadPath) -> None:
    directory, reader, pins = setup(path)
    directory.insert(OID, 7, where(1, node=0))
    directory.insert(replica_id(OID, 1), 8, where(2, node=1), REPLICA)
    directory.announce_replicas()
    got = path.pin(reader, pins, {1, 2}, OID, 1)
    assert got is not None and got[0].location == where(2, node=1)
    got = path.pin(reader, pins, {1, 2}, OID, 0)  # no copy on node 0: the object
    assert got is not None and got[0].location == where(1, node=0)
    got = path.pin(reader, pins, {1, 2}, OID, None)
    assert got is not None and got[0].location == where(1, node=0)
