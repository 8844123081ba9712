"""The fault-injection harness end to end: ``python -m bench.chaos all`` breaks no invariant.

Slow (about 40 s); deselect with ``-m "not chaos"``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SECONDS = 40
pytestmark = pytest.mark.chaos


@pytest.mark.timeout(SECONDS + 150)
def test_chaos_all_holds_every_invariant(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    argv = [sys.executable, "-m", "bench.chaos", "all", "--seconds", str(SECONDS)]
    with subprocess.Popen(
        [*argv, "--json", str(report)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # so that a timeout stops its coordinators and workers too
    ) as run:
        try:
            output, _ = run.communicate(timeout=SECONDS + 120)
        except subprocess.TimeoutExpired:
            os.killpg(run.pid, signal.SIGKILL)
            output, _ = run.communicate()
            pytest.fail(f"bench.chaos all ran past its time; its output:\n{output}")
    assert run.returncode == 0, output
    assert json.loads(report.read_text())["ok"], output
