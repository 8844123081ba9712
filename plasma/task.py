"""Inside a DAG task: ``plasma.task.current()`` is the task's context.

The runner starts every task with ``PLASMA_SOCKET``, ``PLASMA_RUN_ID``, ``PLASMA_TASK_ID``,
``PLASMA_TASK_INPUTS`` / ``PLASMA_TASK_OUTPUTS`` (JSON lists of object names) and
``PLASMA_TASK_ARGS`` (the spec's ``args`` as JSON). Object names are scoped to the run: the
store id of ``name`` is ``ObjectID.from_name(f"{run_id}/{name}")``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from plasma.dag.spec import TaskSpec
from plasma.errors import BadRequest, PlasmaError
from plasma.ids import ObjectID

__all__ = ["TaskContext", "TaskFailed", "TaskHandle", "current", "object_id"]


class TaskFailed(PlasmaError):
    """A task this task waited for did not succeed."""


@dataclass(frozen=True)
class TaskHandle:
    """A dynamic task added to the run: its id and the object names it will output."""

    id: str
    outputs: tuple[str, ...]


def object_id(run_id: str, name: str) -> ObjectID:
    """The store id of object ``name`` in run ``run_id``."""
    return ObjectID.from_name(f"{run_id}/{name}")


class TaskContext:
    """The running task: its inputs and outputs in the store, and dynamic branches."""

    def __init__(
        self,
        socket_path: str,
        run_id: str,
        task_id: str,
        inputs: Sequence[str] = (),
        outputs: Sequence[str] = (),
        args: Mapping[str, Any] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.run_id = run_id
        self.task_id = task_id
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.args: dict[str, Any] = dict(args or {})
        self._client: Any = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> TaskContext:
        env = os.environ if environ is None else environ
        missing = [k for k in ("PLASMA_SOCKET", "PLASMA_RUN_ID", "PLASMA_TASK_ID") if k not in env]
        if missing:
            raise BadRequest(
                f"not inside a plasma DAG task: {', '.join(missing)} not set "
                "(tasks are started by `plasma-coord dag run`)"
            )
        return cls(
            env["PLASMA_SOCKET"],
            env["PLASMA_RUN_ID"],
            env["PLASMA_TASK_ID"],
            json.loads(env.get("PLASMA_TASK_INPUTS", "[]")),
            json.loads(env.get("PLASMA_TASK_OUTPUTS", "[]")),
            json.loads(env.get("PLASMA_TASK_ARGS", "{}")),
        )

    @property
    def client(self) -> Any:
        """The task's store client (``plasma.connect`` to the run's coordinator), opened once."""
        if self._client is None:
            import plasma

            self._client = plasma.connect(self.socket_path, client_name=f"task {self.task_id}")
        return self._client

    def object_id(self, name: str) -> ObjectID:
        return object_id(self.run_id, name)

    def input(self, name: str, timeout: float | None = None) -> Any:
        """Object ``name`` of this run, as it was put (arrays inside come back zero-copy)."""
        return self.client.get_object(self.object_id(name), timeout)

    def output(self, name: str, value: Any, *, node: int | None = None) -> ObjectID:
        """Put ``value`` as object ``name`` of this run (on NUMA ``node``, default: the task's)."""
        return self.client.put(value, self.object_id(name), node=node)

    def submit(self, task: TaskSpec | Mapping[str, Any]) -> TaskHandle:
        """Add a task to the live run; it runs once its inputs exist."""
        reply = self._call({"op": "submit", "parent": self.task_id, "tasks": [_plain(task)]})
        return _handles(reply)[0]

    def map(self, task: TaskSpec | Mapping[str, Any], inputs: Iterable[str]) -> list[TaskHandle]:
        """One copy of ``task`` per input object (named ``{name}-{i}``, reading ``inputs[i]``).

        Output names of ``task`` may use ``{i}`` and ``{input}``.
        """
        payload = {
            "op": "map",
            "parent": self.task_id,
            "task": _plain(task),
            "inputs": list(inputs),
        }
        return _handles(self._call(payload))

    def wait(self, handles: Sequence[TaskHandle]) -> list[dict[str, Any]]:
        """Wait until every handle's task ended; their outputs as ``{name: value}`` per handle.

        Raises :class:`TaskFailed` if one of them did not succeed. While waiting, this task's
        CPUs are lent to the run.
        """
        reply = self._call({"op": "wait", "parent": self.task_id, "ids": [h.id for h in handles]})
        bad = [r for r in reply if r["status"] != "succeeded"]
        if bad:
            raise TaskFailed(
                "; ".join(f"task {r['id']} {r['status']}: {r.get('error', '')}" for r in bad)
            )
        return [{name: self.input(name) for name in r["outputs"]} for r in reply]

    def close(self) -> None:
        """Flush pending seals (surfacing their errors) and disconnect."""
        if self._client is not None:
            client, self._client = self._client, None
            try:
                client.flush()
            finally:
                client.close()

    def _call(self, payload: dict[str, Any]) -> Any:
        return self.client.run_call(self.run_id, payload)


def _plain(task: TaskSpec | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(task, TaskSpec):
        return dict(msgspec.to_builtins(task))
    return dict(task)


def _handles(reply: Any) -> list[TaskHandle]:
    return [TaskHandle(h["id"], tuple(h["outputs"])) for h in reply]


_current: TaskContext | None = None


def current() -> TaskContext:
    """This process's task context, built from the environment the runner set."""
    global _current
    if _current is None:
        _current = TaskContext.from_environ()
    return _current
