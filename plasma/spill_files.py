"""Spill files (internal): sealed objects fused into self-describing, checksummed files.

A spill file holds one batch of objects written by :func:`write_batch`::

    MAGIC | payload 0 | payload 1 | ... | dead map | index | trailer

The index has one fixed-size record per object (id, sizes, node, create time, offset and
length of its payload, checksum of the payload); the trailer (object count, checksum of the
index, ``END``) comes last. The dead map is one byte per object, set by :func:`mark_dead`
when the object is deleted while others in the file live on, so a restart does not bring
it back. A batch is written to a hidden temporary name and renamed into place once
complete, so a file with a final name is complete: a coordinator killed mid-write leaves at
most a temporary file, which :func:`scan` removes. With ``sync`` (``serve --spill-survives
reboot``) the file and then the directory are fsynced before the rename counts, so that
holds across a power loss too; without it the page cache holds the bytes, which outlives
the coordinator but not the machine (a file torn by a power loss fails its checksums).
:func:`scan` also reports (and skips) a file whose index or payloads do not check out;
:func:`read_object` checks the payload's checksum again as it reads, so damaged bytes are
never served.

Format versions (the 8th byte of ``MAGIC`` and ``END``): 2 checksums with CRC-32C
(Castagnoli: the ``crc32c`` package, in hardware where the CPU has it, ~20 GB/s against
zlib's CRC-32 at 2-4); 1, written before, with zlib's CRC-32. A version 1 file left by a
previous coordinator is read: :func:`scan` verifies it with CRC-32 and hands back entries
carrying the CRC-32C of the same bytes, so everything after adoption speaks CRC-32C; the
file itself is never rewritten. A file of a later version is reported and not served.

Payloads are written from a segment's file descriptor (mapped for the copy only) and read
back either into a map the caller keeps (:func:`read_into`: the coordinator's restores, see
:meth:`plasma.segments.Segment.mapping`) or through a descriptor (:func:`read_part`).

The directory is the coordinator's alone (:func:`open_directory`, see
:mod:`plasma.linux.dirs`): every file is opened relative to its descriptor with
``O_NOFOLLOW``, and only regular files are read.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
import mmap
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from crc32c import crc32c

from plasma.ids import ID_SIZE
from plasma.linux import memfd
from plasma.linux.dirs import NOFOLLOW, open_private_directory
from plasma.records import SpillEntry

__all__ = [
    "SpillDamaged",
    "SpillDirectory",
    "SpillSource",
    "check_parts",
    "crc32c_combine",
    "mark_dead",
    "open_directory",
    "parts",
    "read_into",
    "read_object",
    "read_part",
    "remove_file",
    "scan",
    "write_batch",
]

VERSION = 2
MAGIC = b"PLSPILL2"
END = b"PLSPEND2"
Checksum = Callable[[bytes, int], int]  # (data, running value) -> running value
# earlier versions read: MAGIC -> (END, checksum)
_LEGACY: dict[bytes, tuple[bytes, Checksum]] = {b"PLSPILL1": (b"PLSPEND1", zlib.crc32)}
_TRAILER = struct.Struct("<QI4x8s")  # object count, index checksum, END
_RECORD = struct.Struct(f"<{ID_SIZE}sQQidQQI")  # a SpillEntry without its index
CHUNK = 8 << 20  # bytes copied per step
_WRITE = mmap.PROT_READ | mmap.PROT_WRITE
CRC_CHUNK = 1 << 20  # bytes read per call of a restore (then checksummed while in cache)
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


@dataclass(slots=True)
class SpillDirectory:
    """A spill directory, open and locked: ``path`` (for messages), ``fd`` (every file is
    opened relative to it) and the lock's descriptor."""

    path: str
    fd: int
    lock: int

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        return os.open(name, flags | NOFOLLOW, mode, dir_fd=self.fd)

    def name(self, file_id: int) -> str:
        """The path of spill file ``file_id`` (for messages)."""
        return os.path.join(self.path, file_name(file_id))

    def close(self) -> None:
        os.close(self.lock)
        os.close(self.fd)


def open_directory(path: str) -> SpillDirectory:
    """Open spill directory ``path`` (created 0700 if needed; refused unless it is ours
    alone, see :mod:`plasma.linux.dirs`) and take its lock: one coordinator per spill
    directory. Raises OSError (EWOULDBLOCK) when another holds it."""
    import fcntl

    fd = open_private_directory(path, "--spill-dir")
    try:
        lock = os.open(LOCK_NAME, os.O_RDWR | os.O_CREAT | NOFOLLOW, 0o600, dir_fd=fd)
    except BaseException:
        os.close(fd)
        raise
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(lock)
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise OSError(
                exc.errno, f"spill directory {path} is in use by another coordinator"
            ) from None
        raise
    return SpillDirectory(path, fd, lock)


