"""Page and alignment arithmetic, written once (the store, its memory and its parts use it)."""

from __future__ import annotations


def round_up(nbytes: int, unit: int) -> int:
    """``nbytes`` rounded up to a multiple of ``unit`` (a page, or the alignment)."""
    return -(-nbytes // unit) * unit


def page_range(offset: int, size: int, page: int) -> tuple[int, int]:
    """``(start, length)`` of the pages ``size`` bytes at ``offset`` are on."""
    start = offset // page * page
    return start, round_up(offset + size, page) - start
