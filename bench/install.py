"""Per-peer virtual environments under ``bench/.peers/NAME`` (git-ignored), created with pip.

A finished install leaves ``.bench-installed`` (its requirement list) in the venv; a failed one
leaves ``.bench-failed`` (the reason), so later runs report the peer as missing without
retrying until ``--reinstall``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.peers import PeerSpec

PEERS_DIR = Path(__file__).resolve().parent / ".peers"
INSTALL_TIMEOUT = 900.0


class InstallError(RuntimeError):
    """A peer could not be installed; the message says why."""


def peer_python(spec: PeerSpec, *, reinstall: bool = False, log: bool = True) -> Path:
    """The interpreter that runs ``spec``'s worker, installing its venv first if needed."""
    if not spec.requirements:
        return Path(sys.executable)
    venv = PEERS_DIR / spec.name
    python = venv / "bin" / "python"
    wanted = "\n".join(spec.requirements)
    done, failed = venv / ".bench-installed", venv / ".bench-failed"
    if reinstall:
        shutil.rmtree(venv, ignore_errors=True)
    if done.exists() and done.read_text() == wanted and python.exists():
        return python
    if failed.exists():
        raise InstallError(failed.read_text())
    if log:
        print(f"[install] {spec.name}: {' '.join(spec.requirements)} into {venv}", flush=True)
    try:
        _create(venv, spec.requirements)
    except InstallError as exc:
        failed.write_text(str(exc))
        raise
    done.write_text(wanted)
    return python


def _create(venv: Path, requirements: tuple[str, ...]) -> None:
    venv.mkdir(parents=True, exist_ok=True)
    base = Path(sys.base_prefix) / "bin" / "python3"
    steps = [
        [str(base), "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *requirements],
    ]
    for argv in steps:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired as exc:
            raise InstallError(f"{argv[2]} timed out after {INSTALL_TIMEOUT:.0f} s") from exc
        if result.returncode != 0:
            errors = [ln for ln in result.stderr.splitlines() if "ERROR" in ln or "error" in ln]
            reason = " | ".join(errors[-3:]) or result.stderr.strip()[-300:]
            raise InstallError(f"{' '.join(argv[2:4])} failed ({result.returncode}): {reason}")
