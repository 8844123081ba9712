"""examples/torch_loader.py, run small: both loaders hand the trainer the same bytes."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.coordinator  # the example starts a coordinator of its own


def test_the_plasma_loader_hands_over_what_the_dataloader_does() -> None:
    argv = ["--batches", "6", "--batch-size", "4", "--image", "16", "--workers", "2"]
    done = subprocess.run(
        [sys.executable, "examples/torch_loader.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    sums = dict(re.findall(r"^(\w+): .* checksum ([\d.]+)\)$", done.stdout, re.MULTILINE))
    assert set(sums) == {"DataLoader", "PlasmaLoader"} and len(set(sums.values())) == 1
    assert "PlasmaLoader / DataLoader throughput:" in done.stdout
