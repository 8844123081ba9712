"""The coordinator's shared tables (internal): the memfds behind the object directory, its
access bytes and each client's pin table (layouts in :mod:`plasma.directory`).

:class:`SharedTables` is the store's ``DirectoryMemory``: it creates the directory's two
memfds, keeps them mapped read-write for the store, and hands out descriptors: a read-only
reopening of the directory (clients only read it), the access bytes read-write (readers
set them). Each client's pin table is a memfd the coordinator maps read-only and the client
read-write. Every descriptor handed out is a new one the sender closes once it is sent, so a
table may be replaced while a frame naming the old one still waits in a queue.
"""

from __future__ import annotations

import contextlib
import mmap
import os

from plasma.errors import StoreFull
from plasma.linux import memfd


def _shared_file(name: str, size: int, *, writable: bool = True) -> tuple[int, mmap.mmap]:
    """A new memfd of ``size`` zero bytes and the coordinator's shared map of it; StoreFull
    when there is no memory or no descriptor for it."""
    try:
        fd = memfd.memfd_create(name)
    except OSError as exc:
        raise StoreFull(f"no {name} memfd: {exc}") from None
    try:
        os.ftruncate(fd, size)
        memfd.seal_size(fd)  # a client shrinking it would kill everyone mapping it
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
        return fd, mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
    except OSError as exc:
        os.close(fd)
        raise StoreFull(f"no memory for a {size}-byte {name}: {exc}") from None


def _close(mm: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # still viewed: unmapped when the view goes
        mm.close()


class SharedTables:
    """The directory's memory, for :class:`plasma.store.Store`."""

    def __init__(self) -> None:
        self._fds: dict[int, tuple[int, int]] = {}  # id(directory map) -> (its fd, access fd)
        self.directory_size = 0
        self.access_size = 0
        self._latest: tuple[int, int] | None = None

    def new_directory(self, nbytes: int, access_bytes: int) -> tuple[mmap.mmap, mmap.mmap]:
        dir_fd, directory = _shared_file("plasma-directory", nbytes)
        try:
            access_fd, access = _shared_file("plasma-access", access_bytes)
        except StoreFull:
            _close(directory)
            os.close(dir_fd)
            raise
        self._fds[id(directory)] = (dir_fd, access_fd)
        self._latest = (dir_fd, access_fd)
        self.directory_size, self.access_size = nbytes, access_bytes
        return directory, access

    def free_directory(self, directory: mmap.mmap, access: mmap.mmap) -> None:
        """A superseded directory: its slots and access bytes are punched out at once (idle
        clients may map it for a long time; they read its header, which says superseded,
        and empty slots, so they fall back to requests and ask for the new one)."""
        fds = self._fds.pop(id(directory), None)
        if fds is not None:
            dir_fd, access_fd = fds
            with contextlib.suppress(OSError):  # only memory not returned early
                memfd.punch_hole(dir_fd, mmap.PAGESIZE, len(directory) - mmap.PAGESIZE)
                memfd.punch_hole(access_fd, 0, len(access))
        _close(directory)
        _close(access)
        if fds is not None:
            for fd in fds:
                os.close(fd)

    def descriptors(self, *, writable: bool) -> list[int]:
        """New descriptors of the current directory (read-only) and, for a client that may
        write, its access bytes (read-write); the caller closes them once sent."""
        assert self._latest is not None
        dir_fd, access_fd = self._latest
        fds = [memfd.reopen_read_only(dir_fd)]
        if writable:
            fds.append(os.dup(access_fd))
        return fds

    def close(self) -> None:
        for dir_fd, access_fd in self._fds.values():
            os.close(dir_fd)
            os.close(access_fd)
        self._fds.clear()


def new_pin_table(size: int) -> tuple[int, mmap.mmap]:
    """A client's pin table: its memfd (for the client, read-write; the caller closes it
    once sent) and the coordinator's read-only map of it."""
    fd, table = _shared_file("plasma-pins", size, writable=False)
    return fd, table


def close_map(mm: mmap.mmap) -> None:
    """Unmap a table (left to the garbage collector while something still views it)."""
    _close(mm)
