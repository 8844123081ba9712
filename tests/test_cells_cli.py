"""``plasma-coord cell ...``, ``run --cell`` and DAG tasks in cells, on a fake cgroup tree.

The commands run in this process against :class:`FakeKernel`; the launcher they start is a
real process that joins its cell by writing ``cgroup.procs`` of the fake tree. On a host
without cgroup v2 (this development machine), every cell command must say what is missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import plasma.cli.cell
import plasma.linux.processes
from plasma.cli import main
from plasma.dag.runner import RunOptions, run_pipeline
from plasma.dag.spec import decode_pipeline
from plasma.linux.cgroup import CgroupTree
from plasma.topology import format_cpulist
from tests.helpers import PLASMA, REPO, FakeKernel

CPUS = sorted(os.sched_getaffinity(0))
HOST_HAS_CGROUP2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "cgroup", cpus=f"{CPUS[0]}-{CPUS[-1]}", mems="0")


@pytest.fixture
def root(kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cgroup root the commands use; their trees go through the fake kernel."""
    monkeypatch.setattr(
        plasma.cli.cell,
        "CgroupTree",
        lambda root: CgroupTree(root, files=kernel, mounts=kernel.top / "no-mounts"),
    )
    return kernel.top / "plasma-coord"


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------------- a cgroup v1 host

CELL_COMMANDS = [
    ["cell", "create", "c1", "--cpus", "1"],
    ["cell", "list"],
    ["cell", "run", "c1", "--", "true"],
    ["cell", "attach", "c1", "1"],
    ["cell", "destroy", "c1"],
    ["cell", "evict-foreign", "c1"],
    ["run", "--cpus", "1", "--cell", "--", "true"],
]


