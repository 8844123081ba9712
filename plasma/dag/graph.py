"""The task graph: ids, producers of objects, dependencies; validated before anything runs.

A task depends on the producers of its inputs and on the tasks named in ``after``. Tasks are
added in batches (the static pipeline, then each dynamic branch); a batch is checked as a
whole and rejected with :class:`plasma.errors.BadRequest` if it has a duplicate id, a
duplicate output, an unknown input or ``after`` target, or a cycle.
"""

from __future__ import annotations

from collections.abc import Container, Iterable

from plasma.dag.spec import TaskSpec
from plasma.errors import BadRequest


class Graph:
    """Tasks by id with their dependencies; grows with dynamic branches, never shrinks."""

    def __init__(self) -> None:
        self.specs: dict[str, TaskSpec] = {}
        self.parent: dict[str, str | None] = {}
        self.deps: dict[str, set[str]] = {}
        self.dependents: dict[str, set[str]] = {}
        self.producer: dict[str, str] = {}  # object name -> id of the task that outputs it

    @classmethod
    def from_specs(cls, specs: Iterable[TaskSpec]) -> Graph:
        """The static graph of a pipeline: each task's id is its name."""
        graph = cls()
        graph.add([(spec.name, spec) for spec in specs])
        return graph

    def add(
        self,
        tasks: list[tuple[str, TaskSpec]],
        parent: str | None = None,
        available: Container[str] = frozenset(),
    ) -> None:
        """Validate and add ``(id, spec)`` pairs; all or nothing.

        An input found in ``available`` (already in the store) needs no producer and adds
        no dependency, so a dynamic task may read objects its running parent has put.
        """
        ids = [task_id for task_id, _ in tasks]
        batch = set(ids)
        for task_id in ids:
            if task_id in self.specs or ids.count(task_id) > 1:
                raise BadRequest(f"duplicate task id {task_id!r}")
        producer = dict(self.producer)
        for task_id, spec in tasks:
            for name in spec.outputs:
                if name in producer:
                    raise BadRequest(
                        f"object {name!r} is an output of both {producer[name]!r} and {task_id!r}"
                    )
                producer[name] = task_id
        deps: dict[str, set[str]] = {}
        for task_id, spec in tasks:
            mine: set[str] = set()
            for name in spec.inputs:
                if name in available:
                    continue
                if name not in producer:
                    raise BadRequest(
                        f"task {task_id!r}: input {name!r} is not an output of any task"
                    )
                mine.add(producer[name])
            for other in spec.after:
                if other not in self.specs and other not in batch:
                    raise BadRequest(f"task {task_id!r}: `after` names unknown task {other!r}")
                mine.add(other)
            deps[task_id] = mine
        _reject_cycles(deps, batch)
        for task_id, spec in tasks:
            self.specs[task_id] = spec
            self.parent[task_id] = parent
            self.deps[task_id] = deps[task_id]
            self.dependents.setdefault(task_id, set())
            for dep in deps[task_id]:
                self.dependents.setdefault(dep, set()).add(task_id)
        self.producer = producer

    def descendants(self, task_id: str) -> list[str]:
        """Every task that transitively depends on ``task_id``, in id order."""
        seen: set[str] = set()
        stack = [task_id]
        while stack:
            for nxt in self.dependents.get(stack.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return sorted(seen)


def _reject_cycles(deps: dict[str, set[str]], batch: set[str]) -> None:
    """Raise BadRequest naming one cycle among the batch's tasks, if there is any."""
    done: set[str] = set()
    for root in sorted(batch):
        if root in done:
            continue
        path = [root]
        on_path = {root}
        pending = [iter(sorted(deps.get(root, set()) & batch))]
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                pending.pop()
                done.add(path[-1])
                on_path.discard(path.pop())
            elif dep in on_path:
                cycle = [*path[path.index(dep) :], dep]
                raise BadRequest("dependency cycle: " + " -> ".join(reversed(cycle)))
            elif dep not in done:
                path.append(dep)
                on_path.add(dep)
                pending.append(iter(sorted(deps.get(dep, set()) & batch)))
