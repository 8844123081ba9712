"""A bounded run of ``python -m bench.dask --quick`` (one workload, one repeat)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

pytest.importorskip("distributed")


@pytest.mark.coordinator
def test_the_quick_benchmark_runs_and_sends_ids_not_bytes(tmp_path: Path) -> None:
    out = tmp_path / "dask.json"
    argv = [sys.executable, "-m", "bench.dask", "--quick", "--workloads", "pairs"]
    done = subprocess.run(
        [*argv, "--json", str(out)], capture_output=True, text=True, cwd=REPO, timeout=240
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pairs: matrix 4096 x 4096" in done.stdout
    pairs = json.loads(out.read_text())["pairs"]
    plain, shared = pairs["plain"], pairs["plasma.dask"]
    assert plain["moved"] > 100 << 20 and plain["sent"] >= plain["moved"]
    assert shared["moved"] > 100 << 20 and shared["sent"] < shared["transfers"] * 4096
    # timings are left to the benchmark itself: this machine is shared and noisy
