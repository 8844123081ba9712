"""Sans-I/O scheduler state of one run: ready set, CPU accounting, retries, fail-fast, records.

The runner drives it: it asks :meth:`Scheduler.start_ready` for launches (placing each ready
task with the :class:`~plasma.placement.Placer`, near the bytes of its inputs), reports each
process's end with :meth:`Scheduler.finished`, adds dynamic branches with
:meth:`Scheduler.submit`, and kills whatever :meth:`Scheduler.take_cancellations` returns.

A task whose attempts are used up fails the run: tasks not started yet are skipped and
running ones are cancelled. A task blocked in ``ctx.wait`` lends its CPUs to the tasks it
waits for (:meth:`Scheduler.block`), so a parent never starves its own children.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from plasma.dag.graph import Graph
from plasma.dag.spec import TaskSpec
from plasma.errors import BadRequest, PlacementImpossible
from plasma.placement import PlacementRequest

PENDING, READY, RUNNING = "pending", "ready", "running"
SUCCEEDED, FAILED, SKIPPED, CANCELLED = "succeeded", "failed", "skipped", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, SKIPPED, CANCELLED})


class PlacerLike(Protocol):
    def place(self, request: Any) -> Any: ...

    def release(self, placement: Any) -> None: ...


@dataclass
class TaskState:
    """Everything known about one task of the run; ``as_record`` is its run-record row."""

    id: str
    spec: TaskSpec
    parent: str | None
    status: str = PENDING
    attempts: int = 0
    start: float | None = None
    end: float | None = None
    cpus: list[int] = field(default_factory=list)
    nodes: list[int] = field(default_factory=list)
    exit_code: int | None = None
    error: str = ""
    explanation: str = ""
    placement: Any = None  # held while running and not blocked

    def as_record(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "id": self.id,
            "parent": self.parent,
            "status": self.status,
            "start": self.start,
            "end": self.end,
            "cpus": self.cpus,
            "node": self.nodes[0] if len(self.nodes) == 1 else None,
            "nodes": self.nodes,
            "exit_code": self.exit_code,
            "attempts": self.attempts,
            "error": self.error,
            "inputs": self.spec.inputs,
            "outputs": self.spec.outputs,
        }


@dataclass(frozen=True)
class Launch:
    """Start ``spec`` as attempt ``attempt`` of task ``task_id``, pinned to ``cpus``."""

    task_id: str
    attempt: int
    spec: TaskSpec
    cpus: list[int]
    nodes: list[int]
    membind: list[int] | None  # memory nodes to bind to, when the spec asks for membind


class Scheduler:
    """The state of one run; no I/O, no clock (callers pass ``now``)."""

    def __init__(self, run_id: str, graph: Graph, placer: PlacerLike) -> None:
        self.run_id = run_id
        self.graph = graph
        self.placer = placer
        self.status = "running"
        self.tasks: dict[str, TaskState] = {}
        self._ready: list[str] = []
        self._cancel: list[str] = []
        self._cancel_sent: set[str] = set()
        self._held = 0  # running tasks holding a placement
        self._register(list(graph.specs))

    # ------------------------------------------------------------------ queries

    @property
    def done(self) -> bool:
        """True when no task runs or can still start."""
        return all(t.status in TERMINAL for t in self.tasks.values())

    def ready(self) -> list[str]:
        """Ids of tasks whose dependencies succeeded, in the order they became ready."""
        return list(self._ready)

    def running(self) -> list[str]:
        return [t.id for t in self.tasks.values() if t.status == RUNNING]

    def settled(self, ids: Iterable[str]) -> bool:
        """True when every task in ``ids`` has ended (in any way)."""
        return all(self.tasks[i].status in TERMINAL for i in ids)

    def record(self) -> dict[str, Any]:
        """The JSON-ready run record (times in seconds since the epoch)."""
        return {
            "run_id": self.run_id,
            "status": self.status,
            "tasks": [t.as_record() for t in self.tasks.values()],
        }

    # ------------------------------------------------------------------ transitions

    def start_ready(self, locations: Mapping[str, tuple[int, int]], now: float) -> list[Launch]:
        """Place every ready task that fits on the free CPUs and mark it running.

        ``locations`` maps object names to ``(node, bytes)``; a task prefers the node holding
        most of its input bytes. A task that cannot be placed even with every CPU free fails.
        """
        launches = []
        for task_id in list(self._ready):
            if self.status != "running":
                break
            task = self.tasks[task_id]
            spec = task.spec
            prefer: dict[int, int] = {}
            for name in spec.inputs:
                if name in locations:
                    node, nbytes = locations[name]
                    prefer[node] = prefer.get(node, 0) + nbytes
            request = PlacementRequest(
                cpus=spec.cpus, policy=spec.policy, numa=spec.numa, prefer_data=prefer
            )
            try:
                placement = self.placer.place(request)
            except BadRequest as exc:
                self._ready.remove(task_id)
                task.end = now
                self._fail(task, f"bad placement request: {exc}")
                continue
            except PlacementImpossible as exc:
                if self._held == 0:
                    self._ready.remove(task_id)
                    task.end = now
                    self._fail(task, f"placement impossible: {exc}")
                continue
            self._ready.remove(task_id)
            self._held += 1
            task.placement = placement
            task.status = RUNNING
            task.attempts += 1
            task.start = now if task.attempts == 1 else task.start
            task.cpus = sorted(placement.cpus)
            task.nodes = sorted(placement.nodes)
            task.explanation = "; ".join(placement.explanation)
            launches.append(
                Launch(
                    task_id=task_id,
                    attempt=task.attempts,
                    spec=spec,
                    cpus=task.cpus,
                    nodes=task.nodes,
                    membind=task.nodes if spec.membind and task.nodes else None,
                )
            )
        return launches

    def finished(self, task_id: str, exit_code: int | None, now: float, error: str = "") -> None:
        """A task's process ended; ``exit_code`` None or non-zero (or an ``error``) is failure."""
        task = self.tasks[task_id]
        if task.status != RUNNING:
            raise BadRequest(f"task {task_id!r} is not running (it is {task.status})")
        self._release(task)
        if task_id in self._cancel:  # ended before the runner got to kill it
            self._cancel.remove(task_id)
            self._cancel_sent.add(task_id)
        task.exit_code = exit_code
        task.end = now
        if task_id in self._cancel_sent:
            self._cancel_sent.discard(task_id)
            task.status = CANCELLED
            task.error = task.error or "cancelled"
        elif exit_code == 0 and not error:
            task.status = SUCCEEDED
            task.error = ""
            for child in sorted(self.graph.dependents.get(task_id, ())):
                self._maybe_ready(child)
        elif task.attempts <= task.spec.retries and self.status == "running":
            task.status = READY
            task.error = error or f"exit code {exit_code}"
            self._ready.append(task_id)
        else:
            self._fail(task, error or f"exit code {exit_code}")
        self._finish_run()

    def submit(
        self, parent: str, specs: list[TaskSpec], available: Container[str] = frozenset()
    ) -> list[str]:
        """Add a dynamic branch of running task ``parent``; returns the new task ids."""
        owner = self.tasks.get(parent)
        if owner is None or owner.status != RUNNING:
            raise BadRequest(f"task {parent!r} is not running, it cannot submit tasks")
        if self.status != "running":
            raise BadRequest(f"run {self.run_id} is {self.status}, it takes no new tasks")
        pairs = [(f"{parent}/{spec.name}", spec) for spec in specs]
        self.graph.add(pairs, parent=parent, available=available)
        ids = [task_id for task_id, _ in pairs]
        self._register(ids)
        return ids

    def check_wait(self, task_id: str, ids: Iterable[str]) -> None:
        """Refuse a wait that could never end: a waited-for task that depends on the waiter."""
        for other in ids:
            if other not in self.tasks:
                raise BadRequest(f"wait for unknown task {other!r}")
        needs_waiter = sorted(set(ids) & set(self.graph.descendants(task_id)))
        if needs_waiter:
            raise BadRequest(
                f"task {task_id!r} cannot wait for {needs_waiter}: they depend on its own "
                "outputs (deadlock)"
            )

    def block(self, task_id: str) -> None:
        """``task_id`` waits for its branches: lend its CPUs out until it ends."""
        task = self.tasks[task_id]
        if task.status == RUNNING and task.placement is not None:
            self._release(task)

    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop the run: skip what has not started, cancel what runs."""
        if self.status == "running":
            self.status = reason
        self._stop_the_rest()

    def take_cancellations(self) -> list[str]:
        """Running tasks the runner must kill (each later reported through ``finished``)."""
        out, self._cancel = self._cancel, []
        self._cancel_sent.update(out)
        return out

    # ------------------------------------------------------------------ internals

    def _register(self, ids: list[str]) -> None:
        for task_id in ids:
            self.tasks[task_id] = TaskState(
                id=task_id, spec=self.graph.specs[task_id], parent=self.graph.parent[task_id]
            )
        for task_id in ids:
            self._maybe_ready(task_id)

    def _maybe_ready(self, task_id: str) -> None:
        task = self.tasks[task_id]
        if task.status == PENDING and all(
            self.tasks[d].status == SUCCEEDED for d in self.graph.deps[task_id]
        ):
            task.status = READY
            self._ready.append(task_id)

    def _release(self, task: TaskState) -> None:
        if task.placement is not None:
            self.placer.release(task.placement)
            task.placement = None
            self._held -= 1

    def _fail(self, task: TaskState, error: str) -> None:
        task.status = FAILED
        task.error = error
        if self.status == "running":
            self.status = FAILED
        for other in self.graph.descendants(task.id):
            if self.tasks[other].status in (PENDING, READY):
                self.tasks[other].error = f"skipped: depends on failed task {task.id!r}"
        self._stop_the_rest()

    def _stop_the_rest(self) -> None:
        for other in self.tasks.values():
            if other.status in (PENDING, READY):
                other.status = SKIPPED
                other.error = other.error or "skipped: the run stopped before it started"
            elif other.status == RUNNING and other.id not in {*self._cancel_sent, *self._cancel}:
                self._cancel.append(other.id)
        self._ready.clear()

    def _finish_run(self) -> None:
        if self.done and self.status == "running":
            self.status = SUCCEEDED
