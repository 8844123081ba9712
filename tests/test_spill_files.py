"""Spill files: the round trip, and every way a file can be incomplete or damaged."""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from crc32c import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from plasma import spill_files
from plasma.errors import BadRequest
from plasma.linux import memfd
from plasma.spill_files import SpillDamaged, SpillDirectory, SpillSource

PAGE = 4096


@contextlib.contextmanager
def opened(path: Path) -> Iterator[SpillDirectory]:
    directory = spill_files.open_directory(str(path))
    try:
        yield directory
    finally:
        directory.close()


def scan(path: Path) -> tuple[dict, list[str]]:
    with opened(path) as directory:
        return spill_files.scan(directory)


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


def restore(path: Path, file_id: int, entry, part: int = 0, file_backed: bool = False) -> bytes:
    """Read ``entry`` back (in parts of ``part`` bytes, 0: whole) into a fresh memfd."""
    fd = memfd.memfd_create("restore")
    try:
        os.ftruncate(fd, max(entry.length, 1))
        with opened(path) as directory:
            if not part:
                spill_files.read_object(directory, file_id, entry, fd, 0, PAGE)
            else:
                crcs = [
                    (
                        spill_files.read_part(
                            directory, file_id, entry, fd, 0, PAGE, s, n, file_backed
                        ),
                        n,
                    )
                    for s, n in spill_files.parts(entry.length, part)
                ]
                spill_files.check_parts(directory, file_id, entry, crcs)
        return os.pread(fd, entry.length, 0)
    finally:
        os.close(fd)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 300)), min_size=1, max_size=6),
    st.sampled_from([0, 1000, 4096]),
    st.booleans(),
    st.sampled_from([None, 1000, 4096]),
)
def test_what_is_written_comes_back_byte_for_byte(
    tmp_path_factory, sizes, part, file_backed, chunk
):
    """Whole, or in parts (up to six of them: objects of several parts), mapped or (a
    fallback file's target) written with pwrite; with ``chunk``, every object is written
    through a mapping and copied in steps of ``chunk`` bytes (as objects over 8 MiB are)."""
    directory = tmp_path_factory.mktemp("spill")
    payload = os.urandom(1 << 16)
    fd = segment(payload)
    steps = (
        contextlib.nullcontext()
        if chunk is None
        else mock.patch.multiple(spill_files, SMALL=1, CHUNK=chunk)
    )
    with steps:
        try:
            srcs = sources(fd, sizes)
            with opened(directory) as d:
                entries, size = spill_files.write_batch(d, 7, srcs)
        finally:
            os.close(fd)
        assert size == os.path.getsize(directory / "spill-0000000007.plasma")
        files, damaged = scan(directory)
        assert not damaged and files[7] == (entries, size)
        for s, e in zip(srcs, entries, strict=True):
            assert (e.id, e.data_size, e.metadata_size, e.node) == (
                s.id,
                s.data_size,
                s.metadata_size,
                s.node,
            )
            got = restore(directory, 7, e, part, file_backed)
            assert got == payload[s.offset : s.offset + e.length]


def test_objects_of_many_parts_come_back(tmp_path):
    _, entries = write_one(tmp_path, data=50_000)
    assert len(spill_files.parts(entries[0].length, 4096)) == 13
    whole = restore(tmp_path, 1, entries[0])
    assert restore(tmp_path, 1, entries[0], part=4096) == whole
    assert restore(tmp_path, 1, entries[0], part=4096, file_backed=True) == whole


def write_one(directory: Path, file_id: int = 1, data: int = 10_000) -> tuple[Path, list]:
    fd = segment(os.urandom(data))
    try:
        with opened(directory) as d:
            entries, _ = spill_files.write_batch(d, file_id, sources(fd, [(data, 0), (100, 5)]))
    finally:
        os.close(fd)
    return directory / spill_files.file_name(file_id), entries


def test_a_truncated_file_is_reported_and_skipped(tmp_path):
    path, _ = write_one(tmp_path)
    os.truncate(path, path.stat().st_size - 10)
    files, damaged = scan(tmp_path)
    assert not files and "trailer" in damaged[0]


def test_a_flipped_payload_byte_is_caught_by_scan_and_by_read(tmp_path):
    path, entries = write_one(tmp_path)
    with open(path, "r+b") as f:
        f.seek(entries[0].offset + 17)
        byte = f.read(1)
        f.seek(entries[0].offset + 17)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SpillDamaged, match="checksum"):
        restore(tmp_path, 1, entries[0])
    assert restore(tmp_path, 1, entries[1])  # the other object is fine
    files, damaged = scan(tmp_path)
    # the damaged object is quarantined (marked dead: never served), the rest kept
    assert [e.id for e in files[1][0]] == [entries[1].id]
    assert len(damaged) == 1 and "quarantined" in damaged[0] and "checksum" in damaged[0]
    files, damaged = scan(tmp_path)  # marked dead in the file: not again
    assert [e.id for e in files[1][0]] == [entries[1].id] and not damaged


