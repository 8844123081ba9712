"""The suite's coordinator zygote (tests.zygote) reports what a process of its own would."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.zygote import ForkedProcess, Zygotes, import_key

pytestmark = pytest.mark.coordinator


@pytest.fixture
def zygotes() -> Iterator[Zygotes]:
    z = Zygotes(str(REPO))
    yield z
    z.close()


def _serve(zygotes: Zygotes, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    with open(tmp_path / "err.log", "w") as err:
        return zygotes.start(
            ["serve", "--socket", str(tmp_path / "z.sock"), "--memory", "16MiB", *args],
            env=dict(os.environ) if env is None else env,
            cwd=str(tmp_path),
            stderr=err.fileno(),
        )


def test_a_forked_coordinator_serves_and_reports_its_exit_status(zygotes, tmp_path):
    proc = _serve(zygotes, tmp_path)
    assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0)
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    proc.kill()  # after its end: nothing is signalled (its pid may be another's by now)


def test_a_killed_coordinator_and_a_bad_command_line_report_as_a_process_would(zygotes, tmp_path):
    proc = _serve(zygotes, tmp_path)
    assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    bad = _serve(zygotes, tmp_path, "--segment-size", "lots")
    code = bad.wait(timeout=30)
    socket = str(tmp_path / "own.sock")
    own = subprocess.run(
        [sys.executable, "-m", "plasma", "serve", "--socket", socket, "--segment-size", "lots"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (code, (tmp_path / "err.log").read_text()) == (own.returncode, own.stderr) != (0, "")


def test_an_environment_read_at_import_gets_a_zygote_of_its_own(zygotes, tmp_path):
    """$PLASMA_COORD_NATIVE decides at import whether the C part is used: coordinators asked
    for with either value are forked from zygotes that imported with that value."""
    for native in ("0", "1", "0"):
        proc = _serve(zygotes, tmp_path, env=dict(os.environ, PLASMA_COORD_NATIVE=native))
        assert proc.stdout is not None and proc.stdout.readline().startswith("ready")
        proc.terminate()
        assert proc.wait(timeout=30) == 0
    started = {key: z for key, (z, _) in zygotes._zygotes.items()}
    envs = [dict(os.environ, PLASMA_COORD_NATIVE=v) for v in ("0", "1")]
    assert set(started) == {import_key(env) for env in envs}
    for key, zygote in started.items():
        environ = Path(f"/proc/{zygote.pid}/environ").read_bytes().split(b"\0")
        assert f"PLASMA_COORD_NATIVE={dict(key)['PLASMA_COORD_NATIVE']}".encode() in environ


def test_a_signal_to_a_coordinator_the_zygote_reaped_before_its_status_came_is_no_error():
    """It ended and was reaped between poll() and kill(): a process of ours would be a
    zombie until waited for, this one is gone (the start of a coordinator that fails at
    once kills it so; that raised ProcessLookupError)."""
    ended = subprocess.Popen(["true"])
    ended.wait()  # reaped: its pid names no process
    status_r, status_w = os.pipe()
    with open(os.devnull) as stdout:
        proc = ForkedProcess(ended.pid, stdout, status_r)
        proc.kill()
        assert proc.poll() is None  # (its status has not come yet)
        os.write(status_w, struct.pack("i", signal.SIGKILL))
        os.close(status_w)
        assert proc.wait(timeout=30) == -signal.SIGKILL
