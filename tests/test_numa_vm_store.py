"""The store on real NUMA kernels: objects land on the node asked for, 100% of their pages.

Each module-scoped fixture boots ``numa-vm`` once (2 nodes, then 4) and runs
tests/scripts/numa_vm_checks.py inside; the tests assert on the JSON it prints.
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_in_numa_vm, vm_result
from tests.helpers import HUGE, REPO

CHECKS = REPO / "tests" / "scripts" / "numa_vm_checks.py"
MiB = 1 << 20

pytestmark = [pytest.mark.numa_vm, pytest.mark.coordinator]


def run_checks(nodes: int, tmp_path: Path) -> dict[str, Any]:
    proc = run_in_numa_vm(
        [sys.executable, str(CHECKS), str(nodes)], nodes=nodes, cpus=nodes, cwd=tmp_path
    )
    result: dict[str, Any] = vm_result(proc)
    return result


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_checks(2, tmp_path_factory.mktemp("vm2"))


@pytest.fixture(scope="module")
def four(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_checks(4, tmp_path_factory.mktemp("vm4"))


def pages(size: int, page_size: int, offset_in_page: int = 0) -> int:
    return -(-(offset_in_page + size) // page_size)


def assert_all_on(counts: dict[str, int], node: int, what: str) -> None:
    """Every page is on ``node``: one key only, the node (no other node, no unmapped page)."""
    assert list(counts) == [str(node)], f"{what}: pages per node {counts}, expected all on {node}"
    assert counts[str(node)] > 0


LARGE = ("create", "put_large")  # objects with their own allocation
SMALL = ("put_small",)  # small objects, written through the client's arena


def assert_object_rows(
    rows: dict[str, Any], kinds: tuple[str, ...], page_size: int = mmap.PAGESIZE, size: int = 0
) -> None:
    for key, row in rows.items():
        assert_objects_on(row, int(key), kinds, page_size, size)


def assert_objects_on(
    row: dict[str, Any], node: int, kinds: tuple[str, ...], page_size: int, size: int
) -> None:
    """The objects of ``kinds`` are listed on ``node`` and all their pages are there; the
    created object (``size`` bytes) spans the pages it should."""
    for kind in kinds:
        assert_all_on(row[kind]["pages"], node, f"{kind} on node {node}")
        assert row[kind]["listed_node"] == node, f"{kind} listed on the wrong node"
    assert sum(row["create"]["pages"].values()) >= pages(size, page_size)


def test_two_node_vm_is_numa(two: dict[str, Any]) -> None:
    assert two["online"] == "0-1"


def test_objects_land_on_requested_node_normal_pages(two: dict[str, Any]) -> None:
    assert sorted(two["normal"]) == ["0", "1"]
    assert_object_rows(two["normal"], LARGE, mmap.PAGESIZE, 3 * MiB + 123)


def test_objects_land_on_requested_node_hugepages(two: dict[str, Any]) -> None:
    assert sorted(two["huge"]) == ["0", "1"]
    assert_object_rows(two["huge"], LARGE, HUGE, MiB + 123)


def test_small_objects_land_on_requested_node(two: dict[str, Any]) -> None:
    assert_object_rows(two["normal"], SMALL)
    assert_object_rows(two["huge"], SMALL, HUGE)


def test_hugepages_reserved_per_node_and_read_back(two: dict[str, Any]) -> None:
    status, rows = two["reserve_cli"]
    assert status == 0
    assert rows == [{"node": 0, "page_size": HUGE, "requested": 6, "granted": 6, "free": 6}]
    assert two["reserve_node1"] == 2


def test_hugepage_shortage_on_node1_is_a_clear_store_full(two: dict[str, Any]) -> None:
    shortage = two["shortage"]
    assert shortage is not None, "a create needing a 3rd hugepage on node 1 succeeded"
    assert shortage["type"] == "StoreFull" and shortage["code"] == "store_full"
    assert "hugepages on node 1" in shortage["message"], shortage["message"]
    # The bound reservation did not borrow node 0's free hugepages, and nobody got SIGBUS.
    assert two["node0_free_before"] == two["node0_free_after"] > 0
    assert two["alive_after_shortage"] > 0
    assert two["exit_codes"] == {"normal": 0, "huge": 0}


def test_placement_report_on_two_nodes(two: dict[str, Any]) -> None:
    [normal] = two["pool_normal"]
    assert normal["node"] == 1 and normal["page_size"] == mmap.PAGESIZE
    assert normal["pages_per_node"] == {"1": normal["pages"]}
    assert normal["misplaced"] == normal["unresolved"] == 0
    [huge] = two["pool_huge"]
    assert huge["node"] == 0 and huge["page_size"] == HUGE and huge["pages"] == 2
    assert huge["pages_per_node"] == {"0": 2}
    assert huge["misplaced"] == huge["unresolved"] == 0


def test_four_nodes_objects_on_every_node(four: dict[str, Any]) -> None:
    assert four["online"] == "0-3"
    assert sorted(four["normal"]) == ["0", "1", "2", "3"]
    assert_object_rows(four["normal"], LARGE, mmap.PAGESIZE, MiB + 123)
    [report] = four["pool_normal"]
    assert report["pages_per_node"] == {"3": report["pages"]} and report["misplaced"] == 0
    assert four["exit_codes"] == {"normal": 0}


def test_four_nodes_small_objects_on_every_node(four: dict[str, Any]) -> None:
    assert_object_rows(four["normal"], SMALL)


def test_four_nodes_default_node_is_the_callers(four: dict[str, Any]) -> None:
    assert_objects_on(four["default_node"], 2, LARGE + SMALL, mmap.PAGESIZE, MiB)


def test_four_nodes_global_hugepage_reservation(four: dict[str, Any]) -> None:
    assert four["global_reserve"] == {"requested": 4, "granted": 4}
