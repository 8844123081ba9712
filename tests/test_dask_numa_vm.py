"""``plasma-coord dask-worker`` on a real two-node kernel (``numa-vm --nodes 2``, one boot).

Inside the guest: a scheduler, ``plasma-coord dask-worker`` (its own coordinator, one worker
per node), a result made on node 1's worker, then a task using it with no restrictions. The
test checks each worker is pinned to its node's CPUs with memory bound to it (MPOL_BIND),
advertises ``numa-N``, and that the task ran on node 1, saying why in the worker log.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_guest_script

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

pytest.importorskip("distributed")

GUEST = r"""
import json, os, subprocess, sys, time
import numpy as np
from distributed import Client

def where():
    from plasma.linux.numa import get_mempolicy
    mode, nodes = get_mempolicy()
    return sorted(os.sched_getaffinity(0)), mode, nodes

def cpus_of_task(x):
    return sorted(os.sched_getaffinity(0))

sched = subprocess.Popen(
    [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
     "--port", "0", "--no-dashboard", "--scheduler-file", "sched.json"],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
while not (os.path.exists("sched.json") and open("sched.json").read().endswith("}")):
    time.sleep(0.1)  # the scheduler writes its address file: nothing to wait on but the file
address = json.load(open("sched.json"))["address"]
log = open("cli.log", "w")
cli = subprocess.Popen([sys.executable, "-m", "plasma", "dask-worker", address,
                        "--store-memory", "64MiB", "--nthreads", "1"],
                       stdout=log, stderr=subprocess.STDOUT)
client = Client(address, timeout=300)
client.wait_for_workers(2, timeout=300)
info = client.scheduler_info()["workers"]
resources = {w: sorted(i["resources"]) for w, i in info.items()}
placed = client.run(where)
node1 = next(w for w, r in resources.items() if r == ["numa-1"])
x = client.submit(np.ones, 1 << 18, workers=[node1], pure=False)  # 2 MiB, on node 1
y = client.submit(cpus_of_task, x, pure=False)  # no restrictions: PlasmaScheduler places it
ran = y.result()
from plasma.topology import Topology
node_cpus = {str(n): sorted(i.cpus) for n, i in Topology.current().nodes.items()}
client.close()
cli.terminate()
cli.wait(timeout=120)
sched.terminate()
sched.wait(timeout=120)
text = open("cli.log").read()
lines = [l for l in text.splitlines() if "plasma.dask: running" in l and y.key in l]
print("RESULT " + json.dumps({"resources": resources, "placed": placed, "node1": node1,
                               "ran": ran, "log": lines, "cli_status": cli.returncode,
                               "node_cpus": node_cpus}))
"""


@pytest.mark.numa_vm
@pytest.mark.long  # 4-7 min under TCG (5 Python processes importing distributed); CI runs
# test_dask_cli.py's pinned workers on the host's own nodes instead
def test_each_worker_is_pinned_to_its_node_and_tasks_follow_their_input(tmp_path: Path) -> None:
    result = run_guest_script(GUEST, nodes=2, cwd=tmp_path)
    resources, placed = result["resources"], result["placed"]
    assert sorted(r for rs in resources.values() for r in rs) == ["numa-0", "numa-1"]
    for worker, (cpus, mode, nodes) in placed.items():
        node = int(resources[worker][0].removeprefix("numa-"))
        assert mode == 2 and nodes == [node], (worker, mode, nodes)  # MPOL_BIND to its node
        assert len(cpus) == 1 and set(cpus) <= set(result["node_cpus"][str(node)])  # --nthreads 1
    assert result["ran"] == placed[result["node1"]][0]  # on node 1's CPUs, next to x
    assert result["log"] and "on node 1" in result["log"][0]
    assert "(scheduler: 100% of its 2.0 MiB of input is on node 1" in result["log"][0]
    assert result["cli_status"] == 0
