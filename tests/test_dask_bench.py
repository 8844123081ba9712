"""A bounded run of ``python -m bench.dask --quick`` (an array and a dataframe workload)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytest.importorskip("distributed")


@pytest.mark.coordinator
def test_the_quick_benchmark_runs_both_sides_and_sends_ids_not_bytes(tmp_path: Path) -> None:
    out = tmp_path / "dask.json"
    argv = [sys.executable, "-m", "bench.dask", "--quick", "--workloads", "pairs,groupby"]
    done = subprocess.run(
        [*argv, "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr  # 1 if the results differed
    assert "| pairs |" in done.stdout and "| groupby |" in done.stdout
    report = json.loads(out.read_text())["report"]
    plain, shared = report["pairs"]["plain"], report["pairs"]["plasma.dask"]
    assert plain["sent"] > 32 << 20  # strips of 16 MiB, over TCP
    assert shared["sent"] < plain["sent"] / 10  # ids (and the scheduler's messages)
    assert all(report[w][side]["wall"] > 0 for w in report for side in ("plain", "plasma.dask"))
    # timings are left to the benchmark itself: this machine is shared and noisy
