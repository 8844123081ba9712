"""mbind / move_pages on a real two-node kernel, inside ``numa-vm --nodes 2`` (one boot)."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_guest_script

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
    result = run_guest_script(GUEST_SCRIPT, nodes=2, cwd=tmp_path)
    pages = (8 << 20) // os.sysconf("SC_PAGE_SIZE")
    assert result["online"] == "0-1"
    assert result["anon"] == [1] * pages
    assert result["memfd"] == [1] * pages
    assert result["policy"] == [2, [1]]  # MPOL_BIND on node 1
