"""The trio shell around :class:`~plasma.dag.scheduler.Scheduler`: run a pipeline for real.

It connects to a coordinator (or starts an embedded one on a temporary socket), owns the run
in the coordinator's relay so tasks can add dynamic branches, starts every task pinned
through ``python -m plasma.dag.launch`` in its own session (process group), supervises it
(exit code, timeout, retries, fail-fast), and on SIGINT/SIGTERM stops every task and waits
for it, so no process outlives the run. The run record and Prometheus metrics are written
whatever the outcome.

Each attempt is registered with the coordinator's task telemetry before it may start (the
launcher waits on a control socket for the runner's go), and ended with ``task_done``; the
final perf sample becomes the task's ``perf`` in the record.

A task with ``cell: true`` (every task with ``RunOptions.cells``) runs in its own cgroup v2
cell of its placement (:mod:`plasma.cells`), which the launcher joins before the task starts;
whatever is left in it is killed and the cell removed when the attempt ends, however it ends.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

import plasma.aio
from plasma import protocol as p
from plasma.cells import CellSpec, task_cell_name
from plasma.coordinator import CoordinatorConfig, serve
from plasma.dag import branches
from plasma.dag.graph import Graph
from plasma.dag.launch import ACK, END, GO
from plasma.dag.report import write_prometheus, write_record
from plasma.dag.scheduler import Launch, Scheduler
from plasma.dag.spec import PipelineSpec
from plasma.errors import PlasmaError
from plasma.linux.cgroup import CgroupTree
from plasma.placement import Placer
from plasma.task import object_id
from plasma.topology import Topology

EXIT_STATUS = {"succeeded": 0, "failed": 1, "interrupted": 130}
_PLASMA_ROOT = str(Path(__file__).resolve().parents[2])


@dataclass
class RunOptions:
    """How to run: where the store is, where tasks run, what to write afterwards."""

    socket_path: str | None = None  # None: start an embedded coordinator
    memory: str = "512MiB"  # the embedded coordinator's capacity
    workdir: Path = field(default_factory=Path.cwd)  # tasks' cwd, and on their PYTHONPATH
    prom_file: Path | None = None
    record_file: Path | None = None
    topology: Topology | None = None  # None: this machine's
    log: Callable[[str], None] = lambda line: print(line, flush=True)
    kill_grace: float = 2.0  # seconds between SIGTERM and SIGKILL
    handle_signals: bool = True
    perf: bool = True  # have the coordinator sample each task's perf counters and locality
    cells: bool = False  # every task in its own cgroup v2 cell (else only those with `cell`)
    cgroups: CgroupTree | None = None  # where the cells go; None: the default cgroup root
    dashboard: str | None = None  # serve the run's dashboard here while it runs (HOST:PORT)
    dashboard_token: str | None = None  # bearer token the dashboard requires


@dataclass
class _Probe:
    """The coordinator's sampling of one task attempt: its final sample, or why there is none."""

    task_id: str
    pid: int = 0
    registered: bool = False
    finished: bool = False
    sample: dict[str, Any] | None = None
    error: str = ""


