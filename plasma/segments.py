"""Shared-memory segments (internal): memfd-backed, bound to a NUMA node, pre-faulted.

A :class:`SegmentPool` is the store's ``SegmentProvider``: it creates segments on request,
keeps their fds (the coordinator hands them to clients with SCM_RIGHTS: the read-write memfd to
clients that may write, a read-only reopening of it to the others), and closes them when the
store frees a segment. The coordinator keeps a segment mapped only while restores of spilled
objects read into it (:meth:`Segment.mapping`; a map made and torn down for every restore
cost more than the copy, see :mod:`plasma.spiller`): the map goes when the segment is freed
or when restores pause (:meth:`SegmentPool.unmap_all`), so its RSS stays small however much
data the store holds.

Faulting in a segment's pages (the kernel zeroes each one) runs at a fraction of memcpy's
speed, so a create that had to wait for it would stall. The pool therefore makes *spares*
ahead of need (:meth:`SegmentPool.prepare_spare`, in its own worker thread: the coordinator
decides when and how big, see :mod:`plasma.coordinator.spares`): a memfd bound to its node
and populated, handed out by :meth:`SegmentPool.new_segment` when it is at least as large as
asked (its tail beyond the size asked is given back). One being prepared for the node asked
is waited for rather than made twice, so the memory of segments and spares stays within what
the coordinator sized them for.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from plasma.errors import StoreFull, Unsupported
from plasma.linux import memfd, numa
from plasma.linux.dirs import NOFOLLOW, open_private_directory
from plasma.linux.numa import buffer_address
from plasma.records import SegmentInfo

BASE_PAGE = mmap.PAGESIZE
MAP_GRANULE = 2 << 20  # bytes of a restore map whose page tables are made at once

log = logging.getLogger("plasma.coordinator")


@dataclass(slots=True)
class Spare:
    """A memfd of ``size`` bytes on ``node``, populated, its size not sealed yet."""

    fd: int
    size: int
    node: int
    page_size: int


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
    _map: mmap.mmap | None = None  # writable, for restores (made by mapping())
    _filled: bytearray = field(default_factory=bytearray)  # per MAP_GRANULE: page tables made

    def info(self, *, writable: bool = True) -> SegmentInfo:
        return SegmentInfo(
            id=self.id, size=self.size, node=self.node, page_size=self.page_size, writable=writable
        )

    def read_only_fd(self) -> int:
        """An ``O_RDONLY`` descriptor of the memfd, for read-only clients; opened once."""
        if self._read_only_fd is None:
            self._read_only_fd = memfd.reopen_read_only(self.fd)
        return self._read_only_fd

    def mapping(self) -> mmap.mmap:
        """The whole segment mapped shared and writable (made on first use, without page
        tables: the reader fills those of what it touches), kept until :meth:`unmap`. A memfd
        only: its size is sealed, so no page of the map can vanish under a reader (a fallback
        file is never mapped)."""
        if self.file_backed:
            raise ValueError(f"segment {self.id} is a fallback file: it is never mapped")
        if self._map is None:
            self._map = mmap.mmap(
                self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
            )
            self._filled = bytearray(-(-self.size // MAP_GRANULE))
        return self._map

    def fill(self, offset: int, length: int) -> None:
        """Make the page tables of ``[offset, offset + length)`` of :meth:`mapping`, a
        ``MAP_GRANULE`` at a time, each once per map (MADV_POPULATE_READ, the interpreter lock
        released: safe from several threads): writing into pages without them faults each
        one (about 3x the copy), and filling them again costs as much as the first time."""
        mm = self.mapping()
        first, last = offset // MAP_GRANULE, (offset + length - 1) // MAP_GRANULE
        for granule in range(first, last + 1):
            if not self._filled[granule]:
                lo = granule * MAP_GRANULE
                memfd.populate_read(buffer_address(mm) + lo, min(MAP_GRANULE, self.size - lo))
                self._filled[granule] = 1

    @property
    def mapped(self) -> bool:
        return self._map is not None

    def unmap(self) -> None:
        """Let go of :meth:`mapping`'s map. A view of it still held (a restore under way:
        never, the store frees no memory under I/O) keeps it mapped until released."""
        mm, self._map = self._map, None
        self._filled = bytearray()
        if mm is not None:
            with contextlib.suppress(BufferError):  # (then the last view unmaps it)
                mm.close()

    def close(self) -> None:
        self.unmap()
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
    _spares: dict[int, Spare] = field(default_factory=dict)  # node -> ready spare
    _preparing: dict[int, Future[Spare]] = field(default_factory=dict)  # node -> being made
    _worker: ThreadPoolExecutor | None = None  # makes spares (started when first needed)
    #: a spare was taken or dropped, or a segment freed: the spares may want refilling
    spares_changed: bool = False
    spare_error: str = ""  # why the last spare could not be made ("" once one was)

    def __post_init__(self) -> None:
        if self.fallback_dir is not None:
            self._fallback_fd = open_private_directory(self.fallback_dir, "--fallback-dir")

    @property
    def page_size(self) -> int:
        return self.hugepage_size or BASE_PAGE

    def new_segment(self, node: int, size: int) -> int:
        """A segment of ``size`` bytes (a multiple of ``page_size``) on ``node``: the node's
        spare when it is large enough (waiting for one being prepared), else a new one
        faulted in now (the spare, too small, is dropped first: its memory is wanted).

        Unsupported when its memory cannot be bound to ``node`` (a node the kernel lacks or
        this process may no longer use: the request fails with that reason, not as an
        internal error)."""
        spare = self._take_spare(node)
        if spare is not None and spare.size >= size:
            return self._adopt(spare, size)
        if spare is not None:
            os.close(spare.fd)
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
        spare = self._populated(f"plasma-{os.getpid()}-{self._next_id}", node, size)
        return self._adopt(spare, size)

    def _adopt(self, spare: Spare, size: int) -> int:
        """Make ``spare`` segment ``size`` bytes long (its tail given back) and register it."""
        try:
            if spare.size > size:
                os.ftruncate(spare.fd, size)
            memfd.seal_size(spare.fd)
        except BaseException:
            os.close(spare.fd)
            raise
        seg_id = self._next_id
        self._next_id += 1
        self._segments[seg_id] = Segment(seg_id, spare.fd, size, spare.node, spare.page_size)
        return seg_id

    def _populated(self, name: str, node: int, size: int) -> Spare:
        """A memfd of ``size`` bytes on ``node``, every page allocated (hugepages when asked,
        falling back to normal pages where allowed); its size not sealed. Touches no state
        of the pool: the spare worker calls it too."""
        if self.hugepage_size:
            try:
                return Spare(self._create_hugepage(name, node, size), size, node, self.page_size)
            except (StoreFull, Unsupported):
                if not self.hugepage_fallback:
                    raise
        return Spare(self._create_normal(name, node, size), size, node, BASE_PAGE)

    def _create_normal(self, name: str, node: int, size: int) -> int:
        fd = memfd.memfd_create(name)
        try:
            os.ftruncate(fd, size)
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

    def _create_hugepage(self, name: str, node: int, size: int) -> int:
        assert self.hugepage_size is not None
        fd = memfd.memfd_create(name, hugepage_size=self.hugepage_size)
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
        except BaseException:
            os.close(fd)
            raise
        return fd

    # ------------------------------------------------------------ spares

    def prepare_spare(self, node: int, size: int) -> Future[Spare]:
        """Start making a spare of ``size`` bytes (a multiple of ``page_size``) for ``node``
        in the pool's worker thread (one at a time); :meth:`collect_spare` takes it in. The
        node must have neither a spare nor one being prepared."""
        assert node not in self._spares and node not in self._preparing
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="plasma-spares")
        name = f"plasma-{os.getpid()}-spare-{node}"
        future = self._worker.submit(self._populated, name, node, size)
        self._preparing[node] = future
        return future

    def collect_spare(self, node: int, room: int | None = None) -> None:
        """Take in the spare prepared for ``node`` (waiting for it to be made), keeping it
        only if it fits in ``room`` bytes (None: any size); a failure is logged and kept in
        ``spare_error``."""
        future = self._preparing.pop(node, None)
        if future is None:
            return
        try:
            spare = future.result()
        except Exception as exc:  # (StoreFull: no hugepages; ENOMEM...: creates say it again)
            self.spare_error = f"node {node}: {exc}"
            log.warning("could not prepare a spare segment on %s", self.spare_error)
            return
        self.spare_error = ""
        if room is not None and spare.size > room:
            os.close(spare.fd)  # the room shrank meanwhile: the coordinator sizes another
            self.spares_changed = True
            return
        self._spares[node] = spare

    def _take_spare(self, node: int) -> Spare | None:
        self.collect_spare(node)
        spare = self._spares.pop(node, None)
        if spare is not None:
            self.spares_changed = True
        return spare

    def drop_spare(self, node: int) -> None:
        """Give back ``node``'s spare (its memory is wanted elsewhere, e.g. pages moved in)."""
        self.collect_spare(node)
        spare = self._spares.pop(node, None)
        if spare is not None:
            os.close(spare.fd)
            self.spares_changed = True

    def spares(self) -> dict[int, int]:
        """Bytes of the spare ready on each node that has one."""
        return {node: spare.size for node, spare in self._spares.items()}

    def preparing(self) -> list[int]:
        """The nodes a spare is being prepared for."""
        return sorted(self._preparing)

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
        self.spares_changed = True

    def get(self, segment: int) -> Segment:
        return self._segments[segment]

    def unmap_all(self) -> None:
        """Let go of every segment's :meth:`Segment.mapping`."""
        for seg in self._segments.values():
            seg.unmap()

    def __iter__(self) -> Iterator[Segment]:
        return iter(list(self._segments.values()))

    def close(self) -> None:
        """Release every segment and spare (their memory goes once no client maps it)."""
        for seg in list(self._segments.values()):
            self.free_segment(seg.id)
        if self._worker is not None:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        for node in list(self._preparing):
            with contextlib.suppress(Exception):  # (cancelled, or failed: nothing to close)
                self._spares[node] = self._preparing.pop(node).result()
        for spare in self._spares.values():
            os.close(spare.fd)
        self._spares.clear()
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
