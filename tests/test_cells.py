"""The sans-I/O cell model (plasma.cells): names, partitions, mismatches, placement, evict."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.topologies import unpack
from plasma.cells import (
    Cell,
    CellSpec,
    Partition,
    cell_mismatch,
    foreign_processes,
    parse_partition,
    place_cell,
    root_cpus,
    task_cell_name,
    validate_cell_name,
)
from plasma.errors import BadRequest, PlacementImpossible
from plasma.placement import PlacementRequest
from plasma.topology import Topology

ALL = frozenset(range(8))


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    """Eight nodes of eight CPUs (0-7 on node 0, 8-15 on node 1, ...)."""
    return Topology.from_sysfs(unpack("64amd64-4s2n4ca2co", tmp_path_factory.mktemp("cells")))


def cell(cpus: set[int], procs: tuple[int, ...] = (), partition: str = "member") -> Cell:
    c, m = frozenset(cpus), frozenset({0})
    return Cell("c", c, m, c, m, parse_partition(partition), procs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("member\n", Partition("member")),
        ("isolated", Partition("isolated")),
        ("root invalid", Partition("root", False)),
        (
            "root invalid (Parent unable to distribute cpu downstream)\n",
            Partition("root", False, "Parent unable to distribute cpu downstream"),
        ),
        (
            "isolated invalid (Parent is not a partition root)",
            Partition("isolated", False, "Parent is not a partition root"),
        ),
    ],
)
def test_parse_partition(text: str, expected: Partition) -> None:
    assert parse_partition(text) == expected
    assert str(expected) == text.strip()


@pytest.mark.parametrize("text", ["", "threaded", "root valid", "isolated invalid (x"])
def test_parse_partition_rejects(text: str) -> None:
    with pytest.raises(BadRequest, match=r"not a cpuset\.cpus\.partition value"):
        parse_partition(text)


@given(
    st.sampled_from(["member", "root", "isolated"]), st.booleans(), st.text("abc ()-", max_size=20)
)
def test_partition_text_round_trip(kind: str, valid: bool, reason: str) -> None:
    part = Partition(kind, valid, "" if valid else reason.strip())
    if "(" in part.reason or ")" in part.reason:
        return  # the kernel's reasons hold no parentheses
    assert parse_partition(str(part)) == part


@given(st.text(max_size=80))
def test_a_valid_name_is_one_plain_path_component(name: str) -> None:
    try:
        validate_cell_name(name)
    except BadRequest:
        return
    assert Path("/root", name).parent == Path("/root")
    assert "." not in name and "/" not in name and 1 <= len(name) <= 64


@given(st.text(min_size=1, max_size=300), st.text(max_size=300), st.integers(1, 1000))
def test_task_cell_names_are_valid_and_distinct(run_id: str, task_id: str, attempt: int) -> None:
    name = task_cell_name(run_id, task_id, attempt)
    assert validate_cell_name(name) == name
    assert task_cell_name(run_id, task_id, attempt + 1) != name
    assert task_cell_name(run_id + "x", task_id, attempt) != name


def test_task_cell_name_is_readable() -> None:
    assert task_cell_name("run", "fan/child.1", 1).startswith("t-fan_child_1-")


def test_cell_spec_validation() -> None:
    with pytest.raises(BadRequest, match="invalid cell name"):
        CellSpec("../x", frozenset({0}), frozenset({0}))
    with pytest.raises(BadRequest, match="at least one of its CPUs"):
        CellSpec("x", frozenset(), frozenset({0}))
    with pytest.raises(BadRequest, match="memory nodes"):
        CellSpec("x", frozenset({0}), frozenset())


def test_spec_for_placement(topo: Topology) -> None:
    assert CellSpec.confining("x", [8, 9], [1], topo, exclusive=True) == CellSpec(
        "x", frozenset({8, 9}), frozenset({1}), True
    )
    assert CellSpec.confining("y", [3], [], topo).mems == topo.allowed_nodes


def test_mismatch_names_every_difference() -> None:
    spec = CellSpec("c", frozenset({2, 3}), frozenset({1}), exclusive=True)
    got = Cell(
        "c",
        frozenset({2, 3}),
        frozenset({1}),
        frozenset({3}),
        frozenset(),
        parse_partition("isolated invalid (Parent is not a partition root)"),
    )
    assert cell_mismatch(spec, got) == (
        "cpuset.cpus.effective is 3, not 2-3; cpuset.mems.effective is empty, not 1; "
        "cpuset.cpus.partition is 'isolated invalid (Parent is not a partition root)', "
        "not 'isolated'"
    )
    ok = Cell("c", spec.cpus, spec.mems, spec.cpus, spec.mems, Partition("isolated"))
    assert cell_mismatch(spec, ok) is None
    assert "not 'member'" in (cell_mismatch(CellSpec("c", spec.cpus, spec.mems), ok) or "")


def test_place_cell_skips_the_cpus_of_other_cells(topo: Topology) -> None:
    request = PlacementRequest(cpus=8, policy="single-numa-node", numa=0)
    first = place_cell(topo, request, [])
    assert first.cpus == list(range(8))
    taken = CellSpec("a", frozenset(range(4)), frozenset({0}))
    with pytest.raises(PlacementImpossible, match="CPUs 0-3 belong to other cells"):
        place_cell(topo, request, [taken])
    second = place_cell(topo, PlacementRequest(cpus=4, numa=0), [taken])
    assert second.cpus == [4, 5, 6, 7]


def test_root_cpus_is_the_union() -> None:
    assert root_cpus([cell({1}), CellSpec("b", frozenset({2, 3}), frozenset({0}))]) == {1, 2, 3}
    assert root_cpus([]) == frozenset()


def test_foreign_processes() -> None:
    target = cell({2, 3}, procs=(10,))
    affinities = {
        10: frozenset({2, 3}),  # in the cell
        11: frozenset({3}),  # pinned onto it: foreign
        12: ALL,  # allowed everywhere: only with include_unpinned
        13: frozenset({0, 1}),  # elsewhere
        14: frozenset({1, 2}),  # overlaps: foreign
        15: frozenset({2}),  # the caller
    }
    assert foreign_processes(target, affinities, ALL, exclude=[15]) == [11, 14]
    assert foreign_processes(target, affinities, ALL, exclude=[15], include_unpinned=True) == [
        11,
        12,
        14,
    ]
