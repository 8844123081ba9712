"""``plasma-coord topology | place | run`` end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.topologies import unpack
from plasma.cli import main
from plasma.placement import PlacementRequest, Placer
from plasma.topology import Topology, parse_cpulist
from tests.conftest import run_in_numa_vm
from tests.helpers import PLASMA, REPO


@pytest.fixture(scope="module")
def amd64_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(unpack("64amd64-4s2n4ca2co", tmp_path_factory.mktemp("cli")))


def run_plasma(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PLASMA, *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )


def status_field(text: str, name: str) -> str:
    return next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(name)
    )


def test_topology_json(amd64_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--json", "--sysfs-root", amd64_root]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["nodes"]) == 8
    node0 = data["nodes"][0]
    assert node0["cpus"] == list(range(8)) and node0["memory_total"] == 16769836 * 1024
    assert node0["distances"]["1"] == 16
    cpu = data["cpus"][9]
    assert cpu["node"] == 1 and cpu["package"] == 0 and cpu["online"] and cpu["siblings"] == [9]


def test_topology_text_like_numactl(amd64_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["topology", "--sysfs-root", amd64_root]) == 0
    out = capsys.readouterr().out
    assert "available: 8 nodes (0-7)" in out
    assert "node 5 cpus: 40 41 42 43 44 45 46 47" in out
    assert "node 5 size: 8192 MB" in out
    assert "  3:   22  16  16  10" in out
    assert "packages: 4" in out and "cores: 64" in out


def test_place_json_and_explain(amd64_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--sysfs-root", amd64_root]
    assert main(["place", "--cpus", "12", "--json", *root]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["cpus"]) == 12 and data["nodes"] == [0, 1] and data["explanation"]
    assert main(["place", "--cpus", "4", "--numa", "3", "--explain", *root]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cpus: 24-27\nnodes: 3\n") and "requested with numa" in out


def test_place_impossible_is_reported(amd64_root: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["place", "--cpus", "9", "--policy", "single-numa-node", "--sysfs-root", amd64_root]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "[placement_impossible]" in err and "no single node has 9" in err


def test_run_pins_the_child() -> None:
    topo = Topology.current()
    want = Placer(topo).place(PlacementRequest(1)).cpus
    done = run_plasma("run", "--cpus", "1", "--", "cat", "/proc/self/status")
    assert done.returncode == 0, done.stderr
    assert parse_cpulist(status_field(done.stdout, "Cpus_allowed_list")) == set(want)
    every = run_plasma(
        "run", "--cpus", str(len(topo.allowed_cpus)), "--", "cat", "/proc/self/status"
    )
    assert parse_cpulist(status_field(every.stdout, "Cpus_allowed_list")) == topo.allowed_cpus


def test_run_membind_sets_the_child_policy() -> None:
    probe = "from plasma.linux.numa import get_mempolicy; print(*get_mempolicy())"
    done = run_plasma(
        "run", "--cpus", "1", "--numa", "0", "--membind", "--", sys.executable, "-c", probe
    )
    assert done.returncode == 0, done.stderr
    mode, nodes = done.stdout.split(" ", 1)
    assert int(mode) == 2 and nodes.strip() == "[0]"  # MPOL_BIND to node 0


def test_run_errors() -> None:
    no_cmd = run_plasma("run", "--cpus", "1")
    assert no_cmd.returncode == 1 and "needs a command" in no_cmd.stderr
    missing = run_plasma("run", "--cpus", "1", "--", "/nonexistent/tool")
    assert missing.returncode == 127 and "cannot run" in missing.stderr
    too_many = run_plasma("run", "--cpus", "4096", "--", "true")
    assert too_many.returncode == 1 and "placement_impossible" in too_many.stderr


@pytest.mark.numa_vm
def test_run_numa1_membind_in_vm(tmp_path: Path) -> None:
    probe = (
        "import os; from plasma.linux.numa import get_mempolicy; "
        "print(sorted(os.sched_getaffinity(0)), *get_mempolicy())"
    )
    run = [sys.executable, "-m", "plasma", "run", "--cpus", "2", "--numa", "1", "--membind"]
    done = run_in_numa_vm(
        [*run, "--", sys.executable, "-c", probe], nodes=2, cpus=4, cwd=tmp_path, timeout=240
    )
    assert done.stdout.strip().splitlines()[-1:] == ["[2, 3] 2 [1]"]  # node 1's CPUs, BIND to 1
