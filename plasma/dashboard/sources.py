"""Where a dashboard's snapshots come from: a coordinator in this process (``serve``), or a
DAG runner's client and its live run (``dag run``). Reads only: stats, the object listing
and the CPU affinity of running tasks; nothing here changes the store or a process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from plasma.dashboard.state import Snapshot, largest_objects, task_key
from plasma.errors import PlasmaError
from plasma.linux.affinity import get_affinity

if TYPE_CHECKING:
    from plasma.coordinator import Coordinator

__all__ = ["MAX_LISTED", "client_snapshot", "coordinator_snapshot"]

MAX_LISTED = 20_000  # above this many objects the largest are not looked for (a full scan)


def coordinator_snapshot(coordinator: Coordinator) -> Snapshot:
    """Stats, largest objects and running tasks' CPUs of ``coordinator`` (on its own thread)."""
    stats = coordinator.stats()
    objects, note = None, _too_many(stats)
    if not note:
        rows = ({**_fields(o), "id": o.id.hex()} for o in coordinator.store.objects())
        objects = largest_objects(rows)
    return Snapshot(stats, objects, note, task_cpus=_running_cpus(stats))


async def client_snapshot(client: Any, record: Callable[[], dict[str, Any]]) -> Snapshot:
    """Stats and largest objects read through ``client`` (a ``plasma.aio`` client), and the
    run as ``record()`` says it is now."""
    stats = await client.stats()
    objects, note = None, _too_many(stats)
    if not note:
        rows = await client.list()
        objects = largest_objects({**row, "id": oid.hex()} for oid, row in rows.items())
    return Snapshot(stats, objects, note, run=record())


def _too_many(stats: dict[str, Any]) -> str:
    count = stats.get("objects", 0)
    if count <= MAX_LISTED:
        return ""
    return f"{count} objects: the largest are looked for up to {MAX_LISTED} objects"


def _fields(row: Any) -> dict[str, Any]:
    return {f: getattr(row, f) for f in row.__struct_fields__}


def _running_cpus(stats: dict[str, Any]) -> dict[str, list[int]]:
    """``run/task`` -> CPUs of each running task the coordinator samples, when it is pinned
    (allowed fewer CPUs than the machine has)."""
    every = {c for node in stats.get("numa_nodes", {}).values() for c in node.get("cpus", [])}
    out = {}
    for task in stats.get("tasks", []):
        if task["state"] != "running":
            continue
        try:
            cpus = get_affinity(task["pid"])
        except (PlasmaError, OSError):  # ended meanwhile
            continue
        if not cpus >= every:
            out[task_key(task.get("run_id") or "", task["task_id"])] = sorted(cpus)
    return out