def rewrite_entry(path: Path, index: int, **changes: object) -> None:
    """Change fields of one index record and fix the index's checksum (a file whose index
    is consistent but lies)."""
    data = bytearray(path.read_bytes())
    count, _, end = spill_files._TRAILER.unpack_from(data, len(data) - spill_files._TRAILER.size)
    at = spill_files._dead_map_at(len(data), count) + count
    size = spill_files._RECORD.size
    fields = list(spill_files._RECORD.unpack_from(data, at + index * size))
    names = ["id", "data_size", "metadata_size", "node", "create_time", "offset", "length", "crc"]
    for name, value in changes.items():
        fields[names.index(name)] = value
    spill_files._RECORD.pack_into(data, at + index * size, *fields)
    index_crc = crc32c(bytes(data[at : at + count * size]))
    spill_files._TRAILER.pack_into(
        data, len(data) - spill_files._TRAILER.size, count, index_crc, end
    )
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"data_size": 5}, "do not add up"),  # finding 11: sizes that disagree with the length
        ({"metadata_size": 1 << 40}, "do not add up"),
        ({"offset": 2}, "outside"),
        ({"length": 1 << 40, "data_size": 1 << 40}, "outside"),
        ({"create_time": float("nan")}, "out of range"),
    ],
)
def test_an_index_entry_that_does_not_add_up_is_quarantined(tmp_path, changes, why):
    path, entries = write_one(tmp_path)
    rewrite_entry(path, 0, **changes)
    files, damaged = scan(tmp_path)
    assert [e.id for e in files[1][0]] == [entries[1].id]
    assert len(damaged) == 1 and "quarantined" in damaged[0] and why in damaged[0]


def test_an_id_twice_in_one_file_is_served_once(tmp_path):
    path, entries = write_one(tmp_path)
    rewrite_entry(path, 1, id=entries[0].id)
    files, damaged = scan(tmp_path)
    assert [e.index for e in files[1][0]] == [0] and "twice" in damaged[0]


def test_a_damaged_index_is_reported(tmp_path):
    path, _ = write_one(tmp_path)
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size - 40)
        f.write(b"\xff")
    files, damaged = scan(tmp_path)
    assert not files and "index" in damaged[0]


def test_a_half_written_file_is_never_taken_and_is_removed(tmp_path):
    (tmp_path / ".spill-0000000003.tmp").write_bytes(b"PLSPILL2 partial")
    write_one(tmp_path, 4)
    files, damaged = scan(tmp_path)
    assert list(files) == [4] and not damaged
    assert not (tmp_path / ".spill-0000000003.tmp").exists()


def test_a_failed_write_leaves_nothing(tmp_path):
    fd = segment(b"x" * 100, size=PAGE)
    try:
        # the second object lies past the segment's end
        with pytest.raises(ValueError), opened(tmp_path) as directory:
            spill_files.write_batch(directory, 1, sources(fd, [(100, 0), (2 * PAGE, 0)]))
    finally:
        os.close(fd)
    assert os.listdir(tmp_path) == [spill_files.LOCK_NAME]


def test_dead_objects_stay_dead_after_a_scan(tmp_path):
    _, entries = write_one(tmp_path)
    with opened(tmp_path) as directory:
        spill_files.mark_dead(directory, 1, [entries[0]])
    files, _ = scan(tmp_path)
    assert [e.id for e in files[1][0]] == [entries[1].id]


def test_a_missing_or_short_file_is_a_damaged_read(tmp_path):
    path, entries = write_one(tmp_path)
    os.truncate(path, entries[0].offset + 5)
    with pytest.raises(SpillDamaged, match="shorter"):
        restore(tmp_path, 1, entries[0])
    path.unlink()
    with pytest.raises(SpillDamaged, match="gone"):
        restore(tmp_path, 1, entries[0])


