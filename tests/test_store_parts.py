"""The store's small parts alone (no Store): page arithmetic, what pages moved cost, and
the memory of the nodes (segments within budgets, fallback files)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasma.errors import BadRequest
from plasma.records import ObjectLocation
from plasma.store.arenas import Arena, arena_size
from plasma.store.memory import Memory, Node, Segment
from plasma.store.objects import ObjectRecord
from plasma.store.pages import page_charges, page_range, round_up
from tests.helpers import FallbackProvider

PAGE = 4096


def test_round_up_and_page_range() -> None:
    assert [round_up(n, 64) for n in (0, 1, 64, 65)] == [0, 64, 64, 128]
    assert page_range(0, 1, PAGE) == (0, PAGE)
    assert page_range(PAGE - 1, 2, PAGE) == (0, 2 * PAGE)  # straddles a page boundary
    assert page_range(3 * PAGE, PAGE, PAGE) == (3 * PAGE, PAGE)


def test_page_charges_spread_whole_pages_and_spare_the_home_node() -> None:
    # 3 pages over nodes (0, 1): node 0 (home) takes 2, node 1 is charged 1 page
    assert page_charges(0, 0, 3 * PAGE, (0, 1), PAGE) == {1: PAGE}
    assert page_charges(0, 0, 3 * PAGE, (1, 2), PAGE) == {1: 2 * PAGE, 2: PAGE}
    assert page_charges(1, 0, PAGE, (1,), PAGE) == {}


@given(
    st.integers(0, 1 << 20),
    st.integers(1, 1 << 22),
    st.lists(st.integers(0, 7), min_size=1, max_size=8, unique=True),
    st.integers(0, 7),
)
def test_page_charges_add_up_to_the_pages_off_the_home_node(
    offset: int, size: int, nodes: list[int], home: int
) -> None:
    charges = page_charges(home, offset, size, tuple(nodes), PAGE)
    _, length = page_range(offset, size, PAGE)
    assert home not in charges and all(v % PAGE == 0 for v in charges.values())
    if home not in nodes:
        assert sum(charges.values()) == length  # every page lands on a charged node
    else:
        assert sum(charges.values()) <= length
    assert max(charges.values(), default=0) - min(charges.values(), default=0) <= PAGE


def memory(budget: int = 4 * PAGE, **kw: object) -> tuple[Memory, list[int]]:
    freed: list[int] = []
    options: dict = {
        "page_size": PAGE,
        "segment_size": 2 * PAGE,
        "alignment": 64,
        "fallback": False,
        "fallback_files": 1,
        "fallback_max": None,
    }
    options.update(kw)
    mem = Memory({0: budget, 1: budget}, FallbackProvider(), on_freed=freed.append, **options)
    return mem, freed


def test_memory_grows_segments_within_the_budget_and_drops_empty_ones_for_room() -> None:
    mem, freed = memory()
    nd = mem.nodes[0]
    a = mem.take(nd, 2 * PAGE)  # one segment of 2 pages
    b = mem.take(nd, 2 * PAGE)  # a second: the budget is full
    assert a is not None and b is not None and a[0] is not b[0]
    assert mem.take(nd, 64) is None and mem.used == 4 * PAGE == nd.used
    assert mem.free_range(*a, 2 * PAGE) and mem.used == 2 * PAGE
    big = mem.take(nd, 2 * PAGE + 64)  # needs 3 pages: the empty segment is given back first
    assert big is None  # (2 pages free + 0 room: still too little)
    assert mem.free_range(*b, 2 * PAGE)
    big = mem.take(nd, 3 * PAGE)
    assert big is not None and sorted(freed) == [a[0].id, b[0].id]
    assert [s.size for s in nd.segments] == [3 * PAGE]  # (what it needs, past segment_size)


def test_memory_falls_back_to_files_within_their_bounds() -> None:
    mem, freed = memory(fallback=True, fallback_files=1, fallback_max=2 * PAGE)
    nd = mem.nodes[0]
    assert mem.take_fallback(nd, 3 * PAGE) is None and "at most 8192 bytes" in nd.shortage
    placed = mem.take_fallback(nd, PAGE)
    assert placed is not None and placed[0].fallback and mem.used == 0  # (outside the budget)
    assert mem.take_fallback(nd, PAGE) is None and "all 1 fallback files" in nd.shortage
    assert not mem.free_range(*placed, PAGE)  # no room within a budget ...
    assert freed == [placed[0].id] and mem.fallback_segments == 0  # ... the file went
    no_fallback, _ = memory()
    assert no_fallback.take_fallback(no_fallback.nodes[0], PAGE) is None


def test_memory_charges_pages_moved_to_other_nodes() -> None:
    mem, _ = memory()
    seg, offset = mem.take(mem.nodes[0], 2 * PAGE)  # type: ignore[misc]
    rec = ObjectRecord(ObjectLocation(seg.id, offset, 2 * PAGE, 0, 0), 2 * PAGE, 1, 0.0)
    assert mem.nodes_of(rec) == [0]
    charges = mem.charges(rec, (0, 1))
    assert charges == {1: PAGE}
    mem.charge(charges, +1)
    assert mem.nodes[1].placed_in == PAGE and mem.nodes[1].segment_room(PAGE) == 3 * PAGE
    mem.charge(charges, -1)
    rec.pages_on = (0, 1)
    assert mem.nodes_of(rec) == [0, 1] and mem.nodes[1].placed_in == 0


def test_an_arena_hands_out_bytes_in_bump_order_and_says_what_was_skipped() -> None:
    nd = Node(0, 1 << 20)
    arena = Arena(Segment(1, nd, 4 * PAGE, 64), PAGE, 2 * PAGE, grant=7)
    assert arena.take(b"a", PAGE, 64, 64) == (PAGE, 0) and arena.tail() == PAGE - 64
    assert arena.take(b"b", PAGE + 256, 128, 64) == (PAGE + 64, 192)  # 192 bytes skipped
    for offset, size, why in [
        (PAGE - 64, 64, "outside the arena"),
        (2 * PAGE - 64, 128, "outside the arena"),
        (PAGE + 512 + 8, 64, "not aligned"),
        (PAGE + 256, 64, "overlaps an earlier object"),
    ]:
        with pytest.raises(BadRequest, match=why):
            arena.check(b"x", offset, size, 64)
        with pytest.raises(BadRequest, match=why):
            arena.take(b"x", offset, size, 64)
    assert arena.cursor == PAGE + 384  # (what is refused changes nothing)


def test_arenas_of_a_node_reserve_at_most_a_quarter_of_its_budget() -> None:
    assert arena_size(1000, 100, budget=4000, reserved=0) == 1000
    assert arena_size(1000, 100, budget=4000, reserved=500) == 500
    assert arena_size(1000, 100, budget=4000, reserved=1000) == 100  # (at least what it needs)
