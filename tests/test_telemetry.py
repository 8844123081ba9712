"""The coordinator's task registry: sampling real processes, ends, submitted samples, stats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

import plasma.aio
from plasma.client import Client
from plasma.errors import BadRequest, ObjectExists, ObjectNotFound
from plasma.linux.perf import HARDWARE_EVENTS, SOFTWARE_EVENTS
from plasma.perf import Locality, PerfSample
from plasma.telemetry import DONE, EXITED, REPORTED, RUNNING, Telemetry, numa_nodes
from tests.conftest import RunningCoordinator, run_guest_script, wait_until
from tests.helpers import HARDWARE_COUNTERS, HAS_CPU_PMU, NO_HARDWARE_COUNTERS, NO_SUCH_PID

PAGES_64_MIB = (64 << 20) // 4096
# Waits for a byte on stdin, touches 64 MiB (one fault per 4 KiB page), says so, then waits
# for stdin to close before exiting.
TOUCHER = textwrap.dedent(
    """
    import mmap, os
    os.read(0, 1)
    size = 64 << 20
    m = mmap.mmap(-1, size)
    m.madvise(mmap.MADV_NOHUGEPAGE)
    for offset in range(0, size, mmap.PAGESIZE):
        m[offset] = 1
    os.write(1, b"touched")
    os.read(0, 1)
    """
)


class Toucher:
    """A child process that touches 64 MiB when told to."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", TOUCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        self.pid = self.proc.pid

    def touch(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"x")
        self.proc.stdin.flush()
        assert self.proc.stdout.read(7) == b"touched"

    def finish(self) -> int:
        """Let it exit and reap it."""
        self.proc.communicate(timeout=30)
        return self.proc.returncode


@pytest.fixture
def toucher() -> Iterator[Toucher]:
    child = Toucher()
    try:
        yield child
    finally:
        child.proc.kill()
        child.proc.wait()


def _row(rows: list[dict[str, Any]], task_id: str) -> dict[str, Any]:
    return next(r for r in rows if r["task_id"] == task_id)


# ---------------------------------------------------------------- the registry


def test_a_registered_task_is_sampled_until_its_process_ends(toucher: Toucher) -> None:
    telemetry = Telemetry(interval=1.0)
    telemetry.register("touch", toucher.pid, node=0, run_id="r1")
    first = _row(telemetry.tasks(), "touch")
    assert first["state"] == RUNNING and first["samples"] == 1  # sampled at registration
    assert first["pid"] == toucher.pid and first["run_id"] == "r1" and first["node"] == 0
    toucher.touch()
    assert telemetry.sample_all() == 1
    live = _row(telemetry.tasks(), "touch")["latest"]
    assert PAGES_64_MIB <= live["counters"]["page-faults"] <= PAGES_64_MIB + 1500
    assert live["locality"]["local_fraction"] == 1.0
    assert toucher.finish() == 0
    assert telemetry.sample_all() == 1  # notices the end: final sample, sampler closed
    ended = _row(telemetry.tasks(), "touch")
    assert ended["state"] == EXITED and ended["ended"] is not None and ended["samples"] == 3
    assert ended["latest"]["counters"]["page-faults"] >= live["counters"]["page-faults"]
    assert ended["latest"]["locality"] == live["locality"]  # as last seen: the memory is gone
    assert telemetry.sample_all() == 0
    with pytest.raises(ObjectNotFound):
        telemetry.done("touch")  # tasks are known by run and name
    telemetry.done("touch", "r1")  # the owner reporting the end afterwards is fine
    assert _row(telemetry.tasks(), "touch")["state"] == DONE


def test_done_takes_a_final_sample_and_stops_sampling() -> None:
    telemetry = Telemetry()
    telemetry.register("me", os.getpid())
    telemetry.done("me")
    row = _row(telemetry.tasks(), "me")
    assert row["state"] == DONE and row["samples"] == 2
    assert telemetry.sample_all() == 0
    with pytest.raises(ObjectNotFound, match="no registered task 'other'"):
        telemetry.done("other")
    telemetry.register("me", os.getpid())  # a retry starts a fresh series
    assert _row(telemetry.tasks(), "me")["samples"] == 1
    telemetry.close()


@pytest.mark.skipif(not HARDWARE_COUNTERS, reason=NO_HARDWARE_COUNTERS)
def test_hardware_events_are_counted_where_the_kernel_counts_them() -> None:
    telemetry = Telemetry()
    telemetry.register("me", os.getpid())
    assert sum(range(1_000_000)) > 0  # work to count
    telemetry.done("me")
    latest = _row(telemetry.tasks(), "me")["latest"]
    telemetry.close()
    for event in HARDWARE_EVENTS:
        assert event.name not in latest["unsupported"], latest["unsupported"]
    assert (latest["counters"]["cycles"] or 0) > 1_000_000
    assert (latest["counters"]["instructions"] or 0) > 1_000_000


