"""Shared-memory segments (internal): memfd-backed, bound to a NUMA node, pre-faulted.

A :class:`SegmentPool` is the store's ``SegmentProvider``: it creates segments on request,
keeps their fds (the coordinator hands them to clients with SCM_RIGHTS: the read-write memfd to
clients that may write, a read-only reopening of it to the others), and closes them when the
store frees a segment. The coordinator never keeps segments mapped: the pages belong to the
memfd, so its own RSS stays small however much data the store holds.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from plasma.errors import StoreFull, Unsupported
from plasma.linux import memfd, numa
from plasma.linux.dirs import NOFOLLOW, open_private_directory
from plasma.records import SegmentInfo

BASE_PAGE = mmap.PAGESIZE


@dataclass(slots=True)
class Segment:
    """One memfd of ``size`` bytes (mode 0600) whose pages live on ``node``."""

    id: int
    fd: int  # read-write
    size: int
    node: int
    page_size: int
    # a fallback file (not a memfd): it cannot be sealed, so the coordinator never maps it
    # and only the creator of its object gets a writable descriptor
    file_backed: bool = False
    _read_only_fd: int | None = None

    def info(self, *, writable: bool = True) -> SegmentInfo:
        return SegmentInfo(
            id=self.id, size=self.size, node=self.node, page_size=self.page_size, writable=writable
        )

    def read_only_fd(self) -> int:
        """An ``O_RDONLY`` descriptor of the memfd, for read-only clients; opened once."""
        if self._read_only_fd is None:
            self._read_only_fd = memfd.reopen_read_only(self.fd)
        return self._read_only_fd

    def close(self) -> None:
        os.close(self.fd)
        if self._read_only_fd is not None:
            os.close(self._read_only_fd)


@dataclass
class SegmentPool:
    """Creates and owns the store's segments.

    ``bind`` makes every segment's memory policy MPOL_BIND to its node (needed on multi-node
    hosts; harmless on one node). ``hugepage_size`` selects MFD_HUGETLB segments; when the
    kernel cannot supply the pages, creation fails with ``StoreFull`` (``Unsupported`` when it
    has no hugepages of that size) instead of a later SIGBUS; with ``hugepage_fallback`` it
    uses normal pages instead.
    """

    bind: bool = True
    hugepage_size: int | None = None
    hugepage_fallback: bool = False
    fallback_dir: str | None = None  # where new_fallback_segment makes its files
    _segments: dict[int, Segment] = field(default_factory=dict)
    _next_id: int = 1
    _fallback_fd: int = -1  # the fallback directory, checked to be ours alone

    def __post_init__(self) -> None:
        if self.fallback_dir is not None:
            self._fallback_fd = open_private_directory(self.fallback_dir, "--fallback-dir")

    @property
    def page_size(self) -> int:
        return self.hugepage_size or BASE_PAGE

    def new_segment(self, node: int, size: int) -> int:
        """Create a segment of ``size`` bytes (a multiple of ``page_size``) on ``node``.

        Unsupported when its memory cannot be bound to ``node`` (a node the kernel lacks or
        this process may no longer use: the request fails with that reason, not as an
        internal error)."""
        try:
            return self._new_segment(node, size)
        except Unsupported:
            raise
        except OSError as exc:
            if not self.bind or exc.errno != errno.EINVAL:
                raise
            usable = sorted(numa.usable_nodes())
            raise Unsupported(
                f"cannot bind memory to NUMA node {node}: the kernel lacks it or this process "
                f"may not use it (usable nodes: {usable}; {exc.strerror})"
            ) from None

    def _new_segment(self, node: int, size: int) -> int:
        seg_id = self._next_id
        self._next_id += 1
        if self.hugepage_size:
            try:
                fd = self._create_hugepage(seg_id, node, size)
                page_size = self.hugepage_size
            except (StoreFull, Unsupported):
                if not self.hugepage_fallback:
                    raise
                fd, page_size = self._create_normal(seg_id, node, size), BASE_PAGE
        else:
            fd, page_size = self._create_normal(seg_id, node, size), BASE_PAGE
        self._segments[seg_id] = Segment(seg_id, fd, size, node, page_size)
        return seg_id

    def _create_normal(self, seg_id: int, node: int, size: int) -> int:
        fd = memfd.memfd_create(f"plasma-{os.getpid()}-{seg_id}")
        try:
            os.ftruncate(fd, size)
            memfd.seal_size(fd)
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
                if self.bind:
                    self._bind(mm, size, node)
                memfd.prefault(mm)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _bind(self, mm: mmap.mmap, size: int, node: int) -> None:
        try:
            numa.mbind(numa.buffer_address(mm), size, numa.MPOL_BIND, [node], numa.MPOL_MF_STRICT)
        except Unsupported:
            if node != 0:
                raise
            # A kernel without NUMA support has exactly one node: nothing to bind.

    def _create_hugepage(self, seg_id: int, node: int, size: int) -> int:
        assert self.hugepage_size is not None
        fd = memfd.memfd_create(f"plasma-{os.getpid()}-{seg_id}", hugepage_size=self.hugepage_size)
        try:
            os.ftruncate(fd, size)
            with _thread_bound_to(node) if self.bind else contextlib.nullcontext():
                try:
                    memfd.fallocate(fd, 0, size)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, errno.ENOMEM):
                        raise StoreFull(
                            f"not enough {self.hugepage_size >> 20} MiB hugepages on node {node} "
                            f"for a {size >> 20} MiB segment (reserve more with "
                            f"`plasma-coord hugepages`)"
                        ) from None
                    raise
            memfd.seal_size(fd)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def new_fallback_segment(self, node: int, size: int) -> int:
        """A segment of ``size`` bytes backed by an unnamed file in ``fallback_dir``, every
        block allocated up front (so writing it never raises SIGBUS): memory the kernel can
        write back to disk, for when the budgets are used up. Unnamed (O_TMPFILE, or
        unlinked at once where the file system lacks it), it is gone once freed and no
        client maps it, also after a crash. ``node`` is only what it is reported under."""
        if self._fallback_fd < 0:
            raise StoreFull("no --fallback-dir: no fallback segments")
        fd = _unnamed_file(self._fallback_fd)
        try:
            memfd.fallocate(fd, 0, size)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(
                    f"fallback directory {self.fallback_dir} has no room for {size} bytes"
                ) from None
            raise
        seg_id = self._next_id
        self._next_id += 1
        self._segments[seg_id] = Segment(seg_id, fd, size, node, BASE_PAGE, file_backed=True)
        return seg_id

    def free_segment(self, segment: int) -> None:
        """Close a segment the store no longer uses. Its pages are punched out first: clients
        that mapped it let go of their maps only when told, and a client that is not
        reading would keep the memory out of the budget until then."""
        seg = self._segments.pop(segment)
        with contextlib.suppress(OSError):  # (then the memory goes when the last map does)
            memfd.punch_hole(seg.fd, 0, seg.size)
        seg.close()

    def get(self, segment: int) -> Segment:
        return self._segments[segment]

    def __iter__(self) -> Iterator[Segment]:
        return iter(list(self._segments.values()))

    def close(self) -> None:
        """Release every segment (their memory goes once no client maps it)."""
        for seg in list(self._segments.values()):
            self.free_segment(seg.id)
        if self._fallback_fd >= 0:
            os.close(self._fallback_fd)
            self._fallback_fd = -1


def _unnamed_file(directory: int) -> int:
    """A new 0600 read-write file in directory ``directory`` (a descriptor) with no name."""
    try:
        return os.open(".", os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=directory)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    # (no O_TMPFILE here: a random name, unlinked at once; the directory is ours alone)
    name = f".plasma-fallback-{os.urandom(8).hex()}"
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | NOFOLLOW, 0o600, dir_fd=directory)
    os.unlink(name, dir_fd=directory)
    return fd


@contextlib.contextmanager
def _thread_bound_to(node: int) -> Iterator[None]:
    """Bind the calling thread's memory policy to ``node``, restoring the previous one after.

    hugetlbfs takes the node of a reservation from the faulting (here: fallocating) thread.
    """
    mode, nodes = numa.get_mempolicy()
    numa.set_mempolicy(numa.MPOL_BIND, [node])
    try:
        yield
    finally:
        numa.set_mempolicy(mode, nodes)
