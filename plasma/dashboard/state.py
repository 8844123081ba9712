"""What ``/api/state`` answers, assembled from a coordinator's ``stats`` (sans-I/O).

:func:`assemble` turns one :class:`Snapshot` (the stats dict, the largest objects, the run
record when the caller is a DAG runner) into the page's JSON: the machine (nodes, their
CPUs and which task holds each, memory, hugepages, distances), the store and its
:class:`History`, the largest objects, the clients and the current or last run as a graph.
Without a run record the run is pieced together from the coordinator's task telemetry
(``stats["tasks"]``), which knows states, nodes, times and locality but not the graph.
Spilled bytes are shown only when the coordinator spills (``stats["spill"]`` is set).
"""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from plasma.topology import Topology

__all__ = [
    "HISTORY_POINTS",
    "LARGEST_OBJECTS",
    "History",
    "Snapshot",
    "assemble",
    "error_state",
    "largest_objects",
    "run_from_telemetry",
    "run_view",
    "spilled_bytes",
    "task_key",
]

HISTORY_POINTS = 300  # samples kept for the charts (5 minutes at one a second)
LARGEST_OBJECTS = 10


@dataclass
class Snapshot:
    """One read of the coordinator (and of the run, for a DAG runner)."""

    stats: dict[str, Any]
    objects: list[dict[str, Any]] | None = None  # largest first; None: not listed
    objects_note: str = ""  # why they are not listed
    run: dict[str, Any] | None = None  # a DAG run record; None: take the run from telemetry
    task_cpus: dict[str, list[int]] = field(default_factory=dict)  # "run/task" -> its CPUs


class History:
    """The last ``size`` samples of the store: used bytes, objects, operations per second
    (from the growth of ``stats["operations"]``) and spilled bytes."""

    def __init__(self, size: int = HISTORY_POINTS) -> None:
        self._points: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._last: tuple[float, int] | None = None  # (time, operations so far)

    def add(self, now: float, stats: Mapping[str, Any]) -> None:
        ops = sum(stats.get("operations", {}).values())
        rate = None
        if self._last is not None and now > self._last[0] and ops >= self._last[1]:
            rate = (ops - self._last[1]) / (now - self._last[0])
        self._last = (now, ops)  # a restarted coordinator counts from 0: no rate once
        self._points.append(
            {
                "t": now,
                "used": stats.get("used", 0),
                "capacity": stats.get("capacity", 0),
                "objects": stats.get("objects", 0),
                "ops_per_s": rate,
                "spilled": spilled_bytes(stats),
            }
        )

    def points(self) -> list[dict[str, Any]]:
        return list(self._points)


def spilled_bytes(stats: Mapping[str, Any]) -> int | None:
    """The bytes of objects only on disk (``stats["spill"]["bytes"]``); None when the
    coordinator does not spill (``serve`` without ``--spill-dir``)."""
    spill = stats.get("spill")
    spilled = spill.get("bytes") if isinstance(spill, Mapping) else None
    return spilled if isinstance(spilled, int) and not isinstance(spilled, bool) else None


def largest_objects(
    rows: Iterable[Mapping[str, Any]], limit: int = LARGEST_OBJECTS
) -> list[dict[str, Any]]:
    """The ``limit`` largest of ``list()`` rows (``id`` as hex), by data + metadata size."""
    top = heapq.nlargest(limit, rows, key=lambda r: r["data_size"] + r["metadata_size"])
    return [
        {
            "id": r["id"],
            "size": r["data_size"] + r["metadata_size"],
            "node": r["node"],
            "state": r["state"],
            "ref_count": r["ref_count"],
        }
        for r in top
    ]