class Runner:
    """One run of a pipeline; :meth:`run` returns its record."""

    def __init__(self, spec: PipelineSpec, options: RunOptions, run_id: str | None = None) -> None:
        self.spec = spec
        self.options = options
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.run_id = run_id or f"{spec.name}-{stamp}-{secrets.token_hex(3)}"
        self.topology = options.topology or Topology.current()
        graph = Graph.from_specs(spec.tasks)  # rejects a bad graph before anything runs
        self.sched = Scheduler(self.run_id, graph, Placer(self.topology))
        self.cgroups = options.cgroups or CgroupTree()
        self._cells: dict[str, str] = {}  # task id -> the cell of its latest attempt
        if options.cells or any(t.cell for t in spec.tasks):
            self.cgroups.check()  # no cgroup v2 cpusets: fail before anything runs
        self.start = 0.0
        self.end: float | None = None
        self._tick = trio.Event()
        self._scopes: dict[str, trio.CancelScope] = {}
        self._probes: dict[str, _Probe] = {}  # task id -> its latest attempt's
        self._socket = ""
        self._client: Any = None

    # ------------------------------------------------------------------ entry point

    async def run(self) -> dict[str, Any]:
        """Run to completion (or failure, or interruption); write and return the record."""
        self.start = time.time()
        try:
            async with AsyncExitStack() as stack:
                self._socket = await self._store(stack)
                client = await stack.enter_async_context(
                    plasma.aio.connect(self._socket, client_name=f"dag runner {self.run_id}")
                )
                await client.register_run(self.run_id)
                self._client = client
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._serve_branches, client, nursery)
                    if self.options.dashboard is not None:
                        from plasma.dashboard.server import serve_run

                        await nursery.start(serve_run, self, client)
                    if self.options.handle_signals:
                        nursery.start_soon(self._watch_signals, nursery.cancel_scope)
                    await self._schedule(client, nursery)
                    nursery.cancel_scope.cancel()
        finally:
            if not self.sched.done:
                self.sched.interrupt()
            self.end = time.time()
            self._write_outputs()
        return self.record()

    def record(self) -> dict[str, Any]:
        rec = self.sched.record()
        rec.update(pipeline=self.spec.name, start=self.start, end=self.end, socket=self._socket)
        for row in rec["tasks"]:
            probe = self._probes.get(row["id"])
            row["perf"] = probe.sample if probe else None
            row["perf_error"] = probe.error if probe else ""
            row["cell"] = self._cells.get(row["id"])
        return rec

    # ------------------------------------------------------------------ the loop

    async def _schedule(self, client: Any, nursery: trio.Nursery) -> None:
        while True:
            tick = self._tick
            if self.sched.ready():
                locations = await self._locations(client)
                for launch in self.sched.start_ready(locations, time.time()):
                    self._scopes[launch.task_id] = trio.CancelScope()
                    nursery.start_soon(self._supervise, launch)
            for task_id in self.sched.take_cancellations():
                self._scopes[task_id].cancel()
            if self.sched.done:
                return
            await tick.wait()

    def _changed(self) -> None:
        self._tick.set()
        self._tick = trio.Event()

    async def _store(self, stack: AsyncExitStack) -> str:
        """The coordinator socket: the given one, or an embedded coordinator's."""
        if self.options.socket_path is not None:
            return self.options.socket_path
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="plasma-dag-"))
        config = CoordinatorConfig.for_topology(
            self.topology, os.path.join(tmp, "plasma.sock"), self.options.memory
        )
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        await nursery.start(lambda task_status: serve(config, task_status=task_status))
        return config.socket_path

    async def _locations(self, client: Any) -> dict[str, tuple[int, int]]:
        """``name -> (node, bytes)`` for the inputs of the ready tasks found in the store."""
        names = {n for t in self.sched.ready() for n in self.sched.tasks[t].spec.inputs}
        if not names:
            return {}
        rows = await client.list()
        out = {}
        for name in names:
            row = rows.get(object_id(self.run_id, name))
            if row is not None:
                out[name] = (row["node"], row["data_size"] + row["metadata_size"])
        return out

    # ------------------------------------------------------------------ one task

    async def _supervise(self, launch: Launch) -> None:
        task_id, timeout = launch.task_id, launch.spec.timeout
        error = ""
        proc: trio.Process | None = None
        cell: str | None = None
        probe = self._probes[task_id] = _Probe(task_id)
        try:
            with self._scopes[task_id]:
                try:
                    await self._localize_inputs(launch)
                    cell = await self._make_cell(launch)
                    proc, control = await self._spawn(launch, cell)
                except (PlasmaError, OSError) as exc:
                    error = f"cannot start: {exc}"
                    return
                with control:
                    async with trio.open_nursery() as nursery:
                        assert proc.stdout is not None
                        nursery.start_soon(self._relay_output, task_id, proc.stdout)
                        await self._register(launch, proc.pid, probe)
                        with suppress(OSError):  # the launcher died: its exit code tells why
                            await control.send(GO)
                        nursery.start_soon(self._answer_end, control, probe)
                        with trio.move_on_after(math.inf if timeout is None else timeout):
                            await proc.wait()
                        if proc.returncode is None:
                            error = f"timed out after {timeout:g}s, killed"
                        await self._stop(proc)  # closes the pipe and the socket: readers end
        finally:
            with trio.CancelScope(shield=True):
                if proc is not None:
                    await self._stop(proc)
                if cell is not None:
                    await self._remove_cell(cell)
                await self._final_sample(probe)
                code = None if proc is None else proc.returncode
                self.sched.finished(task_id, code, time.time(), error)
                self._changed()
                self._write_outputs()  # partial metrics stay current while the run goes on

    async def _localize_inputs(self, launch: Launch) -> None:
        """``inputs_local``: move (``migrate``) or copy (``replicate``) the task's inputs to
        its node (when it has one) before it starts; an input that cannot be is read where
        it is (logged)."""
        local = launch.spec.inputs_local
        if local is None or len(launch.nodes) != 1 or not self._client:
            return
        node = launch.nodes[0]
        for name in launch.spec.inputs:
            oid = object_id(self.run_id, name)
            try:
                if local == "migrate":
                    await self._client.migrate(oid, node)
                else:
                    await self._client.replicate(oid, [node])
            except PlasmaError as exc:
                self.options.log(f"[runner] {launch.task_id}: input {name} stays put: {exc}")

    async def _make_cell(self, launch: Launch) -> str | None:
        """The task's own cell of its placement, when it (or the run) asks for one."""
        if not (self.options.cells or launch.spec.cell):
            return None
        name = task_cell_name(self.run_id, launch.task_id, launch.attempt)
        spec = CellSpec.confining(name, launch.cpus, launch.nodes, self.topology)
        with trio.CancelScope(shield=True):  # made means returned: the caller removes it
            await trio.to_thread.run_sync(self.cgroups.create, spec)
        self._cells[launch.task_id] = name
        return name

    async def _remove_cell(self, name: str) -> None:
        """Kill whatever the task left in its cell and remove the cell."""
        try:
            await trio.to_thread.run_sync(self.cgroups.kill_and_remove, name)
        except (PlasmaError, OSError) as exc:
            self.options.log(f"[runner] cell {name} not removed: {exc}")

    async def _spawn(
        self, launch: Launch, cell: str | None
    ) -> tuple[trio.Process, trio.socket.SocketType]:
        """Start the launcher in its own session; returns it and our end of its control socket."""
        ours, theirs = socket.socketpair()
        with theirs:
            try:
                proc = await trio.lowlevel.open_process(
                    self._argv(launch, theirs.fileno(), cell),
                    env=self._env(launch),
                    cwd=str(self.options.workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=(theirs.fileno(),),
                )
            except BaseException:
                ours.close()
                raise
        return proc, trio.socket.from_stdlib_socket(ours)

    async def _register(self, launch: Launch, pid: int, probe: _Probe) -> None:
        """Have the coordinator sample the new task process (counting from now on)."""
        home = launch.nodes[0] if len(launch.nodes) == 1 else None
        probe.pid = pid
        if not self.options.perf:
            probe.error = "not sampled: perf sampling is off (--no-perf)"
            return
        try:
            await self._client.register_task(launch.task_id, pid, node=home, run_id=self.run_id)
        except PlasmaError as exc:  # e.g. the process already ended: it is not sampled
            probe.error = f"not sampled: {exc}"
        else:
            probe.registered = True

    async def _answer_end(self, control: trio.socket.SocketType, probe: _Probe) -> None:
        """A ``call`` task says it is about to exit: sample it while its memory still exists."""
        with suppress(OSError):
            if await control.recv(1) == END:
                await self._final_sample(probe)
                await control.send(ACK)

    async def _final_sample(self, probe: _Probe) -> None:
        """End the coordinator's sampling of ``probe``'s task and keep its last sample."""
        if not probe.registered or probe.finished:
            return
        try:
            await self._client.task_done(probe.task_id, self.run_id)
            stats = await self._client.stats()
        except (PlasmaError, OSError) as exc:
            probe.error = f"no final sample: {exc}"
            return
        probe.finished = True
        key = (probe.task_id, self.run_id, probe.pid)
        rows = [r for r in stats["tasks"] if (r["task_id"], r["run_id"], r["pid"]) == key]
        probe.sample = rows[0]["latest"] if rows else None
        if probe.sample is None:
            probe.error = "no final sample: the coordinator no longer lists the task"

    async def _relay_output(self, task_id: str, stream: trio.abc.ReceiveStream) -> None:
        pending = b""
        async for chunk in stream:
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self.options.log(f"[{task_id}] {line.decode(errors='replace')}")
        if pending:
            self.options.log(f"[{task_id}] {pending.decode(errors='replace')}")

    async def _stop(self, proc: trio.Process) -> None:
        """End the task's whole process group: SIGTERM, SIGKILL after the grace period."""
        if proc.returncode is None:
            _killpg(proc.pid, signal.SIGTERM)
            with trio.move_on_after(self.options.kill_grace):
                await proc.wait()
        _killpg(proc.pid, signal.SIGKILL)  # also whatever the task left behind
        await proc.wait()

    def _argv(self, launch: Launch, control: int, cell: str | None) -> list[str]:
        argv = [sys.executable, "-m", "plasma.dag.launch", "--cpus", _ints(launch.cpus)]
        argv += ["--control", str(control)]
        if cell is not None:
            argv += ["--cell", cell, "--cgroup-root", str(self.cgroups.root)]
        if launch.membind:
            argv += ["--membind", _ints(launch.membind)]
        if launch.spec.call is not None:
            return [*argv, "--call", launch.spec.call]
        return [*argv, "--", *(launch.spec.cmd or ())]

    def _env(self, launch: Launch) -> dict[str, str]:
        env = dict(os.environ)
        env.update(launch.spec.env)
        path = [_PLASMA_ROOT, str(self.options.workdir), env.get("PYTHONPATH", "")]
        env.update(
            PYTHONPATH=os.pathsep.join(p for p in path if p),
            PATH=os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")]),
            PYTHONUNBUFFERED="1",
            PLASMA_SOCKET=self._socket,
            PLASMA_RUN_ID=self.run_id,
            PLASMA_TASK_ID=launch.task_id,
            PLASMA_TASK_ATTEMPT=str(launch.attempt),
            PLASMA_TASK_CPUS=_ints(launch.cpus),
            PLASMA_TASK_INPUTS=json.dumps(launch.spec.inputs),
            PLASMA_TASK_OUTPUTS=json.dumps(launch.spec.outputs),
            PLASMA_TASK_ARGS=json.dumps(launch.spec.args),
        )
        return env

    # ------------------------------------------------------------------ dynamic branches

    async def _serve_branches(self, client: Any, nursery: trio.Nursery) -> None:
        async for request in client.run_requests():
            nursery.start_soon(self._answer, client, request)

    async def _answer(self, client: Any, request: Any) -> None:
        try:
            call = branches.decode_call(request.payload)
            if isinstance(call, branches.Wait):
                result: Any = await self._wait(call)
            else:
                specs = branches.branch_specs(call)
                rows = await client.list()
                wanted = {n for s in specs for n in s.inputs}
                present = {n for n in wanted if object_id(self.run_id, n) in rows}
                ids = self.sched.submit(call.parent, specs, present)
                self._changed()
                result = [{"id": i, "outputs": self.sched.tasks[i].spec.outputs} for i in ids]
        except PlasmaError as exc:
            await client.respond_error(request, exc.code, str(exc)[: p.MAX_STRING])
        else:
            await client.respond(request, result)

    async def _wait(self, call: branches.Wait) -> list[dict[str, Any]]:
        self.sched.check_wait(call.parent, call.ids)
        if call.parent in self.sched.tasks and not self.sched.settled(call.ids):
            self.sched.block(call.parent)
            self._changed()
        while True:
            tick = self._tick
            if self.sched.settled(call.ids):
                break
            await tick.wait()
        return [
            {"id": i, "status": t.status, "outputs": t.spec.outputs, "error": t.error}
            for i in call.ids
            for t in [self.sched.tasks[i]]
        ]

    # ------------------------------------------------------------------ signals, outputs

    async def _watch_signals(self, cancel_scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                name = signal.Signals(signum).name
                if self.sched.status == "interrupted":
                    self.options.log(f"[runner] {name} again: killing every task now")
                    cancel_scope.cancel()  # supervisors still kill and reap their tasks
                    return
                running = len(self.sched.running())
                self.options.log(f"[runner] {name}: stopping {running} running task(s)")
                self.sched.interrupt()
                self._changed()

    def _write_outputs(self) -> None:
        record = self.record()
        if self.options.record_file is not None:
            write_record(self.options.record_file, record)
        if self.options.prom_file is not None:
            write_prometheus(self.options.prom_file, record)


def _ints(values: list[int]) -> str:
    return ",".join(map(str, values))


def _killpg(pgid: int, sig: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


async def run_pipeline(
    spec: PipelineSpec, options: RunOptions, run_id: str | None = None
) -> dict[str, Any]:
    """Run ``spec`` and return its run record."""
    return await Runner(spec, options, run_id).run()
