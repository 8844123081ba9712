"""Objects that follow their readers, on a real 4-node kernel (one ``numa-vm`` boot running
tests/scripts/numa_vm_follow.py): interleaved pages go round-robin over every node, a migrated
object's pages are all on the target while a reader keeps its view (same address, same
bytes), ``--follow-readers`` moves an object to the node that reads it, and a DAG task
with ``inputs_local: migrate`` finds its input on its own node."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_in_numa_vm, vm_result
from tests.helpers import REPO

pytestmark = [pytest.mark.numa_vm, pytest.mark.coordinator]


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    proc = run_in_numa_vm(
        [sys.executable, str(REPO / "tests" / "scripts" / "numa_vm_follow.py")],
        nodes=4,
        cpus=4,
        cwd=Path(tmp_path_factory.mktemp("vm-follow")),
    )
    result: dict[str, Any] = vm_result(proc)
    return result


def test_interleaved_pages_go_round_robin_over_every_node(vm: dict[str, Any]) -> None:
    pages = vm["interleave"]["pages"]
    assert sorted(set(pages)) == [0, 1, 2, 3]
    assert all(pages[i + 1] == (pages[i] + 1) % 4 for i in range(len(pages) - 1)), pages[:16]
    assert vm["interleave"]["same_bytes"] and vm["interleave"]["listed"] == [0, 1, 2, 3]


def test_a_migrated_object_is_all_on_its_node_under_a_reader_s_view(vm: dict[str, Any]) -> None:
    m = vm["migrate"]
    assert m["before"]["0"] >= sum(m["before"].values()) - 1
    assert m["reply"] == [2] and m["listed"] == [2]
    assert list(m["after"]["pages"]) == ["2"], m["after"]["pages"]  # 100% on node 2
    assert m["after"]["same_bytes"] and m["after"]["same_address"]
    assert m["placed_in"] >= 2 << 20  # counted against node 2's budget


def test_an_object_follows_the_node_that_reads_it(vm: dict[str, Any]) -> None:
    f = vm["follow"]
    # (its first page may be the migrated object's last: objects are 64-byte aligned)
    assert f["before"]["0"] >= sum(f["before"].values()) - 1
    assert f["listed"] == [1], f"not moved after {f['seconds']:.0f} s"
    assert list(f["after"]["pages"]) == ["1"] and f["after"]["same_bytes"]


def test_a_replica_s_pages_are_on_its_node_and_its_readers_get_it(vm: dict[str, Any]) -> None:
    r = vm["replicate"]
    assert r["listed"] == [3]
    assert list(r["reader_on_3"]) == ["3"]  # 100% of the copy on node 3
    assert r["reader_on_1"]["0"] >= sum(r["reader_on_1"].values()) - 1  # the object
    assert list(r["held_on_3"]["pages"]) == ["3"] and r["held_on_3"]["same_bytes"]
    # a second get, from the directory with no request, is the copy on node 3 too
    assert list(r["again_on_3"]["pages"]) == ["3"] and r["again_on_3"]["gets"] == 0


def test_dag_tasks_read_their_migrated_or_replicated_input_on_their_node(
    vm: dict[str, Any],
) -> None:
    assert vm["dag_input_pages"] == [[2], [3]]


def test_deleting_moved_objects_gives_the_budgets_back(vm: dict[str, Any]) -> None:
    assert vm["placed_in_after_delete"] == [0, 0, 0, 0]
    assert vm["replicas_after_delete"] == 0
    assert vm["exit_code"] == 0
