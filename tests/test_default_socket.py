"""Finding the coordinator without a path: ``plasma-coord --version``, ``$PLASMA_COORD_SOCKET``
for ``serve``, ``stats`` and both clients, and errors that say where they looked."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

import plasma
import plasma.aio
import plasma.default_socket
from plasma.cli import main
from tests.conftest import RunningCoordinator, check_coordinator
from tests.helpers import REPO

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures


def plasma_coord(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plasma", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


def environment(**changes: str | None) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in changes.items():
        env.pop(name, None)
        if value is not None:
            env[name] = value
    return env


@pytest.fixture
def from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningCoordinator]:
    """A coordinator started by ``serve`` without ``--socket``: at ``$PLASMA_COORD_SOCKET``,
    which stays set for the test."""
    socket_path = str(tmp_path / "from-env.sock")
    monkeypatch.setenv("PLASMA_COORD_SOCKET", socket_path)
    log_path = tmp_path / "from-env.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plasma", "serve", "--memory", "16MiB"],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
        )
    coord = RunningCoordinator(socket_path, proc, log_path)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == f"ready {socket_path}\n", coord.log()
        yield coord
    finally:
        problem = check_coordinator(coord)  # stops it: SIGTERM, then SIGKILL
    assert problem is None, problem


def test_version_prints_the_package_version() -> None:
    done = plasma_coord("--version", env=environment())
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"plasma-coord {plasma.__version__}\n"


@pytest.mark.parametrize("command", ["stats", "memory"])
def test_the_cli_finds_the_coordinator_of_the_environment(
    from_env: RunningCoordinator, command: str
) -> None:
    done = plasma_coord(command, "--json", env=environment())
    assert done.returncode == 0, done.stderr
    assert '"capacity": 16777216' in done.stdout


def test_the_blocking_client_connects_without_a_path(from_env: RunningCoordinator) -> None:
    with plasma.connect() as client:
        assert client.socket_path == from_env.socket
        oid = client.put(b"found")
        assert bytes(client.get_object(oid)) == b"found"


def test_the_trio_client_connects_without_a_path(from_env: RunningCoordinator) -> None:
    async def main() -> bytes:
        async with plasma.aio.connect() as client:
            oid = await client.put(b"found too")
            return bytes(await client.get_object(oid))

    assert trio.run(main) == b"found too"


def test_an_explicit_path_wins_over_the_environment(
    tmp_path: Path, from_env: RunningCoordinator
) -> None:
    missing = str(tmp_path / "missing.sock")
    with pytest.raises(plasma.Disconnected, match=f"at {missing}: "):
        plasma.connect(missing)


def test_nothing_at_the_environments_path_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "nothing.sock")
    done = plasma_coord("stats", env=environment(PLASMA_COORD_SOCKET=missing))
    assert done.returncode == 1
    assert f"at {missing} (from $PLASMA_COORD_SOCKET; the default" in done.stderr
    monkeypatch.setenv("PLASMA_COORD_SOCKET", missing)
    with pytest.raises(plasma.Disconnected, match=r"from \$PLASMA_COORD_SOCKET"):
        plasma.connect()

    async def connect_without_path() -> None:
        async with plasma.aio.connect():
            pass

    with pytest.raises(plasma.Disconnected, match=r"nothing\.sock \(from \$PLASMA_COORD_SOCKET"):
        trio.run(connect_without_path)


def test_nothing_at_the_default_path_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """(The default path is moved into the test's directory: another coordinator may listen
    at the real one.)"""
    default = str(tmp_path / "default.sock")
    monkeypatch.setattr(plasma.default_socket, "DEFAULT_SOCKET", default)
    monkeypatch.delenv("PLASMA_COORD_SOCKET", raising=False)
    assert main(["stats"]) == 1
    err = capsys.readouterr().err
    assert f"at {default} (the default path; $PLASMA_COORD_SOCKET is not set)" in err
    with pytest.raises(plasma.Disconnected, match="the default path"):
        plasma.connect()


def test_the_real_default_path_is_the_documented_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLASMA_COORD_SOCKET", raising=False)
    assert plasma.default_socket.resolve() == "/tmp/plasma-coord.sock"
    monkeypatch.setenv("PLASMA_COORD_SOCKET", "")  # empty: not set
    assert plasma.default_socket.resolve() == "/tmp/plasma-coord.sock"
    monkeypatch.setenv("PLASMA_COORD_SOCKET", "/run/plasma/sock")
    assert plasma.default_socket.resolve() == "/run/plasma/sock"
    assert plasma.default_socket.resolve("/given") == "/given"


@pytest.mark.parametrize(
    "command",
    [("dask-worker", "tcp://127.0.0.1:1"), ("dag", "run", "examples/pipeline.yaml", "--quiet")],
)
def test_commands_that_would_start_a_coordinator_use_the_environments(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    """With ``$PLASMA_COORD_SOCKET`` set they connect there instead of starting their own."""
    missing = str(tmp_path / "nothing.sock")
    done = plasma_coord(*command, env=environment(PLASMA_COORD_SOCKET=missing))
    assert done.returncode == 1
    assert f"cannot connect to plasma-coord at {missing}: " in done.stderr


def test_commands_that_start_their_own_use_one_at_the_default_path(
    coordinator_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """dag run and dask-worker: $PLASMA_COORD_SOCKET when set, else a coordinator listening
    at the default path, else none (they start their own)."""
    from plasma import default_socket

    coord = coordinator_factory("--memory", "16MiB")
    monkeypatch.delenv("PLASMA_COORD_SOCKET", raising=False)
    monkeypatch.setattr(default_socket, "DEFAULT_SOCKET", coord.socket)
    assert default_socket.found() == coord.socket
    monkeypatch.setattr(default_socket, "DEFAULT_SOCKET", str(tmp_path / "nobody.sock"))
    assert default_socket.found() is None
    monkeypatch.setenv("PLASMA_COORD_SOCKET", str(tmp_path / "named.sock"))
    assert default_socket.found() == str(tmp_path / "named.sock")  # (named: used as it is)