@pytest.mark.skipif(HAS_CPU_PMU, reason="this machine has a hardware PMU")
def test_hardware_events_are_unsupported_with_reasons_never_zero() -> None:
    telemetry = Telemetry()
    telemetry.register("me", os.getpid())
    latest = _row(telemetry.tasks(), "me")["latest"]
    telemetry.close()
    for event in HARDWARE_EVENTS:
        assert latest["counters"][event.name] is None
        assert "not supported" in latest["unsupported"][event.name]
    for event in SOFTWARE_EVENTS:
        assert latest["counters"][event.name] is not None


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("", 1), BadRequest, "task_id must not be empty"),
        (("t", 0), BadRequest, "pid must be positive"),
        (("t", NO_SUCH_PID), BadRequest, f"no process {NO_SUCH_PID}"),
        (("t", 1, -1), BadRequest, "node must be a NUMA node id"),
    ],
)
def test_bad_registrations_are_refused(args: tuple[Any, ...], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        Telemetry().register(*args)


def test_a_running_task_cannot_be_registered_twice() -> None:
    telemetry = Telemetry()
    telemetry.register("t", os.getpid())
    with pytest.raises(ObjectExists, match="already registered"):
        telemetry.register("t", os.getpid())
    telemetry.close()


def test_interval_must_be_positive() -> None:
    with pytest.raises(BadRequest, match="interval must be positive"):
        Telemetry(interval=0)


def _sample(pid: int = 42, faults: int = 7) -> PerfSample:
    return PerfSample(
        pid=pid,
        time=1.0,
        counters={"page-faults": faults, "cycles": None},
        unsupported={"cycles": "not supported by this machine's PMU"},
        locality=Locality({0: 3, 1: 1}, home_node=1, local_fraction=0.25),
    )


def test_submitted_samples_are_kept_also_as_json_dicts() -> None:
    telemetry = Telemetry()
    as_json = json.loads(json.dumps(msgspec.to_builtins(_sample(faults=9))))  # str node keys
    telemetry.submit("self-timed", _sample())
    telemetry.submit("self-timed", as_json)
    row = _row(telemetry.tasks(), "self-timed")
    assert row["state"] == REPORTED and row["pid"] == 42 and row["node"] == 1
    assert row["samples"] == 2 and row["latest"]["counters"]["page-faults"] == 9
    assert row["latest"]["locality"]["pages_per_node"] == {0: 3, 1: 1}
    with pytest.raises(ObjectNotFound):
        telemetry.done("self-timed")  # nobody registered it


@pytest.mark.parametrize(
    "bad", [{}, {"pid": "x", "time": 1, "counters": {}, "unsupported": {}, "locality": None}]
)
def test_malformed_submitted_samples_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(BadRequest, match="not a perf sample for task 't'"):
        Telemetry().submit("t", bad)


def test_ended_tasks_are_forgotten_beyond_max_tasks_running_ones_never() -> None:
    telemetry = Telemetry(max_tasks=2)
    telemetry.register("running", os.getpid())
    telemetry.submit("old", _sample())
    telemetry.submit("new", _sample())
    assert sorted(r["task_id"] for r in telemetry.tasks()) == ["new", "running"]
    assert telemetry.ring.series("old") == []
    telemetry.submit("newer", _sample())
    assert sorted(r["task_id"] for r in telemetry.tasks()) == ["newer", "running"]
    telemetry.close()


def test_numa_nodes_reads_per_node_meminfo_with_a_proc_fallback(tmp_path: Path) -> None:
    node1 = tmp_path / "sys/devices/system/node/node1"
    node1.mkdir(parents=True)
    (node1 / "meminfo").write_text("Node 1 MemTotal:  2048 kB\nNode 1 MemFree:   1024 kB\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/meminfo").write_text("MemTotal:  4096 kB\nMemFree:  512 kB\n")
    nodes = numa_nodes({1: [3, 2], 0: [0, 1]}, tmp_path)
    assert nodes == {
        0: {"cpus": [0, 1], "memory_total": 4096 * 1024, "memory_free": 512 * 1024},
        1: {"cpus": [2, 3], "memory_total": 2048 * 1024, "memory_free": 1024 * 1024},
    }
    assert numa_nodes({2: []}, tmp_path)[2]["memory_total"] == 0  # unreadable: zero, no crash


# ---------------------------------------------------------------- over a coordinator


def _task(client: Client, task_id: str) -> dict[str, Any]:
    return _row(client.stats()["tasks"], task_id)


def test_stats_show_a_registered_child_touching_64_mib(
    coordinator_factory: Callable[..., RunningCoordinator], toucher: Toucher
) -> None:
    coord = coordinator_factory("--memory", "64MiB", "--sample-interval", "0.05")
    with Client(coord.socket) as client:
        client.register_task("touch", toucher.pid, node=0, run_id="run-1")
        toucher.touch()

        def faults() -> int:
            return _task(client, "touch")["latest"]["counters"]["page-faults"] or 0

        wait_until(lambda: faults() >= PAGES_64_MIB, what="the sampler to see 16,384 faults")
        task = _task(client, "touch")
        assert task["state"] == RUNNING and task["run_id"] == "run-1"
        assert PAGES_64_MIB <= faults() <= PAGES_64_MIB + 1500
        assert task["latest"]["locality"]["local_fraction"] == 1.0
        assert task["latest"]["locality"]["pages_per_node"][0] >= PAGES_64_MIB
        if not HAS_CPU_PMU:
            assert set(task["latest"]["unsupported"]) == {e.name for e in HARDWARE_EVENTS}
        assert toucher.finish() == 0
        wait_until(lambda: _task(client, "touch")["state"] == EXITED, what="the end noticed")
        client.task_done("touch", run_id="run-1")
        assert _task(client, "touch")["state"] == DONE
        with pytest.raises(ObjectNotFound):
            client.task_done("nope")
        with pytest.raises(BadRequest, match=f"no process {NO_SUCH_PID}"):
            client.register_task("ghost", NO_SUCH_PID)
        assert client.stats()["errors"] == {"object_not_found": 1, "bad_request": 1}
    assert coord.stop() == 0


async def test_the_trio_client_registers_submits_and_reads_stats(
    coordinator: RunningCoordinator,
) -> None:
    async with plasma.aio.connect(coordinator.socket) as client:
        await client.register_task("me", os.getpid(), run_id="r")
        await client.submit_sample("self", _sample())
        await client.task_done("me", run_id="r")
        stats = await client.stats()
        rows = {r["task_id"]: r for r in stats["tasks"]}
        assert rows["me"]["state"] == DONE and rows["me"]["latest"]["pid"] == os.getpid()
        assert rows["self"]["state"] == REPORTED
        assert rows["self"]["latest"] == msgspec.to_builtins(_sample())
        with pytest.raises(BadRequest, match="not a perf sample"):
            await client.submit_sample("bad", {"pid": 1})


# ---------------------------------------------------------------- two NUMA nodes

GUEST_SCRIPT = textwrap.dedent(
    """
    import json, subprocess, sys, textwrap
    from plasma.telemetry import Telemetry

    child = textwrap.dedent('''
        import mmap, os
        from plasma.linux import numa
        numa.set_mempolicy(numa.MPOL_BIND, [1])
        m = mmap.mmap(-1, 32 << 20)
        for offset in range(0, len(m), mmap.PAGESIZE):
            m[offset] = 1
        os.write(1, b"touched")
        os.read(0, 1)
    ''')
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)
    assert proc.stdout.read(7) == b"touched"
    telemetry = Telemetry()
    telemetry.register("home1", proc.pid, node=1)
    telemetry.register("home0", proc.pid, node=0)
    rows = {r["task_id"]: r["latest"]["locality"] for r in telemetry.tasks()}
    proc.communicate()
    print("RESULT " + json.dumps(rows))
    """
)


@pytest.mark.numa_vm
def test_locality_of_a_task_bound_to_node_1_in_a_two_node_vm(tmp_path: Path) -> None:
    rows = run_guest_script(GUEST_SCRIPT, nodes=2, cwd=tmp_path)
    pages = {int(n): c for n, c in rows["home1"]["pages_per_node"].items()}
    total = sum(pages.values())
    assert pages[1] >= (32 << 20) // 4096  # the bound 32 MiB, all on node 1
    assert rows["home1"]["local_fraction"] == pytest.approx(pages[1] / total)
    assert rows["home0"]["local_fraction"] == pytest.approx(pages.get(0, 0) / total)
    assert rows["home1"]["local_fraction"] > rows["home0"]["local_fraction"]


def test_tasks_of_different_runs_may_share_a_name() -> None:
    telemetry = Telemetry()
    telemetry.register("load", os.getpid(), run_id="a")
    telemetry.register("load", os.getpid(), run_id="b")
    with pytest.raises(ObjectExists):
        telemetry.register("load", os.getpid(), run_id="a")
    assert sorted(r["run_id"] for r in telemetry.tasks() if r["task_id"] == "load") == ["a", "b"]
    telemetry.done("load", "a")
    states = {r["run_id"]: r["state"] for r in telemetry.tasks()}
    assert states == {"a": DONE, "b": RUNNING}
    telemetry.close()
