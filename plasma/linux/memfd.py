"""Anonymous shared memory: memfd_create (optionally hugetlb), read-only reopening, fallocate
and prefaulting."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

from plasma.errors import BadRequest, Unsupported
from plasma.linux._syscall import libc, libc_call, os_error
from plasma.linux.numa import buffer_address

MFD_CLOEXEC = 0x0001
MFD_ALLOW_SEALING = 0x0002
MFD_HUGETLB = 0x0004
MFD_HUGE_SHIFT = 26
MFD_HUGE_2MB = 21 << MFD_HUGE_SHIFT
MFD_HUGE_1GB = 30 << MFD_HUGE_SHIFT

MADV_POPULATE_READ = 22  # Linux 5.14+
MADV_POPULATE_WRITE = 23  # Linux 5.14+

HUGEPAGES_SYSFS = Path("/sys/kernel/mm/hugepages")
PROC_SELF_FD = Path("/proc/self/fd")
MEMFD_MODE = 0o600


def hugepage_flags(hugepage_size: int) -> int:
    """The ``MFD_HUGETLB | MFD_HUGE_<size>`` flags for a power-of-two page size in bytes."""
    if hugepage_size <= 0 or hugepage_size & (hugepage_size - 1):
        raise BadRequest(f"hugepage size must be a power of two in bytes, got {hugepage_size}")
    return MFD_HUGETLB | (hugepage_size.bit_length() - 1) << MFD_HUGE_SHIFT


def memfd_create(name: str, *, hugepage_size: int | None = None, cloexec: bool = True) -> int:
    """A new anonymous memory file, mode 0600; with ``hugepage_size`` (bytes) it is backed by
    hugetlbfs.

    The kernel creates memfds mode 0777, so any process of any uid holding a descriptor of one
    could reopen it read-write through ``/proc/PID/fd/N``; 0600 leaves that to our own uid.
    It allows sealing: :func:`seal_size` fixes its size once it has it. Raises Unsupported
    when the kernel has no memfd or no hugepages of that size.
    """
    flags = MFD_ALLOW_SEALING | (MFD_CLOEXEC if cloexec else 0)
    if hugepage_size is not None:
        flags |= hugepage_flags(hugepage_size)
        if not (HUGEPAGES_SYSFS / f"hugepages-{hugepage_size // 1024}kB").is_dir():
            raise Unsupported(
                f"memfd_create: this kernel has no {hugepage_size // 1024} kB hugepages "
                f"(no {HUGEPAGES_SYSFS}/hugepages-{hugepage_size // 1024}kB)"
            )
    create = getattr(os, "memfd_create", None)
    if create is None:
        raise Unsupported("memfd_create: not available on this platform")
    try:
        fd: int = create(name, flags)
    except OSError as exc:
        raise os_error(exc.errno or 0, f"memfd_create({name!r}, flags={flags:#x})") from None
    try:
        os.fchmod(fd, MEMFD_MODE)
    except OSError as exc:
        os.close(fd)
        raise os_error(exc.errno or 0, f"fchmod(memfd {name!r}, {MEMFD_MODE:#o})") from None
    return fd


SIZE_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def seal_size(fd: int) -> None:
    """Fix a memfd's size for good (F_SEAL_SHRINK | F_SEAL_GROW, then F_SEAL_SEAL): whoever
    holds a descriptor of it may still write its bytes (and punch holes), but can no longer
    shrink it under the mappings of others, which would make their next access SIGBUS."""
    try:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SIZE_SEALS)
    except OSError as exc:
        raise os_error(exc.errno or 0, "fcntl(F_ADD_SEALS, SHRINK | GROW | SEAL)") from None


def copy_ranges(
    src: int,
    src_offset: int,
    src_page: int,
    targets: list[tuple[int, int, int]],
    length: int,
) -> None:
    """Copy ``length`` bytes at ``src_offset`` of shared file ``src`` to each ``(fd, offset,
    page size)`` of ``targets``, through mappings made for the copy only."""
    if length <= 0:
        return
    with mapped(src, src_offset, length, src_page, mmap.PROT_READ) as source:
        for fd, offset, page in targets:
            with mapped(fd, offset, length, page, mmap.PROT_READ | mmap.PROT_WRITE) as target:
                target[:] = source


@contextlib.contextmanager
def mapped(fd: int, offset: int, length: int, page: int, prot: int) -> Iterator[memoryview]:
    """``length`` bytes at ``offset`` of shared file ``fd`` (pages of ``page`` bytes), mapped
    and populated for the duration of the block."""
    start = offset // page * page
    flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
    mm = mmap.mmap(fd, offset - start + length, flags, prot, offset=start)
    view = memoryview(mm)[offset - start : offset - start + length]
    try:
        yield view
    finally:
        view.release()
        mm.close()


def reopen_read_only(fd: int) -> int:
    """A new ``O_RDONLY | O_CLOEXEC`` descriptor of the file behind ``fd``.

    Opened through ``/proc/self/fd/N``, it is a new open file description, unlike a dup: its
    holder cannot write, ftruncate or fallocate through it, nor map it ``PROT_WRITE`` shared.
    Raises Unsupported when ``/proc`` is not mounted.
    """
    if not PROC_SELF_FD.is_dir():
        raise Unsupported(f"reopen read-only: {PROC_SELF_FD} does not exist (is /proc mounted?)")
    path = f"{PROC_SELF_FD}/{fd}"
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(exc.errno or 0, f"open({path!r}, O_RDONLY | O_CLOEXEC)") from None


@functools.cache
def _declare_fallocate() -> None:
    func = libc().fallocate
    func.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    func.restype = ctypes.c_int


def fallocate(fd: int, offset: int, length: int) -> None:
    """Allocate ``[offset, offset + length)`` of ``fd`` now, growing the file if needed.

    On a hugetlb memfd this reserves the hugepages (under the calling thread's memory
    policy), so a shortage is ``OSError(ENOSPC)`` here rather than a SIGBUS on first touch.
    """
    if offset < 0 or length <= 0:
        raise BadRequest(f"fallocate needs offset >= 0 and length > 0, got {offset}, {length}")
    _declare_fallocate()
    call = f"fallocate(fd={fd}, offset={offset}, length={length})"
    try:
        libc_call("fallocate", fd, 0, offset, length, call=call)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"{exc.strerror}; for a hugetlb memfd: not enough free hugepages on the "
                f"allowed nodes (see HugePages_Free in /proc/meminfo)",
            ) from None
        raise


FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Give the pages of ``[offset, offset + length)`` of a memfd back to the kernel now,
    whoever still maps them (they read zeros after); the file keeps its size."""
    if length <= 0:
        return
    _declare_fallocate()
    mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
    call = f"fallocate(fd={fd}, PUNCH_HOLE, offset={offset}, length={length})"
    libc_call("fallocate", fd, mode, offset, length, call=call)


