"""The store's small parts alone (no Store): page arithmetic and what pages moved cost."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from plasma.store.moves import page_charges
from plasma.store.pages import page_range, round_up

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
