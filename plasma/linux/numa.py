"""NUMA memory policy syscalls: mbind, set_mempolicy, get_mempolicy, move_pages.

Node masks are ``unsigned long`` arrays of :data:`MAX_NODES` bits. The kernel reads
``maxnode - 1`` bits (a historical off-by-one, see mbind(2)), so ``maxnode`` is passed as
``MAX_NODES + 1``, as libnuma does.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
from collections.abc import Iterable
from typing import Any

from plasma.errors import BadRequest
from plasma.linux._syscall import syscall
from plasma.topology import parse_cpulist

MPOL_DEFAULT = 0
MPOL_PREFERRED = 1
MPOL_BIND = 2
MPOL_INTERLEAVE = 3
MPOL_LOCAL = 4
MPOL_PREFERRED_MANY = 5  # Linux 5.15+
MPOL_WEIGHTED_INTERLEAVE = 6  # Linux 6.9+

# Optional mode flags, ORed into the mode (get_mempolicy reports them the same way).
MPOL_F_NUMA_BALANCING = 1 << 13
MPOL_F_RELATIVE_NODES = 1 << 14
MPOL_F_STATIC_NODES = 1 << 15
MPOL_MODE_FLAGS = MPOL_F_NUMA_BALANCING | MPOL_F_RELATIVE_NODES | MPOL_F_STATIC_NODES

MPOL_MF_STRICT = 1 << 0
MPOL_MF_MOVE = 1 << 1
MPOL_MF_MOVE_ALL = 1 << 2  # also pages other processes map (needs CAP_SYS_NICE)

MODE_NAMES = {
    MPOL_DEFAULT: "MPOL_DEFAULT",
    MPOL_PREFERRED: "MPOL_PREFERRED",
    MPOL_BIND: "MPOL_BIND",
    MPOL_INTERLEAVE: "MPOL_INTERLEAVE",
    MPOL_LOCAL: "MPOL_LOCAL",
    MPOL_PREFERRED_MANY: "MPOL_PREFERRED_MANY",
    MPOL_WEIGHTED_INTERLEAVE: "MPOL_WEIGHTED_INTERLEAVE",
}
_FLAG_NAMES = {
    MPOL_F_NUMA_BALANCING: "MPOL_F_NUMA_BALANCING",
    MPOL_F_RELATIVE_NODES: "MPOL_F_RELATIVE_NODES",
    MPOL_F_STATIC_NODES: "MPOL_F_STATIC_NODES",
}
_NEEDS_NODES = (MPOL_BIND, MPOL_INTERLEAVE, MPOL_PREFERRED_MANY, MPOL_WEIGHTED_INTERLEAVE)
_NO_NODES = (MPOL_DEFAULT, MPOL_LOCAL)

MAX_NODES = 1024
_BITS = ctypes.sizeof(ctypes.c_ulong) * 8
_NodeMask = ctypes.c_ulong * (MAX_NODES // _BITS)


def mode_name(mode: int) -> str:
    """``MPOL_BIND`` or ``MPOL_BIND|MPOL_F_STATIC_NODES``; BadRequest for an unknown mode."""
    base, flags = mode & ~MPOL_MODE_FLAGS, mode & MPOL_MODE_FLAGS
    if base not in MODE_NAMES:
        raise BadRequest(f"unknown memory policy mode {mode!r}; expected one of {MODE_NAMES}")
    return "|".join([MODE_NAMES[base]] + [n for bit, n in _FLAG_NAMES.items() if flags & bit])


def _node_mask(mode: int, nodes: Iterable[int]) -> tuple[Any, list[int]]:
    name = mode_name(mode)
    mode &= ~MPOL_MODE_FLAGS
    wanted = sorted(set(nodes))
    for node in wanted:
        if not isinstance(node, int) or not 0 <= node < MAX_NODES:
            raise BadRequest(f"NUMA node {node!r} out of range 0..{MAX_NODES - 1}")
    if mode in _NEEDS_NODES and not wanted:
        raise BadRequest(f"{name} needs at least one NUMA node")
    if mode in _NO_NODES and wanted:
        raise BadRequest(f"{name} takes no nodes, got {wanted}")
    mask = _NodeMask()
    for node in wanted:
        mask[node // _BITS] |= 1 << (node % _BITS)
    return mask, wanted


def _nodes_of(mask: Any) -> list[int]:
    return [i * _BITS + b for i, word in enumerate(mask) for b in range(_BITS) if word >> b & 1]


def _explain(exc: OSError, wanted: list[int]) -> OSError:
    """Add the likely cause of EINVAL for a node list (offline, absent or not allowed)."""
    if exc.errno == errno.EINVAL and wanted:
        return OSError(
            exc.errno,
            f"{exc.strerror}; are NUMA nodes {wanted} online and allowed for this process "
            f"(see /sys/devices/system/node/online and the cpuset's mems)?",
        )
    return exc


def set_mempolicy(mode: int, nodes: Iterable[int] = ()) -> None:
    """Set the calling thread's NUMA memory policy for its future allocations."""
    mask, wanted = _node_mask(mode, nodes)
    call = f"set_mempolicy({mode_name(mode)}, nodes={wanted})"
    try:
        syscall("set_mempolicy", mode, mask if wanted else None, MAX_NODES + 1, call=call)
    except OSError as exc:
        raise _explain(exc, wanted) from None


def get_mempolicy() -> tuple[int, list[int]]:
    """The calling thread's memory policy: ``(mode, nodes)``; nodes is empty for default/local.

    ``mode`` keeps any ``MPOL_F_*`` flags, so ``set_mempolicy(*get_mempolicy())`` restores it.
    """
    mode = ctypes.c_int()
    mask = _NodeMask()
    syscall("get_mempolicy", ctypes.byref(mode), mask, MAX_NODES + 1, 0, 0, call="get_mempolicy()")
    return mode.value, _nodes_of(mask)


