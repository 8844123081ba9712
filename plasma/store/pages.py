"""Page and alignment arithmetic, written once (the store, its memory and its parts use it)."""

from __future__ import annotations


def round_up(nbytes: int, unit: int) -> int:
    """``nbytes`` rounded up to a multiple of ``unit`` (a page, or the alignment)."""
    return -(-nbytes // unit) * unit


def page_range(offset: int, size: int, page: int) -> tuple[int, int]:
    """``(start, length)`` of the pages ``size`` bytes at ``offset`` are on."""
    start = offset // page * page
    return start, round_up(offset + size, page) - start


def page_charges(
    home: int, offset: int, size: int, nodes: tuple[int, ...], page: int
) -> dict[int, int]:
    """Bytes of the pages ``size`` bytes at ``offset`` are on that land on each node of
    ``nodes`` other than ``home`` when spread over ``nodes`` evenly (whole pages, the first
    nodes taking one more when they do not divide): what counts against those budgets."""
    _, length = page_range(offset, size, page)
    share, extra = divmod(length // page, len(nodes))
    return {n: (share + (i < extra)) * page for i, n in enumerate(nodes) if n != home}
