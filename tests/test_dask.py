"""plasma.dask on a real distributed cluster: one scheduler process, four worker processes.

Two coordinators on two sockets stand in for two hosts, with two workers each. Checked with
distributed's own counters (``transfer_outgoing_log``: ``total`` is the size of the keys,
``compressed`` the bytes the comm wrote): a same-host transfer of a large key sends its id,
a cross-host one its bytes; results no peer reads never enter a store; results match plain
Dask; freed keys, closed and killed workers (also in the middle of a transfer) leave the
stores empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import check_coordinator, start_coordinator, wait_until
from tests.helpers import MIB, REPO, SCHEDULER

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

import cloudpickle  # noqa: E402

import plasma  # noqa: E402
from plasma.dask._store import PREFIX  # noqa: E402
from plasma.ids import ObjectID  # noqa: E402

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def dask_objects(socket: str) -> dict[Any, dict[str, Any]]:
    """The plasma.dask objects in the coordinator at ``socket``."""
    with plasma.connect(socket) as client:
        return {k: v for k, v in client.list().items() if k.binary().startswith(PREFIX)}


@dataclass
class Cluster:
    client: Any  # distributed.Client
    hosts: dict[str, list[str]]  # socket -> worker addresses
    procs: dict[str, subprocess.Popen[bytes]]  # worker address -> its process
    logs: dict[str, Path]

    def host_of(self, worker: str) -> str:
        return next(s for s, ws in self.hosts.items() if worker in ws)


# the scheduler's active memory manager drops replicas of keys every 2 s: the tests look at
# which worker holds what, so it stays off
NO_AMM = {"DASK_DISTRIBUTED__SCHEDULER__ACTIVE_MEMORY_MANAGER__START": "False"}


def _spawn(
    argv: list[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env={**os.environ, **(env or {})}
        )


def start_worker(scheduler: str, socket: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nthreads", "1"]
    argv += ["--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--memory-limit", "0"]
    argv += ["--preload", "plasma.dask.preload", "--plasma-socket", socket, *extra]
    return _spawn(argv, log)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The module's cluster: its tests leave it as they found it."""
    with start_cluster(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster


@contextlib.contextmanager
def start_cluster(tmp: Path) -> Iterator[Cluster]:
    """A scheduler, two coordinators with two workers each; the coordinators must end
    cleanly (check_coordinator)."""
    coords = [start_coordinator(str(tmp / f"host{i}.sock"), "--memory", "256MiB") for i in (0, 1)]
    sched_file = tmp / "scheduler.json"
    sched = _spawn(
        [*SCHEDULER, "--scheduler-file", str(sched_file)],
        tmp / "scheduler.log",
        NO_AMM,
    )
    procs: list[subprocess.Popen[bytes]] = [sched]
    try:
        wait_until(sched_file.exists, timeout=60, what="the scheduler file")
        wait_until(lambda: sched_file.read_text().strip().endswith("}"), what="its content")
        address = json.loads(sched_file.read_text())["address"]
        logs = {}  # pid -> log
        for i, coord in enumerate([c for c in coords for _ in (0, 1)]):
            log = tmp / f"worker{i}.log"
            proc = start_worker(address, coord.socket, log, "--plasma-reap-interval", "0.2")
            procs.append(proc)
            logs[proc.pid] = log
        client = distributed.Client(address, timeout=60)
        client.wait_for_workers(4, timeout=60)
        info = client.run(lambda dask_worker: (dask_worker.data.socket_path, os.getpid()))
        hosts: dict[str, list[str]] = {c.socket: [] for c in coords}
        by_pid = {p.pid: p for p in procs}
        for worker, (socket, _) in sorted(info.items()):
            hosts[socket].append(worker)
        yield Cluster(
            client,
            hosts,
            {w: by_pid[pid] for w, (_, pid) in info.items()},
            {w: logs[pid] for w, (_, pid) in info.items()},
        )
        client.close()
    finally:
        for proc in reversed(procs):  # the workers, then the scheduler
            if proc.poll() is None:
                proc.terminate()
            proc.wait(timeout=30)
        problems = [problem for coord in coords if (problem := check_coordinator(coord))]
        if problems:
            pytest.fail("\n\n".join(problems), pytrace=False)


def objects_of(cluster: Cluster, key: str, workers: list[str]) -> dict[str, Any]:
    """The (object id, node, bytes) under which each worker holds ``key`` (None: memory)."""
    return cluster.client.run(lambda dask_worker: dask_worker.data.object_of(key), workers=workers)


def outgoing(cluster: Cluster, worker: str) -> list[tuple[str, int, int]]:
    """(peer, key bytes, bytes written) of every transfer ``worker`` sent."""
    log = cluster.client.run(
        lambda dask_worker: [
            (e["who"], e["total"], e["compressed"]) for e in dask_worker.transfer_outgoing_log
        ],
        workers=[worker],
    )
    return log[worker]


def test_same_host_transfers_send_ids_and_cross_host_bytes(cluster: Cluster) -> None:
    def _with_where(arr: Any, key: str, add: float, mul: float) -> tuple[Any, Any]:
        """``arr * mul + add``, and how the worker running it holds its input ``key``
        (asked while the task runs: afterwards the worker may already have let it go).
        (Nested: sent to the workers by value.)"""
        import distributed

        return arr * mul + add, distributed.get_worker().data.object_of(key)

    client = cluster.client
    (a1, a2), (b1, _) = cluster.hosts.values()
    x = client.submit(np.arange, MIB, dtype="f8", workers=[a1], pure=False)  # 8 MiB
    same = client.submit(_with_where, x, x.key, 0.0, 2.0, workers=[a2], pure=False)
    cross = client.submit(_with_where, x, x.key, 1.0, 1.0, workers=[b1], pure=False)
    try:
        doubled, on_a2 = same.result()
        added, on_b1 = cross.result()
        np.testing.assert_array_equal(doubled, np.arange(MIB) * 2.0)
        np.testing.assert_array_equal(added, np.arange(MIB) + 1.0)
        sent = {who: (total, wrote) for who, total, wrote in outgoing(cluster, a1)}
        assert sent[a2][0] == 8 * MIB and sent[a2][1] < 4096  # the id, not the bytes
        assert sent[b1][1] >= 8 * MIB  # the bytes
        # a2 read x by id: a borrowed view of a1's object, not a copy in its own store
        on_a1 = objects_of(cluster, x.key, [a1])[a1]  # (the future holds it there)
        assert on_a1 is not None and on_a2 == on_a1
        assert on_b1 is None  # b1 keeps the bytes it received in its memory, as plain Dask
        assert set(dask_objects(cluster.host_of(a1))) == {ObjectID(on_a1[0])}  # moved once
        assert not dask_objects(cluster.host_of(b1))
    finally:
        del x, same, cross  # (so that a failure here leaves nothing to the next tests)
    wait_until(lambda: not any(dask_objects(s) for s in cluster.hosts), what="freed objects")


def test_a_computation_across_both_hosts_matches_plain_dask(cluster: Cluster) -> None:
    rng = da.random.RandomState(17)
    x = rng.random_sample((1024, 1024), chunks=(256, 256))  # 16 chunks of 512 KiB
    y = (x + x.T).rechunk((1024, 128)) @ x[:, :64]
    expected = y.compute(scheduler="sync")
    result = cluster.client.compute(y).result()
    np.testing.assert_allclose(result, expected)
    wait_until(lambda: not any(dask_objects(s) for s in cluster.hosts), what="freed objects")


def test_results_no_peer_of_the_host_reads_stay_in_worker_memory(cluster: Cluster) -> None:
    client = cluster.client
    (a1, a2), (b1, _) = cluster.hosts.values()
    small = client.submit(np.ones, 1000, workers=[a1], pure=False)
    big = client.submit(np.ones, MIB, workers=[a1], pure=False)  # 8 MiB
    local = client.submit(np.sum, big, workers=[a1], pure=False)  # read on its own worker
    remote = client.submit(np.sum, big, workers=[b1], pure=False)  # and by another host
    tiny = client.submit(np.sum, small, workers=[a2], pure=False)  # a small one, same host
    assert local.result() == remote.result() == MIB and tiny.result() == 1000
    held = objects_of(cluster, small.key, [a1])[a1], objects_of(cluster, big.key, [a1])[a1]
    assert held == (None, None)
    assert not any(dask_objects(s) for s in cluster.hosts)


def test_the_worker_log_says_where_inputs_are(cluster: Cluster) -> None:
    (a1, a2), _ = cluster.hosts.values()
    client = cluster.client
    x = client.submit(np.zeros, MIB, workers=[a1], pure=False)
    y = client.submit(np.sum, x, workers=[a2], pure=False)
    assert y.result() == 0
    text = cluster.logs[a2].read_text()
    assert f"plasma.dask: running {y.key} on node" in text
    assert "8.0 MiB on node" in text


def test_a_worker_with_no_coordinator_fails_to_start_clearly(tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    proc = start_worker("tcp://127.0.0.1:1", str(tmp_path / "absent.sock"), log)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    assert f"cannot connect to plasma-coord at {tmp_path / 'absent.sock'}" in log.read_text()


def test_a_killed_worker_leaves_its_store_clean(tmp_path: Path) -> None:
    with start_cluster(tmp_path) as cluster:  # its own: the module's keeps its four workers
        client = cluster.client
        socket = next(iter(cluster.hosts))
        peer, victim = cluster.hosts[socket]
        x = client.submit(np.ones, 2 * MIB, workers=[victim], pure=False)  # 16 MiB
        assert client.submit(np.sum, x, workers=[peer], pure=False).result() == 2 * MIB
        assert dask_objects(socket)  # the peer read it: moved into the store
        cluster.procs[victim].send_signal(signal.SIGKILL)
        cluster.procs[victim].wait(timeout=30)
        # its peer on the same host reaps it (every 0.2 s here) once the coordinator saw it go
        wait_until(lambda: not dask_objects(socket), timeout=30, what="the dead worker's objects")


def _die_while_writing(dask_worker: Any) -> None:
    """Make this worker's next move into the store stop dead half-way through writing the
    object: it creates the object, writes half of it, and kills its own process."""
    store = dask_worker.data
    client = store.client

    def put(value: Any, oid: Any, node: Any = None) -> None:
        buffer = client.create(oid, 8 * MIB, node=node)
        buffer[: 4 * MIB] = b"\xff" * (4 * MIB)
        os.kill(os.getpid(), signal.SIGKILL)

    client.put = put


def test_a_worker_killed_in_the_middle_of_a_transfer_leaves_nothing(tmp_path: Path) -> None:
    with start_cluster(tmp_path) as cluster:  # its own: this test kills one of its workers
        client = cluster.client
        socket = next(iter(cluster.hosts))
        peer, victim = cluster.hosts[socket]
        x = client.submit(
            np.arange, MIB, dtype="f8", workers=[victim], allow_other_workers=True, pure=False
        )
        x.result()
        client.run(_die_while_writing, workers=[victim])
        # the peer asks for x: the victim dies writing it into the store; Dask computes x
        # again on a live worker, so the result is still right
        y = client.submit(np.sum, x, workers=[peer], pure=False)
        assert y.result() == np.arange(MIB, dtype="f8").sum()
        assert cluster.procs[victim].wait(timeout=30) == -signal.SIGKILL
        # the coordinator aborted the half-written object when the victim's connection went
        wait_until(lambda: not dask_objects(socket), timeout=30, what="the unsealed object")