def assemble(
    snapshot: Snapshot,
    *,
    history: History,
    now: float,
    topology: Topology | None = None,
    source: str = "coordinator",
) -> dict[str, Any]:
    """The page's JSON for ``snapshot`` (``history`` is read, not updated)."""
    stats = snapshot.stats
    run: dict[str, Any] | None
    if snapshot.run is not None:
        run = run_view(snapshot.run, stats.get("tasks", []), now)
    else:
        run = run_from_telemetry(stats.get("tasks", []), snapshot.task_cpus, now)
    holders: dict[int, str] = {}
    for key, cpus in snapshot.task_cpus.items():
        holders.update(dict.fromkeys(cpus, key.rpartition("/")[2]))
    for task in run["tasks"] if run else []:
        if task["state"] == "running":
            holders.update(dict.fromkeys(task["cpus"], task["id"]))
    return {
        "time": now,
        "source": source,
        "error": None,
        "machine": {"nodes": _nodes(stats, topology, holders)},
        "store": {
            "capacity": stats.get("capacity", 0),
            "used": stats.get("used", 0),
            "objects": stats.get("objects", 0),
            "evictions": stats.get("evictions", 0),
            "pins": stats.get("pins", 0),
            "uptime": stats.get("uptime"),
            "spilled": spilled_bytes(stats),
        },
        "history": history.points(),
        "objects": {"largest": snapshot.objects, "note": snapshot.objects_note},
        "clients": _clients(stats.get("clients", [])),
        "holders": _holders(stats),
        "run": run,
    }


_HOLDS = ("references", "pins", "unsealed")


