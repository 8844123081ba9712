"""On a real two-node kernel (``numa-vm --nodes 2``): a task runs and binds next to its input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUMA_VM = REPO.parent / "shared" / "numa-vm"
VM_SETUP_FAILED = 125

TASKS = """
import numpy as np

def make(ctx):
    ctx.output("x", np.ones(1 << 20), node=1)

def use(ctx):
    status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines()
                  if ":\\t" in line)
    print("ALLOWED", status["Cpus_allowed_list"].strip())
    from plasma.linux.numa import get_mempolicy
    print("POLICY", get_mempolicy())
"""

PIPELINE = """
tasks:
  - {name: make, call: "vmtasks:make", outputs: [x]}
  - {name: use, call: "vmtasks:use", inputs: [x], membind: true}
"""


@pytest.mark.numa_vm
def test_task_runs_and_binds_on_the_node_of_its_input(tmp_path: Path) -> None:
    if not os.access(NUMA_VM, os.X_OK):
        pytest.skip(f"numa-vm not found at {NUMA_VM}")
    (tmp_path / "vmtasks.py").write_text(TASKS)
    (tmp_path / "p.yaml").write_text(textwrap.dedent(PIPELINE))
    cmd = [
        str(NUMA_VM),
        "--nodes",
        "2",
        "--timeout",
        "500",
        "--",
        sys.executable,
        "-m",
        "plasma",
        "dag",
        "run",
        "p.yaml",
        "--memory",
        "64MiB",
        "--record",
        "rec.json",
    ]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=560,
        check=False,
    )
    if proc.returncode == VM_SETUP_FAILED:
        pytest.skip(f"numa-vm could not start the VM: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    use = {t["id"]: t for t in json.loads((tmp_path / "rec.json").read_text())["tasks"]}["use"]
    assert use["node"] == 1 and use["nodes"] == [1]
    allowed = next(line for line in proc.stdout.splitlines() if "ALLOWED" in line).split()
    assert _cpulist(allowed[-1]) == use["cpus"]  # pinned to the CPUs the runner chose
    assert "POLICY (2, [1])" in proc.stdout  # memory policy MPOL_BIND to node 1


def _cpulist(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus
