"""Reserve hugepages through sysfs (internal), per NUMA node or globally; report what was granted.

Per node: ``/sys/devices/system/node/nodeN/hugepages/hugepages-<kB>kB/nr_hugepages``; without
a node: ``/sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages`` (the kernel spreads those
over the nodes allowed to the writer). The kernel may grant fewer pages than asked for
(fragmented or short memory), so the count is always read back. ``sysfs_root`` is the
directory holding ``sys/`` (``/`` on a live system), so tests can use a fake tree.
"""

from __future__ import annotations

import errno
import mmap
from dataclasses import dataclass
from pathlib import Path

from plasma.errors import BadRequest, PermissionDenied, Unsupported


@dataclass(frozen=True, slots=True)
class HugepageReservation:
    """The outcome of one reservation: ``granted`` is what the kernel actually holds now."""

    page_size: int
    node: int | None
    requested: int
    granted: int
    free: int

    @property
    def complete(self) -> bool:
        return self.granted >= self.requested

    def describe(self) -> str:
        where = "all nodes" if self.node is None else f"node {self.node}"
        text = (
            f"{where}: {self.page_size >> 10} kB hugepages: requested {self.requested}, "
            f"granted {self.granted} ({self.free} free)"
        )
        if not self.complete:
            text += f"; the kernel found only {self.granted} (memory short or fragmented)"
        return text


def hugepages_dir(page_size: int, node: int | None = None, sysfs_root: str | Path = "/") -> Path:
    """The sysfs directory of ``page_size`` hugepages on ``node`` (None: the global pool).

    BadRequest for a bad size or an absent node; Unsupported when the kernel lacks that size.
    """
    if page_size <= mmap.PAGESIZE or page_size & (page_size - 1):
        raise BadRequest(
            f"hugepage size must be a power of two above {mmap.PAGESIZE} bytes, got {page_size}"
        )
    root = Path(sysfs_root)
    if node is None:
        base = root / "sys/kernel/mm/hugepages"
    else:
        if node < 0:
            raise BadRequest(f"NUMA node must not be negative, got {node}")
        node_dir = root / f"sys/devices/system/node/node{node}"
        if not node_dir.is_dir():
            raise BadRequest(f"NUMA node {node} does not exist (no {node_dir})")
        base = node_dir / "hugepages"
    directory = base / f"hugepages-{page_size >> 10}kB"
    if not directory.is_dir():
        sizes = sorted(p.name.removeprefix("hugepages-") for p in base.glob("hugepages-*kB"))
        raise Unsupported(
            f"this kernel has no {page_size >> 10} kB hugepages (no {directory}; "
            f"available: {', '.join(sizes) or 'none'})"
        )
    return directory


def hugepage_counts(
    page_size: int, node: int | None = None, sysfs_root: str | Path = "/"
) -> tuple[int, int]:
    """``(nr_hugepages, free_hugepages)`` of ``page_size`` pages on ``node`` (None: global)."""
    directory = hugepages_dir(page_size, node, sysfs_root)
    return _read_count(directory / "nr_hugepages"), _read_count(directory / "free_hugepages")


def reserve_hugepages(
    page_size: int, count: int, node: int | None = None, sysfs_root: str | Path = "/"
) -> HugepageReservation:
    """Set the pool of ``page_size`` hugepages on ``node`` (None: global) to ``count`` pages.

    Returns what the kernel granted (read back); shrinking below the pages in use leaves
    the in-use pages as surplus. PermissionDenied when sysfs is not writable (needs root).
    """
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise BadRequest(f"hugepage count must be a non-negative integer, got {count!r}")
    directory = hugepages_dir(page_size, node, sysfs_root)
    path = directory / "nr_hugepages"
    try:
        path.write_text(f"{count}\n")
    except PermissionError as exc:
        raise PermissionDenied(
            f"cannot write {path}: {exc.strerror} (reserving needs root)"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOMEM, errno.ENOSPC):
            raise OSError(exc.errno, f"cannot write {count} to {path}: {exc.strerror}") from None
        # The kernel refused outright; what it holds now is read back below.
    nr, free = hugepage_counts(page_size, node, sysfs_root)
    return HugepageReservation(page_size, node, count, nr, free)


def _read_count(path: Path) -> int:
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        raise Unsupported(f"{path} does not exist") from None
    except ValueError:
        raise OSError(errno.EINVAL, f"{path}: not a page count") from None
