"""The worker and scheduler plugins: the I/O shell around the store and placement (internal).

:class:`PlasmaPlugin` (a ``WorkerPlugin``) installs a :class:`~plasma.dask._store.PlasmaData`
over the worker's data (once :mod:`plasma.dask._internals` has checked the worker has what it
relies on), answers ``get_data`` requests of same-host peers with object ids, reaps the
objects of dead workers, tags each result with its location for :class:`PlasmaScheduler`
when it placed one on the scheduler (task metadata, which the scheduler receives) and logs
where the inputs of each task it runs are.
:class:`PlasmaScheduler` (a ``SchedulerPlugin``) restricts a task whose inputs are ready to
the workers at the location holding most of its input bytes
(:func:`plasma.dask._placement.choose_worker`).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import pickle
import time
from collections import defaultdict
from typing import Any

from distributed import Scheduler, SchedulerPlugin, Worker, WorkerPlugin
from distributed.core import Status
from tornado.ioloop import PeriodicCallback

from plasma.dask._internals import check_installed, check_worker
from plasma.dask._placement import MIN_SHARE, Input, Location, choose_worker, describe_inputs
from plasma.dask._reaper import reap
from plasma.dask._store import CLIENT_NAME, DEFAULT_THRESHOLD, PlasmaData, Serving, serving
from plasma.errors import PlasmaError, Unsupported

logger = logging.getLogger("plasma.dask")

PLACEMENT = "plasma-placement"  # the task annotation carrying the scheduler's reason
METADATA = "plasma"  # the task metadata key: {"location": [token, node]}, for PlasmaScheduler
_PEERS_REFRESH = 1.0  # seconds between two looks at the coordinator's client list
_FLUSH_INTERVAL = 0.1  # seconds between two sends of the releases of dropped views
_IDLE_FLUSH_INTERVAL = 1.0  # the same while the worker holds no object (each costs an RPC)


class PlasmaPlugin(WorkerPlugin):
    """Share the worker's results with the workers of the coordinator at ``socket_path``
    by id (see :mod:`plasma.dask`).

    ``threshold``: results of at least this many bytes are shared by id. ``reap_interval``:
    seconds between two sweeps for the objects of dead workers (0: only at start).
    ``place_tasks``: also register :class:`PlasmaScheduler` on the scheduler (once).
    One instance per worker (``Client.register_plugin`` sends each worker its own copy).
    """

    name = "plasma.dask"

    def __init__(
        self,
        socket_path: str,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        reap_interval: float = 10.0,
        place_tasks: bool = False,
    ) -> None:
        self.socket_path = socket_path
        self.threshold = threshold
        self.reap_interval = reap_interval
        self.place_tasks = place_tasks

    async def setup(self, worker: Worker) -> None:
        _log_like_distributed()
        check_worker(worker)
        store = PlasmaData(
            self.socket_path, threshold=self.threshold, name=worker.address, memory=worker.data
        )
        _ = store.client  # connect now: a wrong socket fails the plugin with Disconnected
        worker.memory_manager.data = worker.state.data = store
        try:
            check_installed(worker, store)
        except Unsupported:
            worker.memory_manager.data = worker.state.data = store.memory
            store.close()
            raise
        self.worker, self.store = worker, store
        self._peers: set[str] = set()
        self._peers_checked = float("-inf")
        self._flushed, self._held = float("-inf"), False
        self._get_data = worker.handlers["get_data"]
        worker.handlers["get_data"] = self.get_data
        self._reap()
        flush = PeriodicCallback(self._flush, _FLUSH_INTERVAL * 1000)
        worker.periodic_callbacks["plasma-flush"] = flush
        flush.start()
        if self.reap_interval > 0:
            callback = PeriodicCallback(self._reap, self.reap_interval * 1000)
            worker.periodic_callbacks["plasma-reap"] = callback
            callback.start()
        if self.place_tasks:
            await worker.scheduler.register_scheduler_plugin(
                plugin=pickle.dumps(PlasmaScheduler()),
                name=PlasmaScheduler.name,
                idempotent=True,
            )
        token, node = store.location
        logger.info(
            "plasma.dask: worker %s shares results of %d bytes or more through %s (node %s, "
            "coordinator %s)",
            worker.address,
            self.threshold,
            self.socket_path,
            node,
            token,
        )

    def teardown(self, worker: Worker) -> None:
        for name in ("plasma-reap", "plasma-flush"):
            callback = worker.periodic_callbacks.pop(name, None)
            if callback is not None:
                callback.stop()
        worker.handlers["get_data"] = self._get_data
        store = self.store
        if worker.status not in (Status.closing, Status.closed, Status.closing_gracefully):
            # the plugin goes, the worker stays: its own mapping takes copies of the values
            # held in the store
            for key in [key for key in store if store.object_of(key) is not None]:
                value = _detached(store[key])
                del store[key]
                store.memory[key] = value
            worker.memory_manager.data = worker.state.data = store.memory
        store.close()

    # ------------------------------------------------------------ transfers

    async def get_data(
        self, comm: Any, keys: Any, who: str | None = None, serializers: Any = None
    ) -> Any:
        """``Worker.get_data``, answering a peer of the same coordinator with object ids
        (a peer in this process, reached by ``inproc://``, gets the values themselves:
        that comm hands objects over without pickling them)."""
        in_process = str(getattr(comm, "peer_address", "")).startswith("inproc://")
        request = Serving(same_host=who is not None and not in_process and self._is_peer(who))
        if request.same_host:  # the sizes the worker measured when it stored each result
            tasks = self.worker.state.tasks
            request.sizes = {
                k: ts.nbytes for k in keys if (ts := tasks.get(k)) is not None and ts.nbytes
            }
        token = serving.set(request)
        try:
            return await self._get_data(comm, keys=keys, who=who, serializers=serializers)
        finally:
            serving.reset(token)
            self.store.return_lent(request.lent)

    def _is_peer(self, address: str) -> bool:
        """Whether the worker at ``address`` is connected to our coordinator."""
        if address in self._peers:
            return True
        now = time.monotonic()
        if now - self._peers_checked >= _PEERS_REFRESH:
            self._peers_checked = now
            prefix = f"{CLIENT_NAME} "
            self._peers = {
                c["name"].removeprefix(prefix)
                for c in self.store.client.stats()["clients"]
                if c["name"].startswith(prefix)
            }
        return address in self._peers

    def _flush(self) -> None:
        """Send the releases of dropped views: every tick while the worker holds objects and
        once after it let the last go; else every ``_IDLE_FLUSH_INTERVAL`` (for views its
        tasks kept), so a worker whose results all stay in memory pays almost nothing."""
        now, held = time.monotonic(), self.store.holds_objects
        if held or self._held or now - self._flushed >= _IDLE_FLUSH_INTERVAL:
            self._flushed = now
            with contextlib.suppress(PlasmaError):  # the coordinator went away: calls say so
                self.store.flush()
        self._held = held

    def _reap(self) -> None:
        try:
            if reaped := reap(self.store.client):
                logger.info("plasma.dask: deleted %d objects of dead workers", reaped)
        except PlasmaError as exc:  # the coordinator went away: the next call says so
            logger.warning("plasma.dask: cannot look for objects of dead workers: %s", exc)

    # ------------------------------------------------------------ task events

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        """Per transition of every task: kept to a few dictionary lookups (a worker runs
        thousands of tasks a second), and the location is sent only to a scheduler plugin
        that reads it (``place_tasks``): task metadata costs every task-finished message."""
        if finish == "memory" and self.place_tasks:
            ts = self.worker.state.tasks.get(key)
            if ts is not None:
                stored = self.store.object_of(key)
                node = self.store.node if stored is None else stored[1]
                ts.metadata[METADATA] = {"location": [self.store.token, node]}
        elif finish == "executing" and logger.isEnabledFor(logging.INFO):
            ts = self.worker.state.tasks.get(key)
            if ts is not None:
                self._log_placement(ts)

    def _log_placement(self, ts: Any) -> None:
        nodes: dict[int | None, int] = defaultdict(int)
        memory = 0
        for dep in ts.dependencies:
            stored = self.store.object_of(dep.key)
            if stored is None:
                memory += dep.nbytes or 0
            else:
                nodes[stored[1]] += stored[2]
        reason = (ts.annotations or {}).get(PLACEMENT)
        level = logging.INFO if reason or nodes else logging.DEBUG
        if not logger.isEnabledFor(level):
            return
        logger.log(
            level,
            "plasma.dask: running %s on node %s%s; inputs: %s",
            ts.key,
            self.store.node,
            f" (scheduler: {reason})" if reason else "",
            describe_inputs(nodes, memory, self.store.node),
        )


def _log_like_distributed() -> None:
    """Send our log lines where the worker's own go (dask configures ``distributed`` only)."""
    if not logger.handlers:
        parent = logging.getLogger("distributed")
        for handler in parent.handlers:
            logger.addHandler(handler)
        logger.setLevel(parent.getEffectiveLevel())