def write_batch(
    directory: SpillDirectory, file_id: int, sources: list[SpillSource], *, sync: bool = True
) -> tuple[list[SpillEntry], int]:
    """Write the objects of ``sources`` into spill file ``file_id`` of ``directory``; return
    its index and its size. The file appears under its final name only once complete (and,
    with ``sync``, on disk: file and directory fsynced); on any error (ENOSPC, EIO...)
    nothing is left behind and the OSError propagates."""
    temp = f".spill-{file_id:010d}.tmp"
    fd = directory.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
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
                crc = crc32c(data)
                _write_all(fd, data, position)
            elif length:
                with memfd.mapped(s.fd, s.offset, length, s.page_size, mmap.PROT_READ) as view:
                    for lo in range(0, length, CHUNK):
                        with view[lo : lo + CHUNK] as chunk:
                            crc = crc32c(chunk, crc)
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
        size = _write_all(fd, _TRAILER.pack(len(entries), crc32c(index), END), position)
        if sync:
            os.fsync(fd)
        os.close(fd)
        fd = -1
        os.rename(temp, file_name(file_id), src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
        if sync:
            os.fsync(directory.fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=directory.fd)
        raise
    return entries, size


def _fields(e: SpillEntry) -> tuple:
    return (e.id, e.data_size, e.metadata_size, e.node, e.create_time, e.offset, e.length, e.crc)


def _dead_map_at(file_size: int, count: int) -> int:
    return file_size - _TRAILER.size - count * _RECORD.size - count


def mark_dead(
    directory: SpillDirectory, file_id: int, entries: list[SpillEntry], *, sync: bool = True
) -> None:
    """Record in its file that ``entries`` were deleted, so :func:`scan` leaves them out;
    with ``sync`` synced, so a deleted object does not come back after a power loss either."""
    fd = directory.open(file_name(file_id), os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        count = _TRAILER.unpack(os.pread(fd, _TRAILER.size, size - _TRAILER.size))[0]
        dead_at = _dead_map_at(size, count)
        for entry in entries:
            if not 0 <= entry.index < count:
                raise SpillDamaged(f"{directory.name(file_id)} has no object {entry.index}")
            os.pwrite(fd, b"\x01", dead_at + entry.index)
        if sync:
            os.fsync(fd)
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


def read_object(
    directory: SpillDirectory,
    file_id: int,
    entry: SpillEntry,
    fd: int,
    offset: int,
    page_size: int,
) -> None:
    """Read ``entry``'s payload from its spill file straight into ``offset`` of segment fd
    ``fd`` (memory only the caller's restore owns), checking its CRC-32C: SpillDamaged when
    the file is gone, short or the bytes do not match (the caller must not serve them).
    :func:`read_part` and :func:`check_parts` do the same in parts, for parallel reads."""
    crc = read_part(directory, file_id, entry, fd, offset, page_size, 0, entry.length)
    check_parts(directory, file_id, entry, [(crc, entry.length)])


def parts(length: int, size: int) -> list[tuple[int, int]]:
    """``(start, length)`` of consecutive parts of at most ``size`` bytes covering
    ``length`` bytes (one empty part for an empty payload)."""
    return [(lo, min(size, length - lo)) for lo in range(0, length, size)] or [(0, 0)]


def read_part(
    directory: SpillDirectory,
    file_id: int,
    entry: SpillEntry,
    fd: int,
    offset: int,
    page_size: int,
    start: int,
    length: int,
    file_backed: bool = False,
    *,
    cached_only: bool = False,
) -> int:
    """Read bytes ``[start, start + length)`` of ``entry``'s payload into ``offset + start``
    of segment fd ``fd``; their CRC-32C. SpillDamaged when the file is gone or short.
    ``file_backed``: the segment is a fallback file, written with pwrite, never mapped (a
    client could shrink it under the mapping). ``cached_only``: read only what the page
    cache holds (``RWF_NOWAIT``), raising BlockingIOError rather than waiting for the disk
    (then read it again without), so that a caller that must not block may try."""
    if length and not file_backed:
        with memfd.mapped(fd, offset + start, length, page_size, _WRITE) as view:
            return read_into(directory, file_id, entry, view, start, cached_only=cached_only)
    src = _open_payload(directory, file_id, entry)
    crc = 0
    try:
        for lo in range(0, length, CHUNK):
            want = min(CHUNK, length - lo)
            data = os.pread(src, want, entry.offset + start + lo)
            if len(data) != want:  # (a regular file reads short only at its end)
                raise SpillDamaged(f"spill file {directory.name(file_id)} ends early")
            crc = crc32c(data, crc)
            _write_all(fd, data, offset + start + lo)
    finally:
        os.close(src)
    return crc


def read_into(
    directory: SpillDirectory,
    file_id: int,
    entry: SpillEntry,
    view: memoryview,
    start: int = 0,
    *,
    cached_only: bool = False,
) -> int:
    """Read bytes ``[start, start + len(view))`` of ``entry``'s payload into ``view`` (a map
    of the memory the restore owns, kept by the caller); their CRC-32C, computed a
    ``CRC_CHUNK`` at a time right after it was read, while the bytes are in the CPU's cache.
    SpillDamaged when the file is gone or short; ``cached_only`` as for :func:`read_part`."""
    src = _open_payload(directory, file_id, entry)
    crc = 0
    flags = os.RWF_NOWAIT if cached_only else 0
    try:
        length = len(view)
        done = 0
        while done < length:
            with view[done : done + CRC_CHUNK] as chunk:
                n = os.preadv(src, [chunk], entry.offset + start + done, flags)
                if n == 0:
                    raise SpillDamaged(f"spill file {directory.name(file_id)} ends early")
                with chunk[:n] as done_now:
                    crc = crc32c(done_now, crc)
            done += n
    finally:
        os.close(src)
    return crc


def _open_payload(directory: SpillDirectory, file_id: int, entry: SpillEntry) -> int:
    """Spill file ``file_id`` opened for reading, checked to hold ``entry``'s payload."""
    path = directory.name(file_id)
    try:
        src = directory.open(file_name(file_id), os.O_RDONLY)
    except FileNotFoundError:
        raise SpillDamaged(f"spill file {path} is gone") from None
    try:
        if os.fstat(src).st_size < entry.offset + entry.length:
            raise SpillDamaged(f"spill file {path} is shorter than its index says")
    except BaseException:
        os.close(src)
        raise
    return src


def check_parts(
    directory: SpillDirectory, file_id: int, entry: SpillEntry, crcs: list[tuple[int, int]]
) -> None:
    """SpillDamaged unless the CRC-32Cs of consecutive parts (``(crc, length)``, as
    :func:`read_part` returned them) make up ``entry``'s."""
    crc = 0
    for part, length in crcs:
        crc = crc32c_combine(crc, part, length)
    if crc != entry.crc:
        path = directory.name(file_id)
        raise SpillDamaged(f"object {entry.id.hex()} fails its checksum in {path}")


def crc32c_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC-32C of ``a + b`` from ``crc32c(a)``, ``crc32c(b)`` and ``len(b)`` (zlib's
    crc32_combine for the Castagnoli polynomial; the operator for each length is computed
    once)."""
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
    """The GF(2) operator that advances a CRC-32C over ``length`` zero bytes."""
    op = (0x82F63B78, *(1 << n for n in range(31)))  # one zero bit (reflected polynomial)
    result = tuple(1 << n for n in range(32))  # identity
    bits = length * 8
    while bits:
        if bits & 1:
            result = tuple(_times(op, row) for row in result)
        bits >>= 1
        if bits:
            op = tuple(_times(op, row) for row in op)
    return result


def remove_file(directory: SpillDirectory, file_id: int, *, sync: bool = True) -> None:
    """Delete spill file ``file_id`` (no object in it is live any more); with ``sync``
    synced: it does not come back after a power loss."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(file_name(file_id), dir_fd=directory.fd)
    if sync:
        os.fsync(directory.fd)


def scan(directory: SpillDirectory) -> tuple[dict[int, tuple[list[SpillEntry], int]], list[str]]:
    """The complete spill files of ``directory`` (file id -> (live entries, every payload
    checked; file size)) and a description of each problem: a file skipped as damaged (its
    trailer or index), an object quarantined (its index entry does not add up, or its
    payload fails its checksum: marked dead in its file, never served; the rest of the file
    is kept). Temporary files of a write that never finished are removed."""
    files: dict[int, tuple[list[SpillEntry], int]] = {}
    problems: list[str] = []
    for name in sorted(os.listdir(directory.fd)):
        if _TEMP.fullmatch(name):
            os.unlink(name, dir_fd=directory.fd)
            continue
        match = _NAME.fullmatch(name)
        if match is None:
            continue
        file_id = int(match.group(1))
        path = directory.name(file_id)
        try:
            fd = directory.open(name, os.O_RDONLY)
        except OSError as exc:  # (ELOOP: a symbolic link)
            problems.append(f"{path}: cannot open it: {exc.strerror}")
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                problems.append(f"{path}: not a regular file")
                continue
            entries, bad = _check_file(fd, path, info.st_size)
        except SpillDamaged as exc:
            problems.append(str(exc))
            continue
        finally:
            os.close(fd)
        if bad:
            problems += [f"{path}: object {e.id.hex()} quarantined: {why}" for e, why in bad]
            try:
                mark_dead(directory, file_id, [e for e, _ in bad])
            except (OSError, SpillDamaged) as exc:
                problems.append(f"{path}: could not mark its quarantined objects dead: {exc}")
        files[file_id] = (entries, info.st_size)
    return files, problems


def _check_file(
    fd: int, path: str, size: int
) -> tuple[list[SpillEntry], list[tuple[SpillEntry, str]]]:
    """The live entries of a complete spill file whose payloads check out (their ``crc`` the
    CRC-32C, whatever the file's version), and those that do not (with why); SpillDamaged
    when the file as a whole cannot be read."""
    magic = os.pread(fd, len(MAGIC), 0) if size >= len(MAGIC) + _TRAILER.size else b""
    checksum: Checksum
    if magic == MAGIC:
        want_end, checksum = END, crc32c
    elif magic in _LEGACY:
        want_end, checksum = _LEGACY[magic]
    elif magic[:-1] == MAGIC[:-1]:
        raise SpillDamaged(
            f"{path}: spill file format {magic[-1:].decode(errors='replace')!r} is not one this "
            f"plasma-coord reads (1 to {VERSION}): written by a newer version? (not served; "
            "restore it with that version, or remove the file)"
        )
    else:
        raise SpillDamaged(f"{path}: not a spill file (or truncated)")
    count, index_crc, end = _TRAILER.unpack(os.pread(fd, _TRAILER.size, size - _TRAILER.size))
    dead_at = _dead_map_at(size, count) if end == want_end else -1
    if dead_at < len(MAGIC):
        raise SpillDamaged(f"{path}: no valid trailer (truncated?)")
    dead = os.pread(fd, count, dead_at)
    index = os.pread(fd, count * _RECORD.size, dead_at + count)
    if checksum(index, 0) != index_crc:
        raise SpillDamaged(f"{path}: its index fails its checksum")
    entries: list[SpillEntry] = []
    bad: list[tuple[SpillEntry, str]] = []
    seen: set[bytes] = set()
    for i, fields in enumerate(_RECORD.iter_unpack(index)):
        e = SpillEntry(*fields)
        e.index = i
        if dead[i]:
            continue
        why = _entry_problem(e, dead_at, seen) or _payload_problem(fd, e, checksum)
        if why:
            bad.append((e, why))
        else:
            seen.add(e.id)
            entries.append(e)
    return entries, bad


def _entry_problem(e: SpillEntry, payloads_end: int, seen: set[bytes]) -> str:
    """Why an index entry cannot be trusted ("" when it can)."""
    if e.data_size < 0 or e.metadata_size < 0 or e.length != e.data_size + e.metadata_size:
        return f"its sizes ({e.data_size} + {e.metadata_size}) do not add up to {e.length}"
    if e.offset < len(MAGIC) or e.offset + e.length > payloads_end:
        return "it lies outside the payloads"
    if not 0 <= e.node <= 0xFFFF or not math.isfinite(e.create_time):
        return "its node or create time is out of range"
    if e.id in seen:
        return "its id is in the file twice"
    return ""


def _payload_problem(fd: int, e: SpillEntry, checksum: Checksum) -> str:
    """Why ``e``'s payload cannot be served ("" when it checks out against ``checksum``, the
    file's); ``e.crc`` becomes its CRC-32C (the same, unless the file is of version 1)."""
    crc = castagnoli = 0
    for lo in range(0, e.length, CHUNK):
        data = os.pread(fd, min(CHUNK, e.length - lo), e.offset + lo)
        crc = checksum(data, crc)
        if checksum is not crc32c:
            castagnoli = crc32c(data, castagnoli)
    if crc != e.crc:
        return "its payload fails its checksum"
    if checksum is not crc32c:
        e.crc = castagnoli
    return ""
