"""The coordinator's task registry (internal): periodic perf samples of running tasks, host facts.

A run owner registers each task's pid (:meth:`Telemetry.register`); :meth:`Telemetry.run`
samples every running task each ``interval`` seconds in a worker thread and keeps the series in
a bounded :class:`~plasma.perf.SampleRing`. A task whose process ends gets a final sample and
leaves the sampling set (a pidfd tells the end apart from a reused pid); clients may submit
samples they took themselves. :meth:`Telemetry.tasks` is what ``stats`` returns.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import trio

from plasma.errors import BadRequest, ObjectExists, ObjectNotFound
from plasma.perf import PerfSample, SampleRing, TaskSampler

RUNNING = "running"  # sampled by the coordinator
EXITED = "exited"  # its process ended while sampled
DONE = "done"  # its owner reported the end (TaskDone)
REPORTED = "reported"  # not registered: only client-submitted samples

SamplerFactory = Callable[[int, int | None], TaskSampler]


@dataclass
class _Task:
    task_id: str
    pid: int
    node: int | None
    run_id: str
    state: str
    registered: float
    ended: float | None = None
    sampler: TaskSampler | None = None
    pidfd: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # held while sampling

    @property
    def key(self) -> str:
        return _key(self.run_id, self.task_id)

    def row(self, latest: PerfSample | None, samples: int) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "pid": self.pid,
            "node": self.node,
            "run_id": self.run_id,
            "state": self.state,
            "registered": self.registered,
            "ended": self.ended,
            "samples": samples,
            "latest": msgspec.to_builtins(latest) if latest is not None else None,
        }


class Telemetry:
    """Registered tasks, their samplers and their sample series.

    Thread-safe: :meth:`sample_all` runs in a worker thread while requests register and end
    tasks. ``history`` samples are kept per task; beyond ``max_tasks`` the tasks that ended
    first are forgotten (running tasks never are).
    """

    def __init__(
        self,
        interval: float = 1.0,
        *,
        history: int = 120,
        max_tasks: int = 1024,
        sampler_factory: SamplerFactory = TaskSampler,
    ) -> None:
        if not interval > 0:
            raise BadRequest(f"sample interval must be positive seconds, got {interval}")
        if max_tasks <= 0:
            raise BadRequest(f"max_tasks must be positive, got {max_tasks}")
        self.interval = interval
        self.max_tasks = max_tasks
        self.ring = SampleRing(history)
        self._sampler_factory = sampler_factory
        self._tasks: dict[str, _Task] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ requests

    def register(self, task_id: str, pid: int, node: int | None = None, run_id: str = "") -> None:
        """Start sampling process ``pid`` as ``task_id`` (placed on ``node``); samples it once now.

        Tasks are told apart by ``(run_id, task_id)``. Re-registering an ended task (a retry)
        starts a fresh series.
        """
        if not task_id:
            raise BadRequest("task_id must not be empty")
        if pid <= 0:
            raise BadRequest(f"pid must be positive, got {pid}")
        if node is not None and node < 0:
            raise BadRequest(f"node must be a NUMA node id >= 0, got {node}")
        key = _key(run_id, task_id)
        with self._lock:
            old = self._tasks.get(key)
            if old is not None and old.state == RUNNING:
                raise ObjectExists(f"task {key!r} is already registered (pid {old.pid})")
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            raise BadRequest(f"task {task_id!r}: no process {pid}") from None
        try:
            sampler = self._sampler_factory(pid, node)
        except ProcessLookupError:
            os.close(pidfd)
            raise BadRequest(f"task {task_id!r}: process {pid} ended before sampling") from None
        except BaseException:
            os.close(pidfd)
            raise
        task = _Task(task_id, pid, node, run_id, RUNNING, time.time(), None, sampler, pidfd)
        with self._lock:
            self._tasks[key] = task
        self.ring.discard(key)
        self._sample(task)
        self._trim()

    def done(self, task_id: str, run_id: str = "") -> None:
        """``task_id`` ended: take its final sample (counters outlive the process) and stop."""
        key = _key(run_id, task_id)
        with self._lock:
            task = self._tasks.get(key)
        if task is None or task.state == REPORTED:
            raise ObjectNotFound(f"no registered task {key!r}")
        if task.state == RUNNING:
            self._sample(task, final=True)
        task.state = DONE
        self._trim()

    def submit(
        self, task_id: str, sample: PerfSample | Mapping[str, Any], run_id: str = ""
    ) -> None:
        """Record a sample a client took itself; an unregistered task becomes ``reported``."""
        if not task_id:
            raise BadRequest("task_id must not be empty")
        if not isinstance(sample, PerfSample):
            try:
                sample = msgspec.convert(sample, PerfSample, strict=False)
            except msgspec.ValidationError as exc:
                raise BadRequest(f"not a perf sample for task {task_id!r}: {exc}") from None
        key = _key(run_id, task_id)
        with self._lock:
            if key not in self._tasks:
                home = sample.locality.home_node if sample.locality is not None else None
                task = _Task(task_id, sample.pid, home, run_id, REPORTED, time.time())
                self._tasks[key] = task
                self.ring.discard(key)
        self.ring.append(key, sample)
        self._trim()

    # ------------------------------------------------------------ sampling

    def sample_all(self) -> int:
        """Sample each running task once (blocking: call it in a thread); returns how many."""
        with self._lock:
            running = [t for t in self._tasks.values() if t.state == RUNNING]
        for task in running:
            self._sample(task)
        return len(running)

    async def run(self) -> None:
        """Sample the running tasks every ``interval`` seconds until cancelled."""
        while True:
            await trio.sleep(self.interval)
            with self._lock:
                idle = not any(t.state == RUNNING for t in self._tasks.values())
            if not idle:
                await trio.to_thread.run_sync(self.sample_all)

    def _sample(self, task: _Task, *, final: bool = False) -> None:
        with task.lock:
            if task.sampler is None:
                return  # ended meanwhile
            ended = final or _has_exited(task.pidfd)
            sample = task.sampler.sample()
            if sample.locality is None:  # the process is gone: keep where its memory was
                last = self.ring.latest(task.key)
                if last is not None and last.locality is not None:
                    sample = msgspec.structs.replace(sample, locality=last.locality)
            self.ring.append(task.key, sample)
            if ended:
                self._close(task)
                task.ended = time.time()
                if task.state == RUNNING:
                    task.state = EXITED

    @staticmethod
    def _close(task: _Task) -> None:
        if task.sampler is not None:
            task.sampler.close()
            task.sampler = None
        if task.pidfd is not None:
            os.close(task.pidfd)
            task.pidfd = None

    def _trim(self) -> None:
        with self._lock:
            excess = len(self._tasks) - self.max_tasks
            if excess <= 0:
                return
            ended = sorted(
                (t for t in self._tasks.values() if t.state != RUNNING),
                key=lambda t: t.ended or t.registered,
            )
            for task in ended[:excess]:
                del self._tasks[task.key]
                self.ring.discard(task.key)

    # ------------------------------------------------------------ reporting

    def tasks(self) -> list[dict[str, Any]]:
        """One row per task: identity, state, sample count and the latest sample (plain data)."""
        with self._lock:
            tasks = list(self._tasks.values())
        return [t.row(self.ring.latest(t.key), len(self.ring.series(t.key))) for t in tasks]

    def close(self) -> None:
        """Close every sampler (the coordinator is stopping)."""
        with self._lock:
            tasks = list(self._tasks.values())
        for task in tasks:
            with task.lock:
                self._close(task)


def _key(run_id: str, task_id: str) -> str:
    """Where a task's samples are kept: tasks of different runs may share names."""
    return f"{run_id}/{task_id}" if run_id else task_id