@pytest.mark.skipif(HOST_HAS_CGROUP2, reason="this host has cgroup v2: it would make cells")
@pytest.mark.parametrize("argv", CELL_COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_cell_command_says_cgroup_v2_is_missing(argv: list[str]) -> None:
    proc = subprocess.run([*PLASMA, *argv], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert (
        "error [unsupported]: cells need cgroup v2: /sys/fs/cgroup/cgroup.controllers does not "
        "exist" in proc.stderr
    ), proc.stderr


@pytest.mark.coordinator
@pytest.mark.skipif(HOST_HAS_CGROUP2, reason="this host has cgroup v2: it would make cells")
def test_dag_run_with_cells_fails_before_running_and_without_works(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("tasks:\n  - {name: a, cmd: [touch, ran]}\n")
    dag = [sys.executable, "-m", "plasma", "dag", "run", "p.yaml", "--memory", "16MiB"]
    proc = subprocess.run([*dag, "--cells"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "cells need cgroup v2" in proc.stderr, proc.stderr
    assert not (tmp_path / "ran").exists()
    proc = subprocess.run([*dag, "--no-perf"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and (tmp_path / "ran").exists(), proc.stderr


# ---------------------------------------------------------------------- cell commands


def test_create_list_attach_destroy(
    root: Path, capsys: pytest.CaptureFixture[str], sleeper: subprocess.Popen[bytes]
) -> None:
    base = ["--cgroup-root", str(root)]
    status, out, _ = cli(capsys, "cell", "create", "c1", "--cpus", "1", "--json", *base)
    assert status == 0
    created = json.loads(out)
    assert created["name"] == "c1" and created["partition"] == "member"
    assert created["cpus_effective"] == str(CPUS[0]) and created["mems_effective"] == "0"
    assert cli(capsys, "cell", "attach", "c1", str(sleeper.pid), *base)[0] == 0
    status, out, _ = cli(capsys, "cell", "list", "--json", *base)
    assert [(c["name"], c["procs"]) for c in json.loads(out)] == [("c1", [sleeper.pid])]
    status, out, _ = cli(capsys, "cell", "list", *base)
    assert out.splitlines()[1].split() == ["c1", str(CPUS[0]), "0", "member", str(sleeper.pid)]
    status, _, err = cli(capsys, "cell", "destroy", "c1", *base)
    assert status == 1 and f"still has processes {sleeper.pid}" in err
    sleeper.kill()
    sleeper.wait()
    assert cli(capsys, "cell", "destroy", "c1", *base)[0] == 0
    assert not (root / "c1").exists()


@pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs for two cells")
def test_a_new_cell_avoids_the_cpus_of_other_cells(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--cgroup-root", str(root)]
    cells = [
        json.loads(cli(capsys, "cell", "create", n, "--cpus", "1", "--json", *base)[1])
        for n in ("a", "b")
    ]
    assert cells[0]["cpus"] != cells[1]["cpus"]
    status, _, err = cli(capsys, "cell", "create", "c", "--cpus", str(len(CPUS)), *base)
    assert status == 1 and "belong to other cells" in err


def test_bad_cell_name_is_refused(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(
        capsys, "cell", "create", "../../etc", "--cpus", "1", "--cgroup-root", str(root)
    )
    assert status == 1 and "invalid cell name" in err
    assert [p for p in root.parent.iterdir() if p.is_dir()] == []  # refused before any mkdir


def test_cell_run_moves_itself_in_before_exec(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(capsys, "cell", "create", "c1", "--cpus", "1", "--cgroup-root", str(root))[0] == 0
    # A real process on the fake tree: it writes its own pid, then execs the command.
    proc = subprocess.run(
        [*PLASMA, "cell", "run", "--cgroup-root", str(root), "c1", "--", "sh", "-c", "echo $$"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (root / "c1/cgroup.procs").read_text().split() == [proc.stdout.strip()]
    status, _, err = cli(capsys, "cell", "run", "c1", "--cgroup-root", str(root), "--", "true")
    assert status == 1 and "give options before the cell name" in err


def test_evict_foreign_lists_pinned_overlapping_processes(
    root: Path, capsys: pytest.CaptureFixture[str], sleeper: subprocess.Popen[bytes]
) -> None:
    base = ["--cgroup-root", str(root)]
    cell = json.loads(cli(capsys, "cell", "create", "c1", "--cpus", "1", "--json", *base)[1])
    os.sched_setaffinity(sleeper.pid, {int(cell["cpus"])})
    _, out, _ = cli(capsys, "cell", "evict-foreign", "c1", "--json", *base)
    rows = {r["pid"]: r for r in json.loads(out)}
    assert rows[sleeper.pid] == {"pid": sleeper.pid, "cpus": cell["cpus"], "result": "listed"}
    assert os.getpid() not in rows
    _, out, _ = cli(capsys, "cell", "evict-foreign", "c1", "--signal", "STOP", "--dry-run", *base)
    assert "dry run:" in out and _state(sleeper.pid) != "T"


def test_evict_foreign_signal_stops_them(
    root: Path,
    capsys: pytest.CaptureFixture[str],
    sleeper: subprocess.Popen[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Only the sleeper is visible: the test must never stop a real process of this host.
    real = plasma.linux.processes.process_affinities
    monkeypatch.setattr(
        plasma.linux.processes,
        "process_affinities",
        lambda: {p: c for p, c in real().items() if p in (sleeper.pid, os.getpid())},
    )
    base = ["--cgroup-root", str(root)]
    cell = json.loads(cli(capsys, "cell", "create", "c1", "--cpus", "1", "--json", *base)[1])
    os.sched_setaffinity(sleeper.pid, {int(cell["cpus"])})
    status, out, _ = cli(capsys, "cell", "evict-foreign", "c1", "--signal", "STOP", *base)
    assert status == 0 and f"{sleeper.pid}\tcpus {cell['cpus']}\tsent SIGSTOP" in out
    os.waitid(os.P_PID, sleeper.pid, os.WSTOPPED)  # returns once it is stopped
    assert _state(sleeper.pid) == "T"
    os.kill(sleeper.pid, signal.SIGCONT)
    status, _, err = cli(capsys, "cell", "evict-foreign", "c1", "--signal", "NOPE", *base)
    assert status == 1 and "unknown signal 'NOPE'" in err


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


# ---------------------------------------------------------------------- run --cell


@pytest.mark.parametrize(("script", "status"), [("exit 0", 0), ("exit 3", 3), ("kill -9 $$", 137)])
def test_run_in_a_cell_removes_it_however_the_command_ends(
    root: Path, kernel: FakeKernel, capsys: pytest.CaptureFixture[str], script: str, status: int
) -> None:
    argv = ["run", "--cpus", "1", "--cell", "--cgroup-root", str(root), "--", "sh", "-c", script]
    assert cli(capsys, *argv)[0] == status
    cell = f"run-{os.getpid()}"
    assert (f"plasma-coord/{cell}/cpuset.cpus", str(CPUS[0])) in kernel.writes
    assert not (root / cell).exists()
    [launcher] = kernel.removed[cell]  # the launcher joined, then exec'd the command
    assert launcher != os.getpid()


# ---------------------------------------------------------------------- DAG tasks in cells


async def run_dag(
    tmp_path: Path, kernel: FakeKernel, pipeline: str, **options: Any
) -> dict[str, dict[str, Any]]:
    opts = RunOptions(
        workdir=tmp_path,
        memory="16MiB",
        log=lambda line: None,
        handle_signals=False,
        kill_grace=1.0,
        perf=False,
        cgroups=CgroupTree(kernel.top / "plasma-coord", files=kernel, mounts=tmp_path / "none"),
        **options,
    )
    record = await run_pipeline(decode_pipeline(textwrap.dedent(pipeline), "yaml"), opts, "r1")
    return {t["id"]: t for t in record["tasks"]}


@pytest.mark.coordinator
async def test_dag_tasks_run_in_their_own_cells_removed_however_they_end(
    tmp_path: Path, kernel: FakeKernel
) -> None:
    tasks = await run_dag(
        tmp_path,
        kernel,
        """
        tasks:
          - {name: ok, cmd: [sh, -c, "echo $$ > ok.pid"], cell: true}
          - {name: plain, cmd: ["true"]}
          - {name: fails, cmd: [sh, -c, "exit 4"], cell: true, after: [ok, plain]}
        """,
    )
    assert tasks["ok"]["status"] == "succeeded" and tasks["fails"]["status"] == "failed"
    assert tasks["plain"]["cell"] is None
    assert set(kernel.removed) == {tasks["ok"]["cell"], tasks["fails"]["cell"]}
    assert kernel.removed[tasks["ok"]["cell"]] == [int((tmp_path / "ok.pid").read_text())]
    cpus = format_cpulist(tasks["ok"]["cpus"])
    assert (f"plasma-coord/{tasks['ok']['cell']}/cpuset.cpus", cpus) in kernel.writes
    assert [p.name for p in (kernel.top / "plasma-coord").iterdir() if p.is_dir()] == []


@pytest.mark.coordinator
async def test_a_killed_dag_task_leaves_no_cell(tmp_path: Path, kernel: FakeKernel) -> None:
    tasks = await run_dag(
        tmp_path, kernel, "tasks:\n  - {name: slow, cmd: [sleep, '60'], timeout: 0.5}\n", cells=True
    )
    slow = tasks["slow"]
    assert slow["status"] == "failed" and "timed out" in slow["error"]
    assert len(kernel.removed[slow["cell"]]) == 1
    assert not (kernel.top / "plasma-coord" / slow["cell"]).exists()


@pytest.mark.coordinator
async def test_a_cell_the_kernel_refuses_fails_the_task(tmp_path: Path, kernel: FakeKernel) -> None:
    kernel.refuse["cpuset.cpus"] = 13  # EACCES
    tasks = await run_dag(
        tmp_path, kernel, "tasks:\n  - {name: a, cmd: [touch, ran], cell: true}\n"
    )
    assert tasks["a"]["status"] == "failed" and "Permission denied" in tasks["a"]["error"]
    assert tasks["a"]["cell"] is None and not (tmp_path / "ran").exists()
