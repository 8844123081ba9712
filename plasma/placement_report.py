"""Where the pages of each segment really are (internal): move_pages over a temporary mapping.

The coordinator keeps no segment mapped, so each one is mapped for the check, its pages
read-touched (mapped into this process without allocating: the segments are pre-faulted
or their hugepages reserved), located with move_pages, then unmapped again.
"""

from __future__ import annotations

import collections
import errno
import mmap
from typing import Any

from plasma.linux import numa
from plasma.linux.memfd import MADV_POPULATE_READ, madvise
from plasma.segments import Segment, SegmentPool

_CHUNK_PAGES = 16384  # move_pages batch: bounds the ctypes arrays for big segments


def placement_report(pool: SegmentPool) -> list[dict[str, Any]]:
    """Per segment: ``id``, ``node``, ``size``, ``page_size``, ``pages``, ``pages_per_node``
    ({node: count}), ``misplaced`` (pages on another node) and ``unresolved`` (pages
    move_pages could not locate). Fallback segments (files on disk, which a client might
    shrink under a mapping) are left out."""
    return [segment_placement(seg) for seg in pool if not seg.file_backed]


def segment_placement(seg: Segment) -> dict[str, Any]:
    """The placement row of one segment (see :func:`placement_report`)."""
    per_node: collections.Counter[int] = collections.Counter()
    unresolved = 0
    with mmap.mmap(seg.fd, seg.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as mm:
        _read_touch(mm, seg.page_size)
        address = numa.buffer_address(mm)
        chunk = _CHUNK_PAGES * seg.page_size
        for start in range(0, seg.size, chunk):
            length = min(chunk, seg.size - start)
            for status in numa.page_nodes(address + start, length, seg.page_size):
                if status >= 0:
                    per_node[status] += 1
                else:
                    unresolved += 1
    pages = seg.size // seg.page_size
    return {
        "id": seg.id,
        "node": seg.node,
        "size": seg.size,
        "page_size": seg.page_size,
        "pages": pages,
        "pages_per_node": dict(sorted(per_node.items())),
        "misplaced": sum(n for node, n in per_node.items() if node != seg.node),
        "unresolved": unresolved,
    }


def _read_touch(mm: mmap.mmap, page_size: int) -> None:
    """Map every page of ``mm`` into this process by reading it (MADV_POPULATE_READ, the
    interpreter lock released; else a read per page)."""
    try:
        madvise(numa.buffer_address(mm), len(mm), MADV_POPULATE_READ, "MADV_POPULATE_READ")
        return
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: kernel older than 5.14
            raise
    for offset in range(0, len(mm), page_size):
        _ = mm[offset]
