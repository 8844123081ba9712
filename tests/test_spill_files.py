"""Spill files: the round trip, and every way a file can be incomplete or damaged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasma import spill_files
from plasma.linux import memfd
from plasma.spill_files import SpillDamaged, SpillSource

PAGE = 4096


def segment(payload: bytes, size: int = 1 << 20) -> int:
    fd = memfd.memfd_create("spill-test")
    os.ftruncate(fd, size)
    os.pwrite(fd, payload, 0)
    return fd


def sources(fd: int, sizes: list[tuple[int, int]]) -> list[SpillSource]:
    out, offset = [], 0
    for n, (data, meta) in enumerate(sizes):
        out.append(SpillSource(bytes([n]) * 20, fd, offset, data, meta, n % 2, 1.5 * n, PAGE))
        offset += -(-(data + meta or 1) // 64) * 64
    return out


def restore(directory: Path, file_id: int, entry) -> bytes:
    fd = memfd.memfd_create("restore")
    try:
        os.ftruncate(fd, max(entry.length, 1))
        spill_files.read_object(str(directory), file_id, entry, fd, 0, PAGE)
        return os.pread(fd, entry.length, 0)
    finally:
        os.close(fd)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 300)), min_size=1, max_size=6))
def test_what_is_written_comes_back_byte_for_byte(tmp_path_factory, sizes):
    directory = tmp_path_factory.mktemp("spill")
    payload = os.urandom(1 << 16)
    fd = segment(payload)
    try:
        srcs = sources(fd, sizes)
        entries, size = spill_files.write_batch(str(directory), 7, srcs)
    finally:
        os.close(fd)
    assert size == os.path.getsize(directory / "spill-0000000007.plasma")
    files, damaged = spill_files.scan(str(directory))
    assert not damaged and files[7] == (entries, size)
    for s, e in zip(srcs, entries, strict=True):
        assert (e.id, e.data_size, e.metadata_size, e.node) == (
            s.id,
            s.data_size,
            s.metadata_size,
            s.node,
        )
        assert restore(directory, 7, e) == payload[s.offset : s.offset + e.length]


def write_one(directory: Path, file_id: int = 1, data: int = 10_000) -> tuple[Path, list]:
    fd = segment(os.urandom(data))
    try:
        entries, _ = spill_files.write_batch(
            str(directory), file_id, sources(fd, [(data, 0), (100, 5)])
        )
    finally:
        os.close(fd)
    return directory / spill_files.file_name(file_id), entries


def test_a_truncated_file_is_reported_and_skipped(tmp_path):
    path, _ = write_one(tmp_path)
    os.truncate(path, path.stat().st_size - 10)
    files, damaged = spill_files.scan(str(tmp_path))
    assert not files and "trailer" in damaged[0]


def test_a_flipped_payload_byte_is_caught_by_scan_and_by_read(tmp_path):
    path, entries = write_one(tmp_path)
    with open(path, "r+b") as f:
        f.seek(entries[0].offset + 17)
        byte = f.read(1)
        f.seek(entries[0].offset + 17)
        f.write(bytes([byte[0] ^ 1]))
    files, damaged = spill_files.scan(str(tmp_path))
    assert not files and "checksum" in damaged[0]
    with pytest.raises(SpillDamaged, match="checksum"):
        restore(tmp_path, 1, entries[0])
    assert restore(tmp_path, 1, entries[1])  # the other object is fine


def test_a_damaged_index_is_reported(tmp_path):
    path, _ = write_one(tmp_path)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 40)
        f.write(b"\xff")
    files, damaged = spill_files.scan(str(tmp_path))
    assert not files and "index" in damaged[0]


def test_a_half_written_file_is_never_taken_and_is_removed(tmp_path):
    (tmp_path / ".spill-0000000003.tmp").write_bytes(b"PLSPILL1 partial")
    write_one(tmp_path, 4)
    files, damaged = spill_files.scan(str(tmp_path))
    assert list(files) == [4] and not damaged
    assert not (tmp_path / ".spill-0000000003.tmp").exists()


def test_a_failed_write_leaves_nothing(tmp_path):
    fd = segment(b"x" * 100, size=PAGE)
    try:
        with pytest.raises(ValueError):  # the second object lies past the segment's end
            spill_files.write_batch(str(tmp_path), 1, sources(fd, [(100, 0), (2 * PAGE, 0)]))
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == []


def test_dead_objects_stay_dead_after_a_scan(tmp_path):
    _, entries = write_one(tmp_path)
    spill_files.mark_dead(str(tmp_path), 1, entries[0])
    files, _ = spill_files.scan(str(tmp_path))
    assert [e.id for e in files[1][0]] == [entries[1].id]


def test_a_missing_or_short_file_is_a_damaged_read(tmp_path):
    path, entries = write_one(tmp_path)
    os.truncate(path, entries[0].offset + 5)
    with pytest.raises(SpillDamaged, match="shorter"):
        restore(tmp_path, 1, entries[0])
    path.unlink()
    with pytest.raises(SpillDamaged, match="gone"):
        restore(tmp_path, 1, entries[0])


def test_one_coordinator_per_directory(tmp_path):
    fd = spill_files.lock_directory(str(tmp_path / "d"))
    try:
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
        with pytest.raises(OSError, match="in use by another coordinator"):
            spill_files.lock_directory(str(tmp_path / "d"))
    finally:
        os.close(fd)
    os.close(spill_files.lock_directory(str(tmp_path / "d")))  # free again


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 700))
def test_parts_and_their_crcs_make_up_the_whole(data, size):
    import zlib

    pieces = spill_files.parts(len(data), size)
    assert sum(n for _, n in pieces) == len(data)
    assert all(0 < n <= size for _, n in pieces) or data == b""
    crc = 0
    for start, n in pieces:
        crc = spill_files.crc32_combine(crc, zlib.crc32(data[start : start + n]), n)
    assert crc == zlib.crc32(data)


def test_a_restore_in_parts_finds_a_flipped_byte_in_any_part(tmp_path):
    path, entries = write_one(tmp_path, data=50_000)
    entry = entries[0]
    fd = memfd.memfd_create("restore")
    os.ftruncate(fd, 1 << 16)
    try:
        crcs = [
            (spill_files.read_part(str(tmp_path), 1, entry, fd, 0, PAGE, s, n), n)
            for s, n in spill_files.parts(entry.length, 16_384)
        ]
        spill_files.check_parts(str(tmp_path), 1, entry, crcs)  # intact
        with open(path, "r+b") as f:
            f.seek(entry.offset + 40_000)  # in the third part
            f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
        crcs = [
            (spill_files.read_part(str(tmp_path), 1, entry, fd, 0, PAGE, s, n), n)
            for s, n in spill_files.parts(entry.length, 16_384)
        ]
        with pytest.raises(SpillDamaged, match="checksum"):
            spill_files.check_parts(str(tmp_path), 1, entry, crcs)
    finally:
        os.close(fd)
