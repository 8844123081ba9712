"""docs/deploy.md's systemd unit: ``systemd-analyze verify`` accepts it (skipped where there
is no systemd-analyze), its ``ExecStart`` parses with the real ``serve`` options, and its
``MemoryMax`` holds ``--memory`` plus the coordinator's overhead."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from plasma.cli import build_parser
from plasma.cli.serve import SERVE_OVERHEAD
from plasma.coordinator import node_budgets
from tests.helpers import REPO

DOC = REPO / "docs/deploy.md"
BINARY = "/usr/local/bin/plasma-coord"


def unit_text() -> str:
    blocks = re.findall(r"```ini\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1, "docs/deploy.md should hold one ini block: the unit"
    return blocks[0]


def unit_settings(text: str) -> dict[str, str]:
    settings = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings[key] = value
    return settings


def test_the_unit_runs_serve_with_valid_options_and_a_memory_max_that_fits() -> None:
    settings = unit_settings(unit_text())
    words = shlex.split(settings["ExecStart"])
    assert words[0] == BINARY and words[1] == "serve"
    args = build_parser().parse_args(words[1:])
    assert args.restore and args.spill_dir and args.socket.startswith("/run/plasma-coord/")
    assert settings["RuntimeDirectory"] == "plasma-coord"
    assert settings["Restart"] == "on-failure"
    budget = sum(node_budgets(args.memory, [0]).values())
    memory_max = int(settings["MemoryMax"].removesuffix("M")) << 20
    assert memory_max >= budget + SERVE_OVERHEAD


def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # the unit names the installed command; verify checks that ExecStart exists
    launcher = tmp_path / "plasma-coord"
    launcher.write_text(f'#!/bin/sh\nexec {sys.executable} -m plasma "$@"\n')
    launcher.chmod(0o755)
    unit = tmp_path / "plasma-coord.service"
    unit.write_text(unit_text().replace(BINARY, str(launcher)))
    proc = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    about_unit = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit.name in ln]
    assert proc.returncode == 0 and not about_unit, proc.stdout + proc.stderr
