"""mbind / move_pages on a real two-node kernel, inside ``numa-vm --nodes 2`` (one boot)."""

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
VM_SETUP_FAILED = 125  # numa-vm's exit status when the VM itself cannot run

GUEST_SCRIPT = textwrap.dedent(
    """
    import json, mmap, os
    from plasma.linux import memfd, numa

    def bound_to_node1(mm):
        address = numa.buffer_address(mm)
        numa.mbind(address, len(mm), numa.MPOL_BIND, [1], numa.MPOL_MF_STRICT)
        memfd.prefault(mm)
        return numa.page_nodes(address, len(mm), mmap.PAGESIZE)

    anon = mmap.mmap(-1, 8 << 20)
    fd = memfd.memfd_create("segment")
    os.ftruncate(fd, 8 << 20)  # size only: the pages are allocated after mbind
    shared = mmap.mmap(fd, 8 << 20)
    numa.set_mempolicy(numa.MPOL_BIND, [1])
    result = {
        "online": open("/sys/devices/system/node/online").read().strip(),
        "anon": bound_to_node1(anon),
        "memfd": bound_to_node1(shared),
        "policy": numa.get_mempolicy(),
    }
    print("RESULT " + json.dumps(result))
    """
)


@pytest.mark.numa_vm
def test_mbind_node1_in_a_two_node_vm(tmp_path: Path) -> None:
    if not os.access(NUMA_VM, os.X_OK):
        pytest.skip(f"numa-vm not found at {NUMA_VM}")
    script = tmp_path / "guest.py"
    script.write_text(GUEST_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [str(NUMA_VM), "--nodes", "2", "--timeout", "400", "--", sys.executable, str(script)]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=450, check=False
    )
    if proc.returncode == VM_SETUP_FAILED:
        pytest.skip(f"numa-vm could not start the VM: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    result = json.loads(lines[-1].removeprefix("RESULT "))
    pages = (8 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert result["online"] == "0-1"
    assert result["anon"] == [1] * pages
    assert result["memfd"] == [1] * pages
    assert result["policy"] == [2, [1]]  # MPOL_BIND on node 1