def mbind(address: int, length: int, mode: int, nodes: Iterable[int], flags: int = 0) -> None:
    """Apply memory policy ``mode`` over ``nodes`` to ``[address, address + length)``.

    ``address`` must be page-aligned; bind before the first touch (or pass
    ``MPOL_MF_MOVE``) for the pages to land on the nodes.
    """
    if address <= 0 or length <= 0:
        raise BadRequest(f"mbind needs a positive address and length, got {address:#x}, {length}")
    if flags & ~(MPOL_MF_STRICT | MPOL_MF_MOVE | MPOL_MF_MOVE_ALL):
        raise BadRequest(f"unsupported mbind flags {flags:#x}")
    mask, wanted = _node_mask(mode, nodes)
    call = f"mbind({address:#x}, {length}, {mode_name(mode)}, nodes={wanted}, flags={flags:#x})"
    try:
        syscall(
            "mbind",
            address,
            length,
            mode,
            mask if wanted else None,
            MAX_NODES + 1,
            flags,
            call=call,
        )
    except OSError as exc:
        raise _explain(exc, wanted) from None


NODE_ONLINE = "/sys/devices/system/node/online"


def usable_nodes() -> frozenset[int]:
    """The NUMA nodes this process may bind memory to now: online in the running kernel
    (:data:`NODE_ONLINE`, never a ``--sysfs-root``) and allowed by its cpuset
    (``Mems_allowed_list`` in ``/proc/self/status``); ``{0}`` on a kernel without NUMA."""
    try:
        with open(NODE_ONLINE) as f:
            online = parse_cpulist(f.read())
    except FileNotFoundError:
        return frozenset({0})
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Mems_allowed_list:"):
                    return online & parse_cpulist(line.partition(":")[2])
    except FileNotFoundError:
        pass
    return online


_MOVE_BATCH = 16384  # pages per move_pages call: bounds its ctypes arrays


def place_range(
    fd: int, start: int, length: int, page_size: int, mode: int, nodes: list[int]
) -> int:
    """Give ``[start, start + length)`` of the shared file ``fd`` (a memfd: the policy is the
    file's, for every process that maps it) memory policy ``mode`` over ``nodes``
    (MPOL_BIND: the first; MPOL_INTERLEAVE: page by page round-robin) and move its pages
    there, also those other processes map (MPOL_MF_MOVE_ALL; without CAP_SYS_NICE only the
    pages no other process maps move). Content is kept: readers see the same bytes at the
    same addresses. ``start`` must be page-aligned. Returns the pages that did not move."""
    if mode not in (MPOL_BIND, MPOL_INTERLEAVE) or not nodes:
        raise BadRequest("place_range moves pages to nodes with MPOL_BIND or MPOL_INTERLEAVE")
    targets = nodes if mode == MPOL_INTERLEAVE else nodes[:1]
    # populated: move_pages moves only pages this process maps
    flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
    mm = mmap.mmap(fd, length, flags, mmap.PROT_READ | mmap.PROT_WRITE, offset=start)
    try:
        address = buffer_address(mm)
        mbind(address, length, mode, targets)  # the policy: later faults follow it
        count = length // page_size
        left = 0
        move = MPOL_MF_MOVE_ALL
        for first in range(0, count, _MOVE_BATCH):
            n = min(_MOVE_BATCH, count - first)
            pages = (ctypes.c_void_p * n)(
                *range(address + first * page_size, address + (first + n) * page_size, page_size)
            )
            wanted = (ctypes.c_int * n)(*(targets[(first + i) % len(targets)] for i in range(n)))
            status = (ctypes.c_int * n)()
            call = f"move_pages({n} pages to {sorted(set(targets))})"
            try:
                syscall("move_pages", 0, n, pages, wanted, status, move, call=call)
            except OSError as exc:
                if exc.errno != errno.EPERM or move == MPOL_MF_MOVE:
                    raise
                move = MPOL_MF_MOVE  # no CAP_SYS_NICE: the pages only we map
                syscall("move_pages", 0, n, pages, wanted, status, move, call=call)
            left += sum(1 for i in range(n) if status[i] != wanted[i])
        return left
    finally:
        mm.close()


def page_nodes(address: int, length: int, page_size: int, pid: int = 0) -> list[int]:
    """The NUMA node of each page of ``[address, address + length)`` (move_pages, no move).

    Entries are negative errnos for pages that are not mapped or not yet faulted in
    (``-errno.ENOENT`` for an untouched page, ``-errno.EFAULT`` for an unmapped one).
    """
    if page_size <= 0 or page_size & (page_size - 1):
        raise BadRequest(f"page size must be a power of two, got {page_size}")
    if length <= 0:
        return []
    count = -(-length // page_size)
    start = address - address % page_size
    pages = (ctypes.c_void_p * count)(*range(start, start + count * page_size, page_size))
    status = (ctypes.c_int * count)()
    call = f"move_pages(pid={pid}, {count} pages at {address:#x})"
    syscall("move_pages", pid, count, pages, None, status, 0, call=call)
    return list(status)


def buffer_address(buf: Any) -> int:
    """The address of a writable buffer (an ``mmap``, ``bytearray``, writable memoryview).

    No buffer export is held afterwards, so the buffer can still be resized or closed.
    """
    try:
        view = (ctypes.c_char * 1).from_buffer(buf)
    except TypeError as exc:
        raise BadRequest(f"buffer_address needs a writable buffer: {exc}") from None
    except ValueError as exc:
        raise BadRequest(f"buffer_address needs a non-empty buffer: {exc}") from None
    address = ctypes.addressof(view)
    del view
    return address
