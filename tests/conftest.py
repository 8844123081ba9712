"""Shared fixtures: a real coordinator process on a Unix socket in a temporary directory."""

from __future__ import annotations

import compileall
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from plasma._client_core import fast_path
from plasma._client_core.fast_path import ReadPath
from tests.helpers import READ_ONLY_UID, READ_PATHS, READ_WRITE_UID, REPO
from tests.zygote import ForkedProcess, Zygotes

# CI runs on a loaded 2-core machine: no per-example deadline, and a slow example is no error.
# Based on Hypothesis's own defaults, not on whatever profile it chose itself: it loads its
# derandomized "ci" profile when $CI is set, and the tests must run the same with and without.
settings.register_profile(
    "plasma",
    settings.get_profile("default"),
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "plasma"))

# pytest imports this file as "conftest"; test modules import it as "tests.conftest": one
# module for both, so every coordinator a test starts is logged and checked the same way
sys.modules.setdefault("tests.conftest", sys.modules[__name__])
sys.modules.setdefault("conftest", sys.modules[__name__])


@dataclass
class RunningCoordinator:
    socket: str
    proc: subprocess.Popen[str] | ForkedProcess
    log_path: Path  # its stderr: a file, so that no pipe fills up and blocks it
    allowed: tuple[str, ...] = ()  # errors the test provokes (see check_coordinator)
    killed: bool = False  # stopped with SIGKILL by the test: its status is -SIGKILL

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.killed = sig == signal.SIGKILL
        return self.proc.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_coordinator(
    socket_path: str, *args: str, wrapper: Sequence[str] = (), allowed: Sequence[str] = ()
) -> RunningCoordinator:
    """Start ``plasma-coord serve`` (under ``wrapper``, a command such as ``prlimit``) and
    wait for its ``ready`` line; its stderr goes to a file of the session's log directory.
    Without a wrapper it is forked from a zygote (see tests.zygote; ``$PLASMA_TEST_ZYGOTE=0``
    starts every one as its own process). Fails a test that is not marked ``coordinator``
    (see COORDINATOR_FIXTURES)."""
    unmarked = [item.nodeid for item in CURRENT if not item.get_closest_marker("coordinator")]
    if unmarked:
        pytest.fail(
            f"{unmarked[0]} starts a coordinator but is not marked: give its module"
            " pytestmark = pytest.mark.coordinator",
            pytrace=False,
        )
    log_dir = LOG_DIR or Path(tempfile.gettempdir())
    log_path = log_dir / f"{next(LOG_NUMBERS)}-{os.path.basename(socket_path)}.log"
    argv = ["serve", "--socket", socket_path, *args]
    proc: subprocess.Popen[str] | ForkedProcess
    with open(log_path, "w") as log:
        if ZYGOTES is not None and not wrapper:
            proc = ZYGOTES.start(argv, env=os.environ, cwd=str(REPO), stderr=log.fileno())
        else:
            proc = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "plasma", *argv],
                stdout=subprocess.PIPE,  # the ready line only
                stderr=log,
                text=True,
                cwd=REPO,
            )
    coord = RunningCoordinator(socket_path, proc, log_path, tuple(allowed))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        raise RuntimeError(f"coordinator did not start: {line!r} {coord.log()}")
    STARTED.append(coord)
    return coord


STARTED: list[RunningCoordinator] = []  # by start_coordinator, for _coordinators_end_cleanly
LOG_DIR: Path | None = None  # where coordinators log (set by _coordinator_log_dir)
LOG_NUMBERS = itertools.count(1)
# what forks coordinators (set by _coordinator_zygotes), unless $PLASMA_TEST_ZYGOTE is 0
ZYGOTES: Zygotes | None = None


@pytest.fixture(scope="session", autouse=True)
def _coordinator_zygotes() -> Iterator[None]:
    global ZYGOTES
    if os.environ.get("PLASMA_TEST_ZYGOTE", "1") == "0":
        yield
        return
    ZYGOTES = Zygotes(str(REPO))
    yield
    ZYGOTES.close()
    ZYGOTES = None


@pytest.fixture(scope="session", autouse=True)
def _coordinator_log_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    global LOG_DIR
    LOG_DIR = tmp_path_factory.mktemp("coordinator-logs")