def _has_exited(pidfd: int | None) -> bool:
    """A pidfd polls readable once its process has exited."""
    if pidfd is None:
        return True
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def numa_nodes(
    node_cpus: Mapping[int, list[int]], sysfs_root: str | Path = "/"
) -> dict[int, dict[str, Any]]:
    """Per NUMA node: its CPUs and memory (total and free bytes) read now from sysfs.

    A kernel without NUMA support has no node directory: node 0 gets ``/proc/meminfo``.
    """
    root = Path(sysfs_root)
    out: dict[int, dict[str, Any]] = {}
    for node, cpus in sorted(node_cpus.items()):
        path = root / f"sys/devices/system/node/node{node}/meminfo"
        if not path.exists() and node == 0:
            path = root / "proc/meminfo"
        info = _meminfo(path)
        out[node] = {
            "cpus": sorted(cpus),
            "memory_total": info.get("MemTotal", 0),
            "memory_free": info.get("MemFree", 0),
        }
    return out


def _meminfo(path: Path) -> dict[str, int]:
    """Byte values of a (per-node) meminfo file; empty when it cannot be read."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        words = rest.split()
        if words and words[0].isdigit():
            unit = 1024 if len(words) > 1 and words[1].lower() == "kb" else 1
            values[key.split()[-1]] = int(words[0]) * unit
    return values