def test_a_read_from_the_page_cache_only_never_waits_for_the_disk(tmp_path):
    """``cached_only`` (a restore on the event loop) reads what the page cache holds and
    refuses, with BlockingIOError, what it would have to wait for the disk for."""
    path, entries = write_one(tmp_path, data=200_000)
    entry = entries[0]
    fd = memfd.memfd_create("restore")
    try:
        os.ftruncate(fd, entry.length)
        with opened(tmp_path) as directory:
            crc = spill_files.read_part(
                directory, 1, entry, fd, 0, PAGE, 0, entry.length, cached_only=True
            )
            assert crc == entry.crc
            assert (
                os.pread(fd, entry.length, 0) == path.read_bytes()[entry.offset :][: entry.length]
            )
            flags: list[int] = []  # every read of it asks not to wait
            real = os.preadv
            with mock.patch.object(os, "preadv", lambda *a: flags.append(a[3]) or real(*a)):
                spill_files.read_part(
                    directory, 1, entry, fd, 0, PAGE, 0, entry.length, cached_only=True
                )
            assert flags and set(flags) == {os.RWF_NOWAIT}
            with open(path, "rb") as f:  # (written synced: clean pages, which can be dropped)
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            try:
                spill_files.read_part(
                    directory, 1, entry, fd, 0, PAGE, 0, entry.length, cached_only=True
                )
            except BlockingIOError:
                pass
            else:
                pytest.skip("this file system kept the pages (or serves RWF_NOWAIT reads anyway)")
    finally:
        os.close(fd)


def test_one_coordinator_per_directory(tmp_path):
    with opened(tmp_path / "d"):
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
        with pytest.raises(OSError, match="in use by another coordinator"):
            spill_files.open_directory(str(tmp_path / "d"))
    spill_files.open_directory(str(tmp_path / "d")).close()  # free again


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a directory of another uid")
def test_a_directory_another_user_owns_is_refused(tmp_path):
    """Finding 7: another local user pre-creates the spill directory (mode 0777) and plants
    files in it: the coordinator refuses it rather than serving them."""
    squat = tmp_path / "squat"
    squat.mkdir()
    os.chown(squat, 65534, 65534)
    os.chmod(squat, 0o777)
    with pytest.raises(BadRequest, match="owned by uid 65534"):
        spill_files.open_directory(str(squat))


@pytest.mark.parametrize("mode", [0o770, 0o777, 0o722])
def test_a_directory_others_may_write_is_refused(tmp_path, mode):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    with pytest.raises(BadRequest, match="may be written by other users"):
        spill_files.open_directory(str(shared))


def test_a_symbolic_link_is_never_followed(tmp_path):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(BadRequest, match="symbolic link"):
        spill_files.open_directory(str(tmp_path / "link"))
    path, entries = write_one(real)
    os.rename(path, real / "elsewhere")
    os.symlink(real / "elsewhere", path)  # a planted link where a spill file would be
    files, damaged = scan(real)
    assert not files and "cannot open it" in damaged[0]
    with pytest.raises((SpillDamaged, OSError)):
        restore(real, 1, entries[0])


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000), st.integers(1, 700))
def test_parts_and_their_crcs_make_up_the_whole(data, size):
    pieces = spill_files.parts(len(data), size)
    assert sum(n for _, n in pieces) == len(data)
    assert all(0 < n <= size for _, n in pieces) or data == b""
    crc = 0
    for start, n in pieces:
        crc = spill_files.crc32c_combine(crc, crc32c(data[start : start + n]), n)
    assert crc == crc32c(data)


def test_the_checksum_is_crc32c():
    """The check value of the CRC-32C (Castagnoli) catalogue entry: a file's checksums are
    what the format says, whichever implementation computes them."""
    assert crc32c(b"123456789") == 0xE3069283


def as_version_1(path: Path) -> None:
    """Rewrite a spill file as a previous coordinator wrote it: format 1, zlib's CRC-32 of
    every payload and of the index."""
    data = bytearray(path.read_bytes())
    trailer = spill_files._TRAILER
    count, _, _ = trailer.unpack_from(data, len(data) - trailer.size)
    at = spill_files._dead_map_at(len(data), count) + count
    size = spill_files._RECORD.size
    for i in range(count):
        fields = list(spill_files._RECORD.unpack_from(data, at + i * size))
        offset, length = fields[5], fields[6]
        fields[7] = zlib.crc32(bytes(data[offset : offset + length]))
        spill_files._RECORD.pack_into(data, at + i * size, *fields)
    index_crc = zlib.crc32(bytes(data[at : at + count * size]))
    data[: len(spill_files.MAGIC)] = b"PLSPILL1"
    trailer.pack_into(data, len(data) - trailer.size, count, index_crc, b"PLSPEND1")
    path.write_bytes(bytes(data))


