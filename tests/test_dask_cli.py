"""``plasma-coord dask-worker``: its plan, and a real run against a scheduler on this host."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import wait_until
from tests.helpers import REPO

distributed = pytest.importorskip("distributed")

import cloudpickle  # noqa: E402

from plasma.cli.dask_worker import plan, store_memory, worker_argv  # noqa: E402
from plasma.errors import BadRequest  # noqa: E402
from plasma.topology import Topology  # noqa: E402
from tests.helpers import PLASMA, SCHEDULER  # noqa: E402

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests


def test_the_plan_is_one_pinned_worker_per_node() -> None:
    topo = Topology.current()
    workers = plan(topo, None, None)
    assert [w.node for w in workers] == sorted(n for n, i in topo.nodes.items() if i.cpus)
    for w in workers:
        assert set(w.placement.cpus) <= topo.nodes[w.node].cpus and w.placement.home == w.node
        argv = worker_argv(
            "tcp://s:1", w, socket_path="/s.sock", memory_limit=1 << 30, threshold=1, place=True
        )
        assert argv[argv.index("--resources") + 1] == f"numa-{w.node}={w.nthreads}"
        assert argv[-1] == "--plasma-place" and "--plasma-socket" in argv
    with pytest.raises(BadRequest, match="node"):
        plan(topo, [max(topo.nodes) + 1], None)
    assert store_memory("1GiB", topo, [0]) == 1 << 30
    assert store_memory("50%", topo, [0]) == topo.nodes[0].memory_total // 2


def test_an_unreachable_socket_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*PLASMA, "dask-worker", "tcp://127.0.0.1:1", "--socket", str(tmp_path / "absent.sock")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "cannot connect to plasma-coord at" in proc.stderr


def test_dask_worker_starts_pinned_workers_on_its_own_coordinator(tmp_path: Path) -> None:
    sched_file = tmp_path / "scheduler.json"
    sched = subprocess.Popen(
        [*SCHEDULER, "--scheduler-file", str(sched_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    cli = None
    try:
        wait_until(lambda: sched_file.exists() and sched_file.read_text().endswith("}"))
        address = json.loads(sched_file.read_text())["address"]
        cli = subprocess.Popen(
            [*PLASMA, "dask-worker", address, "--store-memory", "128MiB"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        topo = Topology.current()
        nodes = [n for n, i in topo.nodes.items() if i.cpus]
        with distributed.Client(address, timeout=60) as client:
            client.wait_for_workers(len(nodes), timeout=60)
            info = client.scheduler_info()["workers"].values()
            assert sorted(r for w in info for r in w["resources"]) == [f"numa-{n}" for n in nodes]
            seen = client.run(_where)
            for cpus, policy in seen.values():
                node = topo.node_for_cpus(cpus)
                assert set(cpus) <= topo.nodes[node].cpus  # type: ignore[index]
                assert policy == [2, [node]]  # MPOL_BIND to its node
            x = client.submit(np.ones, 1 << 18, pure=False)  # 2 MiB
            assert client.run(lambda dask_worker: x.key in dask_worker.data)
            assert x.result().sum() == 1 << 18
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=60)
        assert cli.returncode == 0, err
        assert "memory bound to node" in err
    finally:
        for proc in (cli, sched):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()


def _where() -> tuple[list[int], list[object]]:
    from plasma.linux.numa import get_mempolicy

    mode, nodes = get_mempolicy()
    return sorted(os.sched_getaffinity(0)), [mode, nodes]
