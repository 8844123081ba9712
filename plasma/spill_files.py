"""Spill files (internal): sealed objects fused into self-describing, checksummed files.

A spill file holds one batch of objects written by :func:`write_batch`::

    MAGIC | payload 0 | payload 1 | ... | dead map | index | trailer

The index has one fixed-size record per object (id, sizes, node, create time, offset and
length of its payload, CRC-32 of the payload); the trailer (object count, CRC-32 of the
index, ``END``) comes last. The dead map is one byte per object, set by :func:`mark_dead`
when the object is deleted while others in the file live on, so a restart does not bring
it back. A batch is written to a hidden temporary name, fsynced, renamed into place and the
directory fsynced, so a file with a final name is complete: a crash leaves at most a
temporary file, which :func:`scan` removes. :func:`scan` also reports (and skips) a file
whose index or payloads do not check out; :func:`read_object` checks the payload's CRC
again as it reads, so damaged bytes are never served.

Payloads are copied through a bounded buffer between a segment's file descriptor (mapped
for the copy only) and the spill file, so the coordinator never keeps segments mapped.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass

from plasma.ids import ID_SIZE
from plasma.linux import memfd
from plasma.records import SpillEntry

__all__ = [
    "SpillDamaged",
    "SpillSource",
    "check_parts",
    "crc32_combine",
    "lock_directory",
    "mark_dead",
    "parts",
    "read_object",
    "read_part",
    "remove_file",
    "scan",
    "write_batch",
]

MAGIC = b"PLSPILL1"
END = b"PLSPEND1"
_TRAILER = struct.Struct("<QI4x8s")  # object count, index CRC-32, END
_RECORD = struct.Struct(f"<{ID_SIZE}sQQidQQI")  # a SpillEntry without its index
CHUNK = 8 << 20  # bytes copied per step
_WRITE = mmap.PROT_READ | mmap.PROT_WRITE
SMALL = 1 << 20  # objects below this are read with pread (a mapping costs more)
_NAME = re.compile(r"spill-(\d{10})\.plasma")
_TEMP = re.compile(r"\.spill-(\d{10})\.tmp")
LOCK_NAME = ".lock"


class SpillDamaged(Exception):
    """A spill file (or one payload in it) is missing, truncated or fails its checksum."""


@dataclass(slots=True)
class SpillSource:
    """Where an object to spill is: ``length`` bytes at ``offset`` of segment fd ``fd``."""

    id: bytes
    fd: int
    offset: int
    data_size: int
    metadata_size: int
    node: int
    create_time: float
    page_size: int  # of the segment: mappings start at a multiple of it


def file_name(file_id: int) -> str:
    return f"spill-{file_id:010d}.plasma"


def lock_directory(directory: str) -> int:
    """Create ``directory`` (0700) if needed and take its lock (an fd to keep open): one
    coordinator per spill directory. Raises OSError (EWOULDBLOCK) when another holds it."""
    import fcntl

    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(
                exc.errno, f"spill directory {directory} is in use by another coordinator"
            ) from None
        raise
    return fd


def write_batch(
    directory: str, file_id: int, sources: list[SpillSource]
) -> tuple[list[SpillEntry], int]:
    """Write the objects of ``sources`` into spill file ``file_id`` of ``directory``; return
    its index and its size. The file appears under its final name only once complete and
    synced; on any error (ENOSPC, EIO...) nothing is left behind and the OSError propagates."""
    temp = os.path.join(directory, f".spill-{file_id:010d}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        entries: list[SpillEntry] = []
        position = _write_all(fd, MAGIC, 0)
        for s in sources:
            length = s.data_size + s.metadata_size
            crc = 0
            if 0 < length < SMALL:
                data = os.pread(s.fd, length, s.offset)
                if len(data) != length:
                    raise ValueError(f"object {s.id.hex()} lies past its segment's end")
                crc = zlib.crc32(data)
                _write_all(fd, data, position)
            elif length:
                with memfd.mapped(s.fd, s.offset, length, s.page_size, mmap.PROT_READ) as view:
                    for lo in range(0, length, CHUNK):
                        with view[lo : lo + CHUNK] as chunk:
                            crc = zlib.crc32(chunk, crc)
                            _write_all(fd, chunk, position + lo)
            entries.append(
                SpillEntry(
                    s.id,
                    s.data_size,
                    s.metadata_size,
                    s.node,
                    s.create_time,
                    position,
                    length,
                    crc,
                    len(entries),
                )
            )
            position += length
        index = b"".join(_RECORD.pack(*_fields(e)) for e in entries)
        position = _write_all(fd, bytes(len(entries)) + index, position)
        size = _write_all(fd, _TRAILER.pack(len(entries), zlib.crc32(index), END), position)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(temp, os.path.join(directory, file_name(file_id)))
        _sync_directory(directory)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return entries, size


def _fields(e: SpillEntry) -> tuple:
    return (e.id, e.data_size, e.metadata_size, e.node, e.create_time, e.offset, e.length, e.crc)


def _dead_map_at(file_size: int, count: int) -> int:
    return file_size - _TRAILER.size - count * _RECORD.size - count


def mark_dead(directory: str, file_id: int, entry: SpillEntry) -> None:
    """Record in its file that ``entry`` was deleted, so :func:`scan` leaves it out (no
    fsync: a crash of the coordinator keeps the write; only a power loss may not)."""
    path = os.path.join(directory, file_name(file_id))
    fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        count = _TRAILER.unpack(os.pread(fd, _TRAILER.size, size - _TRAILER.size))[0]
        os.pwrite(fd, b"\x01", _dead_map_at(size, count) + entry.index)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview, position: int) -> int:
    with memoryview(data) as whole:
        done = 0
        while done < len(whole):
            with whole[done:] as rest:
                n = os.pwrite(fd, rest, position + done)
            done += n
    return position + done


def _sync_directory(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def read_object(
    directory: str, file_id: int, entry: SpillEntry, fd: int, offset: int, page_size: int
) -> None:
    """Read ``entry``'s payload from its spill file straight into ``offset`` of segment fd
    ``fd`` (memory only the caller's restore owns), checking its CRC-32: SpillDamaged when
    the file is gone, short or the bytes do not match (the caller must not serve them).
    :func:`read_part` and :func:`check_parts` do the same in parts, for parallel reads."""
    crc = read_part(directory, file_id, entry, fd, offset, page_size, 0, entry.length)
    check_parts(directory, file_id, entry, [(crc, entry.length)])


def parts(length: int, size: int) -> list[tuple[int, int]]:
    """``(start, length)`` of consecutive parts of at most ``size`` bytes covering
    ``length`` bytes (one empty part for an empty payload)."""
    return [(lo, min(size, length - lo)) for lo in range(0, length, size)] or [(0, 0)]


def read_part(
    directory: str,
    file_id: int,
    entry: SpillEntry,
    fd: int,
    offset: int,
    page_size: int,
    start: int,
    length: int,
    file_backed: bool = False,
) -> int:
    """Read bytes ``[start, start + length)`` of ``entry``'s payload into ``offset + start``
    of segment fd ``fd``; their CRC-32. SpillDamaged when the file is gone or short.
    ``file_backed``: the segment is a fallback file, written with pwrite, never mapped (a
    client could shrink it under the mapping)."""
    path = os.path.join(directory, file_name(file_id))
    try:
        src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SpillDamaged(f"spill file {path} is gone") from None
    crc = 0
    try:
        if os.fstat(src).st_size < entry.offset + entry.length:
            raise SpillDamaged(f"spill file {path} is shorter than its index says")
        if length and file_backed:
            for lo in range(0, length, CHUNK):
                want = min(CHUNK, length - lo)
                data = os.pread(src, want, entry.offset + start + lo)
                if len(data) != want:  # (a regular file reads short only at its end)
                    raise SpillDamaged(f"spill file {path} ends early")
                crc = zlib.crc32(data, crc)
                _write_all(fd, data, offset + start + lo)
        elif length:
            with memfd.mapped(fd, offset + start, length, page_size, _WRITE) as view:
                done = 0
                while done < length:
                    with view[done : done + CHUNK] as chunk:
                        n = os.preadv(src, [chunk], entry.offset + start + done)
                        if n == 0:
                            raise SpillDamaged(f"spill file {path} ends early")
                        crc = zlib.crc32(chunk[:n], crc)
                    done += n
    finally:
        os.close(src)
    return crc


def check_parts(
    directory: str, file_id: int, entry: SpillEntry, crcs: list[tuple[int, int]]
) -> None:
    """SpillDamaged unless the CRC-32s of consecutive parts (``(crc, length)``, as
    :func:`read_part` returned them) make up ``entry``'s."""
    crc = 0
    for part, length in crcs:
        crc = crc32_combine(crc, part, length)
    if crc != entry.crc:
        path = os.path.join(directory, file_name(file_id))
        raise SpillDamaged(f"object {entry.id.hex()} fails its checksum in {path}")


def crc32_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32 of ``a + b`` from ``crc32(a)``, ``crc32(b)`` and ``len(b)`` (zlib's
    crc32_combine; the operator for each length is computed once)."""
    return _times(_zeros_operator(length2), crc1) ^ crc2 if length2 else crc1


def _times(matrix: tuple[int, ...], vector: int) -> int:
    out = 0
    i = 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


@functools.lru_cache(maxsize=64)
def _zeros_operator(length: int) -> tuple[int, ...]:
    """The GF(2) operator that advances a CRC-32 over ``length`` zero bytes."""
    op = (0xEDB88320, *(1 << n for n in range(31)))  # one zero bit
    result = tuple(1 << n for n in range(32))  # identity
    bits = length * 8
    while bits:
        if bits & 1:
            result = tuple(_times(op, row) for row in result)
        bits >>= 1
        if bits:
            op = tuple(_times(op, row) for row in op)
    return result


def remove_file(directory: str, file_id: int) -> None:
    """Delete spill file ``file_id`` (no object in it is live any more)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, file_name(file_id)))


