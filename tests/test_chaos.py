"""The fault-injection harness end to end: ``python -m bench.chaos all`` (and a soak of a
spilling store on two nodes, objects migrated and replicated meanwhile) breaks no invariant.

Slow (about a minute and a half); deselect with ``-m "not chaos"``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

SECONDS = 40
SPILL_SECONDS = 20
pytestmark = [pytest.mark.chaos, pytest.mark.coordinator]


@pytest.mark.timeout(SECONDS + 150)
def test_chaos_all_holds_every_invariant(tmp_path: Path) -> None:
    chaos(tmp_path, "all", "--seconds", str(SECONDS))


@pytest.mark.timeout(SPILL_SECONDS + 150)
def test_a_soak_of_a_spilling_store_with_moves_loses_and_corrupts_nothing(
    tmp_path: Path,
) -> None:
    args = ("--spill", "--moves", "--memory", "64MiB", "--seconds", str(SPILL_SECONDS))
    chaos(tmp_path, "soak", *args)


def chaos(tmp_path: Path, *args: str) -> None:
    report = tmp_path / "chaos.json"
    argv = [sys.executable, "-m", "bench.chaos", *args]
    seconds = float(args[args.index("--seconds") + 1])
    with subprocess.Popen(
        [*argv, "--json", str(report)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that a timeout stops its coordinators and workers too
    ) as run:
        try:
            output, _ = run.communicate(timeout=seconds + 120)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            output, _ = run.communicate()
            pytest.fail(f"bench.chaos {args[0]} ran past its time; its output:\n{output}")
    assert run.returncode == 0, output
    assert json.loads(report.read_text())["ok"], output
