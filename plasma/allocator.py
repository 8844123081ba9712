"""Offsets inside one segment (internal): aligned best-fit allocation, coalescing free neighbours.

Sans-I/O. The allocator tracks free ranges only; callers remember the size of what they
allocated and hand it back to :meth:`Allocator.free`. Every size is rounded up to the
alignment, so every range starts and ends on an aligned offset.

Free ranges are indexed three ways so every operation is O(log n) plus a list memmove:
``_by_start`` (offset -> size), ``_by_end`` (end -> offset) for O(1) coalescing, a sorted
list of starts for overlap checks, and a sorted list of ``(size, offset)`` for best fit.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort


class Allocator:
    """Free-range allocator for ``size`` bytes; offsets are multiples of ``alignment``.

    ``size`` is rounded down to the alignment. Best fit: the smallest free range that fits,
    lowest offset among equals; the allocation takes the start of that range.
    """

    __slots__ = (
        "_align_mask",
        "_by_end",
        "_by_size",
        "_by_start",
        "_free_bytes",
        "_size",
        "_starts",
    )

    def __init__(self, size: int, alignment: int = 64) -> None:
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment must be a power of two, got {alignment}")
        if size < 0:
            raise ValueError(f"size must not be negative, got {size}")
        self._align_mask = alignment - 1
        self._size = size & ~self._align_mask
        self._by_start: dict[int, int] = {}
        self._by_end: dict[int, int] = {}
        self._starts: list[int] = []
        self._by_size: list[tuple[int, int]] = []
        self._free_bytes = 0
        if self._size:
            self._add(0, self._size, 0)

    # ------------------------------------------------------------ queries

    @property
    def size(self) -> int:
        """Bytes managed (the constructor's size rounded down to the alignment)."""
        return self._size

    @property
    def free_bytes(self) -> int:
        return self._free_bytes

    @property
    def largest_free(self) -> int:
        """Size of the largest free range (0 when full)."""
        return self._by_size[-1][0] if self._by_size else 0

    def free_before(self, offset: int) -> int | None:
        """Start of the free range that ends at ``offset``, or None."""
        return self._by_end.get(offset)

    def free_after(self, offset: int) -> int | None:
        """Size of the free range that starts at ``offset``, or None."""
        return self._by_start.get(offset)

    def free_ranges(self) -> list[tuple[int, int]]:
        """Free ranges as ``(offset, size)``, by offset."""
        return [(start, self._by_start[start]) for start in self._starts]

    # ------------------------------------------------------------ operations

    def allocate(self, size: int) -> int | None:
        """An aligned offset for ``size`` bytes (rounded up), or None when nothing fits."""
        n = self._round(size)
        by_size = self._by_size
        i = bisect_left(by_size, (n, -1))
        if i == len(by_size):
            return None
        have, offset = by_size[i]
        j = bisect_left(self._starts, offset)
        del self._by_start[offset]
        if have == n:
            del by_size[i]
            del self._by_end[offset + have]
            del self._starts[j]
        else:
            rest = offset + n
            self._by_start[rest] = have - n
            self._by_end[offset + have] = rest
            self._starts[j] = rest
            entry = (have - n, rest)
            if i == 0 or by_size[i - 1] <= entry:
                by_size[i] = entry  # still in order: the common bump-allocation case
            else:
                del by_size[i]
                insort(by_size, entry, 0, i)
        self._free_bytes -= n
        return offset

    def free(self, offset: int, size: int) -> None:
        """Return ``[offset, offset + size)`` (size rounded up); merges with free neighbours.

        Raises ValueError, leaving the state untouched, for a misaligned or out-of-bounds
        range or one that overlaps a free range (a double free).
        """
        n = self._round(size)
        end = self._check_range(offset, n)
        starts = self._starts
        j = bisect_right(starts, offset)
        if j and starts[j - 1] + self._by_start[starts[j - 1]] > offset:
            raise ValueError(f"double free: [{offset}, {end}) overlaps a free range")
        if j < len(starts) and starts[j] < end:
            raise ValueError(f"double free: [{offset}, {end}) overlaps a free range")
        lo, hi = offset, end
        left = self._by_end.pop(offset, None)
        if left is not None:
            self._drop_size(self._by_start.pop(left), left)
            lo = left
        right = self._by_start.pop(end, None)
        if right is not None:
            hi = end + right
            del self._by_end[hi]
            self._drop_size(right, end)
        if left is None and right is None:
            starts.insert(j, offset)
        elif left is None:
            starts[j] = offset  # the right neighbour's start moves down
        elif right is not None:
            del starts[j]  # the right neighbour merges into the left one
        self._by_start[lo] = hi - lo
        self._by_end[hi] = lo
        insort(self._by_size, (hi - lo, lo))
        self._free_bytes += n

    def reserve(self, offset: int, size: int) -> None:
        """Mark ``[offset, offset + size)`` (size rounded up) used; ValueError unless all free."""
        n = self._round(size)
        end = self._check_range(offset, n)
        starts = self._starts
        j = bisect_right(starts, offset) - 1
        if j < 0 or starts[j] + self._by_start[starts[j]] < end:
            raise ValueError(f"cannot reserve [{offset}, {end}): not entirely free")
        lo = starts[j]
        hi = lo + self._by_start.pop(lo)
        del self._by_end[hi]
        self._drop_size(hi - lo, lo)
        del starts[j]
        self._free_bytes -= hi - lo
        if end < hi:
            self._add(end, hi - end, j)
        if lo < offset:
            self._add(lo, offset - lo, j)

    # ------------------------------------------------------------ internals

    def _round(self, size: int) -> int:
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        return (size + self._align_mask) & ~self._align_mask

    def _check_range(self, offset: int, n: int) -> int:
        if offset < 0 or offset & self._align_mask:
            raise ValueError(f"offset {offset} is negative or not aligned")
        end = offset + n
        if end > self._size:
            raise ValueError(f"range [{offset}, {end}) is outside [0, {self._size})")
        return end

    def _add(self, start: int, size: int, index: int) -> None:
        """Insert a free range that touches no other free range at ``_starts[index]``."""
        self._by_start[start] = size
        self._by_end[start + size] = start
        self._starts.insert(index, start)
        insort(self._by_size, (size, start))
        self._free_bytes += size

    def _drop_size(self, size: int, start: int) -> None:
        by_size = self._by_size
        del by_size[bisect_left(by_size, (size, start))]