LOG_RECORD = re.compile(r"^(?=(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):)", re.MULTILINE)


def check_coordinator(coord: RunningCoordinator) -> str | None:
    """Stop ``coord`` if the test did not; what is wrong with how it ended, if anything.

    It must exit 0 (or -SIGKILL where the test killed it) with no log record holding a
    traceback or an "internal error", except records that hold one of ``coord.allowed``.
    """
    try:
        status = coord.stop()
    except subprocess.TimeoutExpired:
        coord.stop(signal.SIGKILL)
        return f"coordinator {coord.socket} did not stop on SIGTERM:\n{coord.log()[-6000:]}"
    finally:
        if coord.proc.stdout is not None:
            coord.proc.stdout.close()
    expected = -signal.SIGKILL if coord.killed else 0
    log = coord.log()
    bad = [
        record
        for record in LOG_RECORD.split(log)
        if ("Traceback" in record or "internal error" in record)
        and not any(a in record for a in coord.allowed)
    ]
    if status == expected and not bad:
        return None
    return (
        f"coordinator {coord.socket} exited {status} (expected {expected}),"
        f" {len(bad)} error record(s) in its log:\n{log[-6000:]}"
    )


@pytest.fixture(autouse=True)
def _coordinators_end_cleanly() -> Iterator[None]:
    """Every coordinator a test (or a function-scoped fixture) starts must end cleanly: see
    :func:`check_coordinator` (a longer-lived fixture checks its own)."""
    first = len(STARTED)
    yield
    problems = [problem for coord in STARTED[first:] if (problem := check_coordinator(coord))]
    del STARTED[first:]
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def coordinator_factory(tmp_path: Path) -> Iterator[Callable[..., RunningCoordinator]]:
    """Starts coordinators (checked at teardown by _coordinators_end_cleanly); ``allowed``
    lists errors a test provokes on purpose, as text of their log records."""

    def factory(
        *args: str,
        name: str = "plasma.sock",
        wrapper: Sequence[str] = (),
        allowed: Sequence[str] = (),
    ) -> RunningCoordinator:
        return start_coordinator(str(tmp_path / name), *args, wrapper=wrapper, allowed=allowed)

    yield factory