def _clients(clients: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The clients, most bytes held first, each with the bytes it holds by each means (see
    ``Store.holders``; zeros from a coordinator that does not say)."""
    out = []
    for c in clients:
        holds = c.get("holds") or {}
        row = {k: c.get(k) for k in ("id", "name", "pid", "uid")}
        row.update({k: (holds.get(k) or {}).get("bytes", 0) for k in _HOLDS})
        row["arena"] = holds.get("arena", 0)
        row["total"] = holds.get("total", 0)
        out.append(row)
    out.sort(key=lambda r: -int(r["total"] or 0))
    return out


def _holders(stats: Mapping[str, Any]) -> dict[str, Any]:
    """The bytes clients hold in all and the largest objects held, each with its holders
    named (``"name (pid P)"``, ``"... pins"`` for a pin)."""
    holders = stats.get("holders") or {}
    names = {}
    for c in stats.get("clients", []):
        name = c.get("name") or f"client {c['id']}"
        names[c["id"]] = name if c.get("pid") is None else f"{name} (pid {c['pid']})"
    objects = []
    for o in holders.get("objects", []):
        who = [names.get(cid, f"client {cid}") for cid in o.get("referenced_by", [])]
        who += [f"{names.get(cid, f'client {cid}')} pins" for cid in o.get("pinned_by", [])]
        objects.append({**o, "holders": who})
    return {"total": holders.get("total"), "objects": objects}


def error_state(reason: str, now: float, source: str = "coordinator") -> dict[str, Any]:
    """What ``/api/state`` answers (with status 503) when the coordinator cannot be read."""
    return {"time": now, "source": source, "error": reason}


def _nodes(
    stats: Mapping[str, Any], topology: Topology | None, holders: Mapping[int, str]
) -> list[dict[str, Any]]:
    live = {int(k): v for k, v in stats.get("numa_nodes", {}).items()}
    store = {int(k): v for k, v in stats.get("nodes", {}).items()}
    known = topology.nodes if topology is not None else {}
    out = []
    for node in sorted(set(live) | set(known)):
        info = live.get(node, {})
        topo = known.get(node)
        cpus = info.get("cpus", sorted(topo.cpus) if topo else [])
        served = store.get(node)
        out.append(
            {
                "id": node,
                "cpus": [{"id": c, "task": holders.get(c)} for c in cpus],
                "memory_total": info.get("memory_total", topo.memory_total if topo else 0),
                "memory_free": info.get("memory_free", topo.memory_free if topo else 0),
                "store": None
                if served is None
                else {
                    "capacity": served["capacity"],
                    "used": served["used"],
                    "free": served["capacity"] - served["used"],
                    "objects": served["objects"],
                    "segments": served["segments"],
                },
                "hugepages": {str(k): v for k, v in sorted(topo.hugepages.items())} if topo else {},
                "distances": {str(k): v for k, v in sorted(topo.distances.items())} if topo else {},
            }
        )
    return out


def run_view(
    record: Mapping[str, Any], telemetry: Iterable[Mapping[str, Any]], now: float
) -> dict[str, Any]:
    """The run of a DAG run record as the page draws it. Edges go from the producer of each
    input (``data``), from each task a row's ``after`` names, and from a dynamic branch's
    parent (``branch``); each task's locality is the coordinator's latest sample of it
    (``telemetry``: ``stats["tasks"]``), else its final one."""
    run_id = record["run_id"]
    latest = {t["task_id"]: t.get("latest") for t in telemetry if t.get("run_id") == run_id}
    tasks = []
    for t in record["tasks"]:
        sample = latest.get(t["id"]) or t.get("perf")
        tasks.append(
            _task(
                t["id"],
                name=t.get("name", t["id"]),
                state=t["status"],
                cpus=t.get("cpus", []),
                node=t.get("node"),
                start=t.get("start"),
                end=t.get("end"),
                now=now,
                locality=_local_fraction(sample),
                parent=t.get("parent"),
                error=t.get("error", ""),
            )
        )
    producers = {name: t["id"] for t in record["tasks"] for name in t.get("outputs", [])}
    edges = [
        [producers[name], t["id"], "data"]
        for t in record["tasks"]
        for name in t.get("inputs", [])
        if name in producers and producers[name] != t["id"]
    ]
    edges += [[a, t["id"], "after"] for t in record["tasks"] for a in t.get("after", [])]
    edges += [[t["parent"], t["id"], "branch"] for t in record["tasks"] if t.get("parent")]
    return _run(run_id, record.get("status", "running"), tasks, edges, record, now)


def run_from_telemetry(
    telemetry: Iterable[Mapping[str, Any]], task_cpus: Mapping[str, list[int]], now: float
) -> dict[str, Any] | None:
    """The current run (one with a running task, the latest registered) or else the last
    one, from the coordinator's task telemetry alone (no graph edges); None without tasks."""
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for row in telemetry:
        runs.setdefault(row.get("run_id") or "", []).append(row)
    if not runs:
        return None

    def recency(run_id: str) -> tuple[bool, float]:
        rows = runs[run_id]
        return (any(r["state"] == "running" for r in rows), max(r["registered"] for r in rows))

    run_id = max(runs, key=recency)
    tasks = [
        _task(
            r["task_id"],
            name=r["task_id"],
            state=r["state"],
            cpus=task_cpus.get(task_key(run_id, r["task_id"]), []),
            node=r.get("node"),
            start=r.get("registered"),
            end=r.get("ended"),
            now=now,
            locality=_local_fraction(r.get("latest")),
        )
        for r in sorted(runs[run_id], key=lambda r: r["registered"])
    ]
    status = "running" if any(t["state"] == "running" for t in tasks) else "ended"
    return _run(run_id, status, tasks, [], {}, now)


def task_key(run_id: str, task_id: str) -> str:
    """How :attr:`Snapshot.task_cpus` names a task (as the coordinator's telemetry does)."""
    return f"{run_id}/{task_id}" if run_id else task_id


def _task(task_id: str, *, start: Any, end: Any, now: float, **fields: Any) -> dict[str, Any]:
    duration = None if start is None else (end if end is not None else now) - start
    return {"id": task_id, **fields, "start": start, "end": end, "duration": duration}


def _run(
    run_id: str,
    status: str,
    tasks: list[dict[str, Any]],
    edges: list[list[str]],
    record: Mapping[str, Any],
    now: float,
) -> dict[str, Any]:
    levels = _levels([t["id"] for t in tasks], edges)
    for t in tasks:
        t["level"] = levels[t["id"]]
    starts = [t["start"] for t in tasks if t["start"] is not None]
    ends = [t["end"] for t in tasks if t["end"] is not None]
    start = record.get("start") or (min(starts) if starts else None)
    end = record.get("end") or (max(ends) if ends and status == "ended" else None)
    return {
        "run_id": run_id,
        "pipeline": record.get("pipeline", ""),
        "status": status,
        "start": start,
        "end": end,
        "tasks": tasks,
        "edges": edges,
    }


def _levels(ids: list[str], edges: list[list[str]]) -> dict[str, int]:
    """Column of each task in the graph: the longest chain of edges leading to it."""
    level = dict.fromkeys(ids, 0)
    for _ in range(len(ids)):  # at most len(ids) rounds in a DAG; stops early when settled
        changed = False
        for src, dst, _kind in edges:
            if src in level and dst in level and level[dst] < level[src] + 1:
                level[dst] = level[src] + 1
                changed = True
        if not changed:
            break
    return level


def _local_fraction(sample: Any) -> float | None:
    locality = sample.get("locality") if isinstance(sample, Mapping) else None
    fraction = locality.get("local_fraction") if isinstance(locality, Mapping) else None
    return fraction if isinstance(fraction, float | int) else None
