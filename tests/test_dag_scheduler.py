"""The sans-I/O scheduler on the 8-node, 64-CPU topology dump with a simulated store."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from plasma.dag.branches import expand_map
from plasma.dag.graph import Graph
from plasma.dag.scheduler import Scheduler
from plasma.dag.spec import TaskSpec
from plasma.errors import BadRequest
from plasma.placement import Placer
from plasma.topology import Topology

DUMP = Path("/work/shared/topologies/64amd64-4s2n4ca2co.tar.bz2")


@pytest.fixture(scope="module")
def topology(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    if not DUMP.exists():
        pytest.skip(f"topology dump {DUMP} not available")
    root = tmp_path_factory.mktemp("topo")
    with tarfile.open(DUMP) as tar:
        tar.extractall(root, filter="data")
    return Topology.from_sysfs(root / "64amd64-4s2n4ca2co")


def spec(name: str, **fields: object) -> TaskSpec:
    fields.setdefault("cmd", ["true"])
    return TaskSpec(name=name, **fields)  # type: ignore[arg-type]


def scheduler(topology: Topology, *tasks: TaskSpec) -> Scheduler:
    return Scheduler("run1", Graph.from_specs(tasks), Placer(topology))


def launch_ids(sched: Scheduler, store: dict[str, tuple[int, int]] | None = None) -> list[str]:
    return [launch.task_id for launch in sched.start_ready(store or {}, now=1.0)]


def test_dependencies_run_in_order(topology: Topology) -> None:
    sched = scheduler(
        topology,
        spec("c", inputs=["y"]),
        spec("b", inputs=["x"], outputs=["y"]),
        spec("a", outputs=["x"]),
        spec("d", after=["a"]),
    )
    assert launch_ids(sched) == ["a"]
    assert launch_ids(sched) == []  # nothing else is ready while a runs
    sched.finished("a", 0, now=2.0)
    assert launch_ids(sched) == ["b", "d"]
    sched.finished("b", 0, now=3.0)
    sched.finished("d", 0, now=3.0)
    assert launch_ids(sched) == ["c"]
    sched.finished("c", 0, now=4.0)
    assert sched.done and sched.status == "succeeded"
    rows = {t["id"]: t for t in sched.record()["tasks"]}
    assert rows["c"]["start"] == 1.0 and rows["c"]["end"] == 4.0 and rows["c"]["exit_code"] == 0


def test_independent_tasks_share_the_machine_until_cpus_run_out(topology: Topology) -> None:
    sched = scheduler(topology, spec("a", cpus=40), spec("b", cpus=40), spec("c", cpus=8))
    first = sched.start_ready({}, now=0.0)
    assert [launch.task_id for launch in first] == ["a", "c"]  # b does not fit next to a
    assert not set(first[0].cpus) & set(first[1].cpus)
    assert sched.ready() == ["b"]
    sched.finished("a", 0, now=1.0)
    assert launch_ids(sched) == ["b"]


def test_task_runs_next_to_its_input_data(topology: Topology) -> None:
    store = {"big": (5, 512 << 20), "small": (2, 1 << 20)}  # simulated store: name -> node, bytes
    sched = scheduler(
        topology,
        spec("make", outputs=["big", "small"]),
        spec("use", inputs=["big", "small"], cpus=4, membind=True),
    )
    launch_ids(sched)
    sched.finished("make", 0, now=1.0)
    (launch,) = sched.start_ready(store, now=1.0)
    node5 = sorted(topology.nodes[5].cpus)
    assert launch.cpus == node5[:4] or set(launch.cpus) <= set(node5)
    assert launch.nodes == [5] and launch.membind == [5]
    row = sched.record()["tasks"][1]
    assert row["node"] == 5 and set(row["cpus"]) <= set(node5)
    assert "input data" in sched.tasks["use"].explanation


def test_failure_skips_dependents_and_cancels_the_rest(topology: Topology) -> None:
    sched = scheduler(
        topology,
        spec("a", outputs=["x"]),
        spec("slow"),
        spec("b", inputs=["x"], outputs=["y"]),
        spec("c", inputs=["y"]),
    )
    assert launch_ids(sched) == ["a", "slow"]
    sched.finished("a", 3, now=2.0)
    assert sched.status == "failed"
    assert sched.take_cancellations() == ["slow"]
    assert sched.take_cancellations() == []
    sched.finished("slow", -15, now=3.0)
    status = {t["id"]: (t["status"], t["error"]) for t in sched.record()["tasks"]}
    assert status["a"] == ("failed", "exit code 3")
    assert status["slow"][0] == "cancelled"
    assert status["b"] == ("skipped", "skipped: depends on failed task 'a'")
    assert status["c"][0] == "skipped"
    assert sched.done and launch_ids(sched) == []


def test_retry_then_success(topology: Topology) -> None:
    sched = scheduler(topology, spec("flaky", retries=2), spec("next", after=["flaky"]))
    assert launch_ids(sched) == ["flaky"]
    sched.finished("flaky", 1, now=1.0, error="")
    assert sched.status == "running" and sched.ready() == ["flaky"]
    assert launch_ids(sched) == ["flaky"]
    sched.finished("flaky", None, now=2.0, error="timed out after 1s, killed")
    assert [launch.attempt for launch in sched.start_ready({}, now=2.0)] == [3]
    sched.finished("flaky", 0, now=3.0)
    row = sched.record()["tasks"][0]
    assert (row["status"], row["attempts"], row["start"], row["end"]) == ("succeeded", 3, 1.0, 3.0)
    assert launch_ids(sched) == ["next"]


def test_retries_exhausted_fail_the_run(topology: Topology) -> None:
    sched = scheduler(topology, spec("bad", retries=1))
    for _ in range(2):
        assert launch_ids(sched) == ["bad"]
        sched.finished("bad", 2, now=1.0)
    assert sched.status == "failed" and sched.tasks["bad"].attempts == 2


def test_impossible_placement_fails_clearly(topology: Topology) -> None:
    sched = scheduler(
        topology, spec("huge", cpus=100), spec("pinned", cpus=9, policy="single-numa-node")
    )
    assert launch_ids(sched) == []
    assert sched.status == "failed"
    assert "placement impossible" in sched.tasks["huge"].error
    assert sched.tasks["pinned"].status == "skipped"


def test_single_node_request_waits_for_cpus_instead_of_failing(topology: Topology) -> None:
    sched = scheduler(topology, spec("all", cpus=64), spec("one"))
    assert launch_ids(sched) == ["all"]
    assert sched.ready() == ["one"] and sched.status == "running"
    sched.finished("all", 0, now=1.0)
    assert launch_ids(sched) == ["one"]


def test_dynamic_map_joins_the_live_run(topology: Topology) -> None:
    sched = scheduler(
        topology, spec("parent", cpus=64, outputs=["total"]), spec("after", inputs=["total"])
    )
    assert launch_ids(sched) == ["parent"]
    template = spec("sq", outputs=["sq-{i}"])
    ids = sched.submit("parent", expand_map(template, ["p0", "p1"]), available={"p0", "p1"})
    assert ids == ["parent/sq-0", "parent/sq-1"]
    assert launch_ids(sched) == []  # the parent holds every CPU ...
    sched.block("parent")  # ... until it waits for its branches
    assert launch_ids(sched) == ids
    assert not sched.settled(ids)
    for task_id in ids:
        sched.finished(task_id, 0, now=2.0)
    assert sched.settled(ids)
    sched.finished("parent", 0, now=3.0)
    assert launch_ids(sched) == ["after"]
    rows = {t["id"]: t for t in sched.record()["tasks"]}
    assert rows["parent/sq-1"]["parent"] == "parent" and rows["parent/sq-1"]["name"] == "sq-1"
    assert rows["parent/sq-1"]["inputs"] == ["p1"] and rows["parent/sq-1"]["outputs"] == ["sq-1"]


def test_dynamic_tasks_are_validated(topology: Topology) -> None:
    sched = scheduler(topology, spec("parent", outputs=["x"]), spec("idle", after=["parent"]))
    with pytest.raises(BadRequest, match="not running"):
        sched.submit("parent", [spec("t")])
    launch_ids(sched)
    with pytest.raises(BadRequest, match="not an output of any task"):
        sched.submit("parent", [spec("t", inputs=["missing"])])
    with pytest.raises(BadRequest, match="output of both"):
        sched.submit("parent", [spec("t", outputs=["x"])])
    assert sched.submit("parent", [spec("t", inputs=["x"])]) == ["parent/t"]
    assert sched.ready() == []  # x is not in the store yet: t waits for its producer
    with pytest.raises(BadRequest, match="duplicate task id"):
        sched.submit("parent", [spec("t")])


def test_interrupt_skips_pending_and_cancels_running(topology: Topology) -> None:
    sched = scheduler(topology, spec("a"), spec("b", after=["a"]))
    launch_ids(sched)
    sched.interrupt()
    assert sched.status == "interrupted" and sched.take_cancellations() == ["a"]
    sched.finished("a", -2, now=1.0)
    assert [t.status for t in sched.tasks.values()] == ["cancelled", "skipped"]
    assert sched.status == "interrupted" and sched.done


def test_wait_on_a_task_that_needs_the_waiter_is_refused(topology: Topology) -> None:
    sched = scheduler(topology, spec("parent", outputs=["x"]))
    launch_ids(sched)
    (child,) = sched.submit("parent", [spec("c", inputs=["x"])])
    with pytest.raises(BadRequest, match="deadlock"):
        sched.check_wait("parent", [child])
    with pytest.raises(BadRequest, match="unknown task 'ghost'"):
        sched.check_wait("parent", ["ghost"])