def test_a_file_a_previous_coordinator_wrote_in_format_1_is_adopted(tmp_path):
    """Format 1 (zlib CRC-32) files are verified with CRC-32 at adoption and their objects
    come back byte for byte, checked against the CRC-32C the scan computed: in one piece
    and in parts (a parallel restore)."""
    path, written = write_one(tmp_path, data=50_000)
    payloads = [path.read_bytes()[e.offset : e.offset + e.length] for e in written]
    as_version_1(path)
    assert path.read_bytes()[:8] == b"PLSPILL1"
    files, damaged = scan(tmp_path)
    assert not damaged
    entries = files[1][0]
    assert [e.crc for e in entries] == [crc32c(p) for p in payloads]
    for entry, payload in zip(entries, payloads, strict=True):
        assert restore(tmp_path, 1, entry) == payload
        assert restore(tmp_path, 1, entry, part=4096) == payload
    with opened(tmp_path) as directory:  # deletions are recorded in it as in format 2
        spill_files.mark_dead(directory, 1, [entries[0]])
    assert [e.id for e in scan(tmp_path)[0][1][0]] == [entries[1].id]


def test_a_damaged_payload_of_a_format_1_file_is_quarantined(tmp_path):
    path, written = write_one(tmp_path)
    as_version_1(path)
    with open(path, "r+b") as f:
        f.seek(written[1].offset)
        first = f.read(1)
        f.seek(written[1].offset)
        f.write(bytes([first[0] ^ 0xFF]))
    files, damaged = scan(tmp_path)
    assert [e.id for e in files[1][0]] == [written[0].id]
    assert len(damaged) == 1 and "fails its checksum" in damaged[0]


def test_a_file_of_a_later_format_is_reported_and_not_served(tmp_path):
    path, _ = write_one(tmp_path)
    data = bytearray(path.read_bytes())
    data[7:8] = b"3"
    path.write_bytes(bytes(data))
    files, damaged = scan(tmp_path)
    assert not files
    assert "format '3' is not one this plasma-coord reads (1 to 2)" in damaged[0]
    assert path.exists()  # left for the version that wrote it


@pytest.mark.parametrize("sync", [True, False])
def test_sync_decides_whether_spill_files_and_deletions_are_fsynced(tmp_path, sync):
    """``serve --spill-survives reboot`` fsyncs the file, then the directory after the
    rename, and every deletion recorded; ``crash`` (the default) none of them."""
    fd = segment(os.urandom(3000))
    synced: list[int] = []
    real_fsync = os.fsync
    try:
        with (
            mock.patch.object(os, "fsync", lambda f: synced.append(f) or real_fsync(f)),
            opened(tmp_path) as directory,
        ):
            entries, _ = spill_files.write_batch(
                directory, 1, sources(fd, [(1000, 0), (500, 0)]), sync=sync
            )
            assert len(synced) == (2 if sync else 0) and (not sync or synced[1] == directory.fd)
            spill_files.mark_dead(directory, 1, [entries[0]], sync=sync)
            spill_files.remove_file(directory, 1, sync=sync)
    finally:
        os.close(fd)
    assert len(synced) == (4 if sync else 0)
    assert not (tmp_path / "spill-0000000001.plasma").exists()


def test_a_restore_in_parts_finds_a_flipped_byte_in_any_part(tmp_path):
    path, entries = write_one(tmp_path, data=50_000)
    entry = entries[0]
    fd = memfd.memfd_create("restore")
    os.ftruncate(fd, 1 << 16)
    try:
        with opened(tmp_path) as directory:
            crcs = [
                (spill_files.read_part(directory, 1, entry, fd, 0, PAGE, s, n), n)
                for s, n in spill_files.parts(entry.length, 16_384)
            ]
            spill_files.check_parts(directory, 1, entry, crcs)  # intact
        with open(path, "r+b") as f:
            f.seek(entry.offset + 40_000)  # in the third part
            f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
        with opened(tmp_path) as directory:
            crcs = [
                (spill_files.read_part(directory, 1, entry, fd, 0, PAGE, s, n), n)
                for s, n in spill_files.parts(entry.length, 16_384)
            ]
            with pytest.raises(SpillDamaged, match="checksum"):
                spill_files.check_parts(directory, 1, entry, crcs)
    finally:
        os.close(fd)


def test_deletions_are_synced(tmp_path, monkeypatch):
    """Finding 11: marking a deleted object dead, or removing an emptied file, was not
    synced: after a power loss the deleted objects could come back."""
    _, entries = write_one(tmp_path)
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    with opened(tmp_path) as directory:
        spill_files.mark_dead(directory, 1, [entries[0]])
        assert len(synced) == 1  # the file
        spill_files.remove_file(directory, 1)
        assert synced[-1] == directory.fd  # the directory