def scan(directory: str) -> tuple[dict[int, tuple[list[SpillEntry], int]], list[str]]:
    """The complete spill files of ``directory`` (file id -> (live entries, every payload
    checked; file size)) and a description of each file skipped as damaged. Temporary files
    of a write that never finished are removed."""
    files: dict[int, tuple[list[SpillEntry], int]] = {}
    problems: list[str] = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if _TEMP.fullmatch(name):
            os.unlink(path)
            continue
        match = _NAME.fullmatch(name)
        if match is None:
            continue
        try:
            files[int(match.group(1))] = (_check_file(path), os.stat(path).st_size)
        except SpillDamaged as exc:
            problems.append(str(exc))
    return files, problems


def _check_file(path: str) -> list[SpillEntry]:
    """The live entries of a complete spill file, every payload's checksum verified."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < len(MAGIC) + _TRAILER.size or f.read(len(MAGIC)) != MAGIC:
            raise SpillDamaged(f"{path}: not a spill file (or truncated)")
        f.seek(size - _TRAILER.size)
        count, index_crc, end = _TRAILER.unpack(f.read(_TRAILER.size))
        dead_at = _dead_map_at(size, count) if end == END else -1
        if dead_at < len(MAGIC):
            raise SpillDamaged(f"{path}: no valid trailer (truncated?)")
        f.seek(dead_at)
        dead = f.read(count)
        index = f.read(count * _RECORD.size)
        if zlib.crc32(index) != index_crc:
            raise SpillDamaged(f"{path}: its index fails its checksum")
        entries = []
        for i, fields in enumerate(_RECORD.iter_unpack(index)):
            e = SpillEntry(*fields)
            e.index = i
            if e.offset < len(MAGIC) or e.offset + e.length > dead_at:
                raise SpillDamaged(f"{path}: object {e.id.hex()} lies outside the payloads")
            if dead[i]:
                continue
            f.seek(e.offset)
            crc = 0
            for lo in range(0, e.length, CHUNK):
                crc = zlib.crc32(f.read(min(CHUNK, e.length - lo)), crc)
            if crc != e.crc:
                raise SpillDamaged(f"{path}: object {e.id.hex()} fails its checksum")
            entries.append(e)
    return entries
