"""What a run leaves behind: the JSON run record, Prometheus textfile metrics, a summary."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from plasma.metric_families import task_metrics

STATUSES = ("succeeded", "failed", "skipped", "cancelled", "running", "ready", "pending")


def write_record(path: str | Path, record: dict[str, Any]) -> None:
    """Write the run record as JSON, atomically (a reader never sees half a file)."""
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def write_prometheus(path: str | Path, record: dict[str, Any]) -> None:
    """Write textfile-collector metrics for the run (also for a failed or partial run).

    Besides the ``plasma_dag_*`` families, each task's final perf sample is exported with the
    coordinator's own ``plasma_task_*`` families (labels ``task`` and ``run_id``).
    """
    reg = CollectorRegistry()
    reg.register(TaskPerfCollector(record))
    run = {"run_id": record["run_id"], "pipeline": record.get("pipeline", "")}
    labels = list(run)
    ok = Gauge("plasma_dag_run_success", "1 if every task succeeded", labels, registry=reg)
    ok.labels(**run).set(1 if record["status"] == "succeeded" else 0)
    duration = Gauge(
        "plasma_dag_run_duration_seconds", "wall time of the run", labels, registry=reg
    )
    duration.labels(**run).set(_elapsed(record.get("start"), record.get("end")))
    counts = Gauge("plasma_dag_tasks", "tasks by final status", [*labels, "status"], registry=reg)
    for status in STATUSES:
        n = sum(1 for t in record["tasks"] if t["status"] == status)
        counts.labels(**run, status=status).set(n)
    task_labels = [*labels, "task"]
    per_task = {
        "duration": Gauge(
            "plasma_dag_task_duration_seconds", "task wall time", task_labels, registry=reg
        ),
        "attempts": Gauge("plasma_dag_task_attempts", "times started", task_labels, registry=reg),
        "exit": Gauge("plasma_dag_task_exit_code", "last exit code", task_labels, registry=reg),
        "cpus": Gauge(
            "plasma_dag_task_cpus", "CPUs the task was pinned to", task_labels, registry=reg
        ),
        "ok": Gauge(
            "plasma_dag_task_success", "1 if the task succeeded", task_labels, registry=reg
        ),
    }
    for t in record["tasks"]:
        key = {**run, "task": t["id"]}
        per_task["ok"].labels(**key).set(1 if t["status"] == "succeeded" else 0)
        per_task["attempts"].labels(**key).set(t["attempts"])
        per_task["cpus"].labels(**key).set(len(t["cpus"]))
        if t["start"] is not None:
            per_task["duration"].labels(**key).set(_elapsed(t["start"], t["end"]))
        if t["exit_code"] is not None:
            per_task["exit"].labels(**key).set(t["exit_code"])
    write_to_textfile(str(path), reg)


class TaskPerfCollector(Collector):
    """The ``plasma_task_*`` families (:mod:`plasma.metric_families`) of a record's perf samples."""

    def __init__(self, record: dict[str, Any]) -> None:
        self._rows = [
            {"task_id": t["id"], "run_id": record["run_id"], "state": t["status"], "latest": perf}
            for t in record["tasks"]
            if (perf := t.get("perf"))
        ]

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from task_metrics(self._rows)


def summary(record: dict[str, Any]) -> str:
    """A readable table of the run: each task's status, CPUs, node, time, attempts and perf.

    ``cpu`` is the task's CPU time (perf task-clock) and ``local`` the share of its resident
    pages on its node, from the coordinator's final sample.

    Tasks are listed in the order they started; those that never started come last.
    """
    rows = [("task", "status", "cpus", "node", "start", "time", "cpu", "local", "tries", "note")]
    t0 = record.get("start") or min((t["start"] for t in record["tasks"] if t["start"]), default=0)
    for t in sorted(record["tasks"], key=lambda t: math.inf if t["start"] is None else t["start"]):
        started = t["start"] is not None
        rows.append(
            (
                t["id"],
                t["status"],
                _cpu_list(t["cpus"]) if started else "-",
                ",".join(map(str, t["nodes"])) if started and t["nodes"] else "-",
                f"+{t['start'] - t0:.2f}s" if started else "-",
                f"{_elapsed(t['start'], t['end']):.2f}s" if started else "-",
                *_perf_cells(t.get("perf")),
                str(t["attempts"]),
                t["error"] if t["status"] != "succeeded" else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in rows
    ]
    total = _elapsed(record.get("start"), record.get("end"))
    by_status: dict[str, int] = {}
    for t in record["tasks"]:
        by_status[t["status"]] = by_status.get(t["status"], 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(by_status.items()))
    head = f"run {record['run_id']}: {record['status']} in {total:.2f}s ({counts})"
    return "\n".join([head, *(line.rstrip() for line in lines)])


def _perf_cells(perf: dict[str, Any] | None) -> tuple[str, str]:
    """``(cpu time, local %)`` of a task's perf sample, ``-`` where unknown."""
    if not perf:
        return "-", "-"
    clock = perf["counters"].get("task-clock")
    locality = perf.get("locality") or {}
    fraction = locality.get("local_fraction")
    return (
        "-" if clock is None else f"{clock / 1e9:.2f}s",
        "-" if fraction is None else f"{fraction:.0%}",
    )


def _elapsed(start: float | None, end: float | None) -> float:
    return max(0.0, end - start) if start is not None and end is not None else 0.0


def _cpu_list(cpus: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and ranges[-1][1] == cpu - 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in ranges)