def _detached(value: object) -> object:
    """A private, writable copy of ``value``, which does not point into the store (a pickle
    round trip would give arrays backed by immutable bytes: read-only)."""
    return copy.deepcopy(value)


class PlasmaScheduler(SchedulerPlugin):
    """Route each task to the workers at the location of most of its input bytes.

    A location is a coordinator and a NUMA node, learnt from the ``plasma`` metadata that
    :class:`PlasmaPlugin` workers attach to results. When all inputs of a task are in
    memory and it has no restrictions of its own, the task is restricted (loosely: it runs
    elsewhere if those workers leave) to the workers :func:`~plasma.dask.choose_worker`
    picks, and annotated with the reason, which the worker logs.
    """

    name = "plasma.dask-placement"

    def __init__(self, *, min_bytes: int = DEFAULT_THRESHOLD, min_share: float = MIN_SHARE):
        self.min_bytes = min_bytes
        self.min_share = min_share
        self.workers: dict[str, Location] = {}

    async def start(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        self.workers.pop(worker, None)

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        ts = self.scheduler.tasks.get(key)
        if ts is None:
            return
        if finish == "memory":
            location = _location(ts)
            worker = kwargs.get("worker")
            if location is not None and worker in self.scheduler.workers:
                self.workers[worker] = location
            for dependent in ts.dependents:
                if dependent.state == "waiting" and not dependent.waiting_on:
                    self._place(dependent)
        elif finish == "waiting" and not ts.waiting_on:
            self._place(ts)

    def _place(self, ts: Any) -> None:
        if ts.worker_restrictions or ts.host_restrictions or ts.resource_restrictions:
            return  # the user's restrictions win
        inputs = [
            Input(dep.nbytes, location)
            for dep in ts.dependencies
            if (location := _location(dep)) is not None and dep.nbytes > 0
        ]
        choice = choose_worker(
            inputs, self.workers, min_bytes=self.min_bytes, min_share=self.min_share
        )
        if choice is None:
            return
        ts.worker_restrictions = set(choice.workers)
        ts.loose_restrictions = True
        ts.annotations = {**(ts.annotations or {}), PLACEMENT: choice.reason}


def _location(ts: Any) -> Location | None:
    with contextlib.suppress(KeyError, TypeError, ValueError):
        token, node = ts.metadata[METADATA]["location"]
        return (token, node)
    return None