def _declare_madvise() -> None:
    func = libc().madvise
    func.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    func.restype = ctypes.c_int


def madvise(address: int, length: int, advice: int, what: str = "") -> None:
    """madvise(2) of ``[address, address + length)`` (``address`` page-aligned) with the
    interpreter lock released: ``mmap.madvise`` holds it throughout, so a populate of a
    large range (tens of milliseconds) stopped every other thread of the process with it
    (the coordinator's event loop behind a spare being populated, a client's caller behind
    its background populate). The caller keeps the range mapped meanwhile. OSError naming
    the call (``what``: the advice's name)."""
    _declare_madvise()
    call = f"madvise({what or advice}, {length} bytes)"
    libc_call("madvise", address, length, advice, call=call)


def prefault(mm: mmap.mmap) -> None:
    """Fault in every page of a writable mapping now (MADV_POPULATE_WRITE, the interpreter
    lock released; else touch)."""
    if len(mm) == 0:
        return
    try:
        madvise(buffer_address(mm), len(mm), MADV_POPULATE_WRITE, "MADV_POPULATE_WRITE")
        return
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: kernel older than 5.14
            raise
    for offset in range(0, len(mm), mmap.PAGESIZE):
        mm[offset] = mm[offset]


MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def map_segment(fd: int, size: int, *, writable: bool, populate: bool = False) -> mmap.mmap:
    """Map a received segment shared (``PROT_READ`` only unless ``writable``), then close
    ``fd``: the map keeps the memory. ``populate`` fills the page tables now (else see
    :func:`populate_read`)."""
    prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
    try:
        return mmap.mmap(fd, size, mmap.MAP_SHARED | (MAP_POPULATE if populate else 0), prot)
    except OSError as exc:
        raise os_error(exc.errno or 0, f"mmap of a {size}-byte segment") from None
    finally:
        os.close(fd)


def populate_read(address: int, length: int) -> bool:
    """Fill the page tables of ``[address, address + length)`` of a shared map (its start
    rounded down to a page) with the pages its file has, reading and writing nothing
    (MADV_POPULATE_READ, the interpreter lock released: :func:`madvise`), so that neither a
    write nor a first read of its bytes faults. The caller keeps the range mapped meanwhile.
    An optimisation only: False when it could not (a kernel before 5.14).

    MADV_POPULATE_READ, as MAP_POPULATE does: a segment's pages exist already (the
    coordinator faulted them in), and in a shared writable map of shared memory a read fault
    maps them writable, sixteen pages a fault (fault-around); MADV_POPULATE_WRITE takes one
    write fault a page, 3-5x slower here. (A fallback file's pages, on disk, are mapped
    read-only until written: their writes fault as they would have.)"""
    start = address - address % mmap.PAGESIZE
    try:
        madvise(start, address + length - start, MADV_POPULATE_READ, "MADV_POPULATE_READ")
    except OSError:
        return False
    return True