@pytest.fixture
def coordinator(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> Iterator[RunningCoordinator]:
    """A coordinator with 64 MiB in 4 MiB segments; checks it stops cleanly with status 0."""
    coord = coordinator_factory("--memory", "64MiB", "--segment-size", "4MiB")
    yield coord
    assert coord.stop() == 0
    assert not os.path.exists(coord.socket)


# ---------------------------------------------------------------- fixtures several modules use


@pytest.fixture(params=[p.values[0] for p in READ_PATHS], ids=[p.id for p in READ_PATHS])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ReadPath:
    """Clients started in this test read the directory through this read path (the C one,
    then the Python one); processes they start too (``$PLASMA_COORD_NATIVE``)."""
    path: ReadPath = request.param
    if path is None:
        pytest.skip("the native read path is not built")
    monkeypatch.setattr(fast_path, "READ_PATH", path)
    monkeypatch.setenv("PLASMA_COORD_NATIVE", "1" if path is fast_path.NATIVE else "0")
    return path


@pytest.fixture(params=["blocking", "trio"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which client a test uses through tests.helpers.open_client: blocking or trio."""
    return request.param


@pytest.fixture
def public_dir() -> Iterator[str]:
    """A directory other uids may search (but not list): pytest's tmp_path is 0700."""
    path = tempfile.mkdtemp(prefix="plasma-access-")
    os.chmod(path, 0o711)
    yield path
    shutil.rmtree(path)


@pytest.fixture
def shared(public_dir: str) -> Iterator[RunningCoordinator]:
    """A coordinator that lets READ_ONLY_UID read and READ_WRITE_UID write (its socket in
    ``public_dir``, so other uids reach it; checked like any other at teardown)."""
    coord = start_coordinator(
        os.path.join(public_dir, "plasma.sock"),
        *("--memory", "32MiB", "--segment-size", "4MiB"),
        *("--allow-uid", str(READ_ONLY_UID), "--allow-uid", f"{READ_WRITE_UID}:rw"),
    )
    yield coord
    assert coord.stop() == 0


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that sleeps a minute (killed at teardown)."""
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true: for effects of another process we cannot be told about."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


NUMA_VM = REPO.parent / "shared" / "numa-vm"
VM_SETUP_FAILED = 125  # numa-vm's exit status when the VM itself cannot run
# A VM test may first install qemu and a kernel (numa-vm does, once per machine), then boot
# under software emulation: it gets more time than pytest's default for a test.
VM_TEST_TIMEOUT = 900


# Tests that use these fixtures start a real coordinator: they are marked ``coordinator``
# (modules that start one otherwise say so with ``pytestmark = pytest.mark.coordinator``),
# so that ``pytest -m "not coordinator"`` runs the fast unit tests alone.
COORDINATOR_FIXTURES = frozenset({"coordinator", "coordinator_factory"})
COLLECTED: list[pytest.Item] = []  # every item collected, before -m deselects any (test_markers)
CURRENT: list[pytest.Item] = []  # the test being set up or run (start_coordinator checks it)


HIDDEN = re.compile(r"/\.")


def pytest_configure(config: pytest.Config) -> None:
    """Byte-compile the project's Python once. The processes the tests start (coordinators,
    clients, CLI runs, guests of the NUMA VM) import it; where $PYTHONDONTWRITEBYTECODE is set,
    as on the CI machine, each compiled it again from source: about 1 s a process here, 15-30 s
    in the VM's software emulation."""
    for package in ("plasma", "tests", "bench", "examples"):
        compileall.compile_dir(REPO / package, quiet=1, rx=HIDDEN)  # (not bench/.peers)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long",
        action="store_true",
        help="also run the tests marked long (minutes each; CI runs bounded versions)",
    )


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    long = pytest.mark.skip(reason="long: run with --long (see the README's Development)")
    for item in items:
        if item.get_closest_marker("numa_vm"):
            item.add_marker(pytest.mark.timeout(VM_TEST_TIMEOUT))
        if item.get_closest_marker("long") and not config.getoption("--long"):
            item.add_marker(long)
        if COORDINATOR_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.coordinator)
    COLLECTED[:] = items


def pytest_runtest_setup(item: pytest.Item) -> None:
    CURRENT[:] = [item]


def run_in_numa_vm(
    argv: list[str], *, nodes: int, cwd: Path, cpus: int | None = None, timeout: int = 600
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` inside a ``numa-vm`` guest with ``nodes`` NUMA nodes (this repo importable).

    Skips the test, with the reason, where the VM cannot start; fails it, with the output so
    far, when ``argv`` fails or runs past ``timeout`` seconds.
    """
    if not os.access(NUMA_VM, os.X_OK):
        pytest.skip(f"numa-vm not found at {NUMA_VM}")
    cmd = [str(NUMA_VM), "--nodes", str(nodes), "--timeout", str(timeout)]
    if cpus is not None:
        cmd += ["--cpus", str(cpus)]
    with subprocess.Popen(
        [*cmd, "--", *argv],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # so that a timeout stops qemu too, not just the wrapper
    ) as vm:
        try:
            stdout, stderr = vm.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            os.killpg(vm.pid, signal.SIGKILL)
            stdout, stderr = vm.communicate()
            raise AssertionError(
                f"the VM command timed out; its output:\n{stdout}\n{stderr}"
            ) from None
    proc = subprocess.CompletedProcess(vm.args, vm.returncode, stdout, stderr)
    if proc.returncode == VM_SETUP_FAILED:
        pytest.skip(f"numa-vm could not start the VM: {proc.stderr.strip()[-500:]}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def run_guest_script(source: str, *, nodes: int, cwd: Path) -> Any:
    """Run the Python ``source`` in a ``numa-vm`` guest; the JSON of its ``RESULT `` line."""
    script = cwd / "guest.py"
    script.write_text(source)
    return vm_result(run_in_numa_vm([sys.executable, str(script)], nodes=nodes, cwd=cwd))


def vm_result(proc: subprocess.CompletedProcess[str]) -> Any:
    """The JSON a guest script printed on its last ``RESULT `` line."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1].removeprefix("RESULT "))
