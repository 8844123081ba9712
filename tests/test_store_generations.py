"""The generation index alone: generation -> slot in sorted arrays, removals compacted away,
slots moved by a rebuild; against a dict, and bounded in size."""

from __future__ import annotations

from array import array
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plasma.store.generations import COMPACT_MIN, GenerationIndex
from tests.helpers import BULK_PATHS, bulk_path


@pytest.fixture(params=BULK_PATHS, autouse=True)
def bulk(request: pytest.FixtureRequest) -> Iterator[None]:
    """Compactions in C, then in numpy (the fallback without the extension)."""
    with bulk_path(request.param):
        yield


def test_a_generation_finds_its_slot_until_it_is_removed() -> None:
    index = GenerationIndex()
    index.add(5 << 32 | 7, 3)
    index.add(6 << 32 | 1, 9)
    assert index.slot(5 << 32 | 7) == 3 and index.slot(6 << 32 | 1) == 9
    assert index.slot(5 << 32 | 8) == -1  # (a forged low half finds nothing)
    assert index.remove(5 << 32 | 7) == 3
    assert index.slot(5 << 32 | 7) == -1 and len(index) == 1
    with pytest.raises(KeyError):
        index.remove(5 << 32 | 7)
    assert index.slot_array().tolist() == [9]


def test_generations_must_grow_and_only_slots_are_indexed() -> None:
    index = GenerationIndex()
    index.add(10, 1)
    with pytest.raises(ValueError):
        index.add(10, 2)
    with pytest.raises(ValueError):
        index.add(11, -1)
    assert index.slot_array().tolist() == [1]


def test_removed_entries_are_compacted_away_so_the_arrays_stay_bounded() -> None:
    index = GenerationIndex()
    for round_ in range(20):
        base = round_ * 10 * COMPACT_MIN
        for i in range(4 * COMPACT_MIN):
            index.add(base + i + 1, i)
        for i in range(4 * COMPACT_MIN):
            index.remove(base + i + 1)
    assert len(index) == 0
    assert len(index._gens) <= 2 * COMPACT_MIN + 1  # (not 80 * COMPACT_MIN)


def test_a_rebuild_moves_every_slot_and_drops_those_left_out() -> None:
    index = GenerationIndex()
    for i in range(6):
        index.add(100 + i, i)
    index.remove(102)
    new_of_old = array("q", [10, -1, 12, 13, 14, 15])  # (as SlotTable.move gives) slot 1: none
    index.move(new_of_old)
    assert [index.slot(100 + i) for i in range(6)] == [10, -1, -1, 13, 14, 15]
    assert index.slot_array().tolist() == [10, 13, 14, 15] and len(index) == 4
    index.add(200, 1)  # (the arrays grow again after a move)
    assert index.slot(200) == 1


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # (bulk: no state)
@given(
    st.lists(
        st.tuples(st.sampled_from(["add", "remove", "move"]), st.integers(0, 1 << 20)),
        max_size=300,
    )
)
def test_the_index_agrees_with_a_dict(ops: list[tuple[str, int]]) -> None:
    index = GenerationIndex()
    model: dict[int, int] = {}
    gen = 0
    for op, n in ops:
        if op == "add":
            gen += 1 + n % 3
            index.add(gen, n % 64)
            model[gen] = n % 64
        elif op == "remove" and model:
            victim = sorted(model)[n % len(model)]
            assert index.remove(victim) == model.pop(victim)
        elif op == "move":
            new_of_old = np.asarray([(s * 7 + n) % 80 - 16 for s in range(64)], dtype=np.int64)
            model = {g: int(new_of_old[s]) for g, s in model.items() if new_of_old[s] >= 0}
            index.move(new_of_old)
        assert len(index) == len(model)
        assert index.slot_array().tolist() == [model[g] for g in sorted(model)]
    for g in range(gen + 2):
        assert index.slot(g) == model.get(g, -1)
