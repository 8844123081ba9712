"""Coordinators for tests, forked from a process that imported the coordinator once.

Starting ``python -m plasma serve`` costs its imports (trio, numpy, the store: about 0.7 s
of its 0.8 s start on this project's 2-core CI machine), and the suite starts some 250
coordinators. A zygote (:func:`main`) imports what ``serve`` imports, then forks a child
for each request and runs the command line there, as the interpreter would have. The
request carries the command line, the environment, the working directory and the child's
standard output and error as descriptors; the zygote answers with the child's pid and, when
the child ends, writes its wait status on the request's status pipe.

:class:`Zygotes` keeps one zygote per environment that decides what an import does
(``$PLASMA_COORD_NATIVE``, ``$PYTHON…``): a request whose environment differs there gets a
zygote of its own, since the modules of the shared one were imported under other values.
:class:`ForkedProcess` is the part of :class:`subprocess.Popen` the tests use.
"""

from __future__ import annotations

import array
import contextlib
import os
import pickle
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import traceback
from collections.abc import Mapping, Sequence
from typing import IO

# the environment variables read when the coordinator's modules are imported
IMPORT_TIME_ENV = ("PLASMA_COORD_NATIVE",)
_REQUEST_FDS = 3  # stdout, stderr, the status pipe's write end
_STATUS = struct.Struct("i")


def import_key(env: Mapping[str, str]) -> tuple[tuple[str, str | None], ...]:
    """What a zygote's imports depend on, in ``env``."""
    names = sorted({*IMPORT_TIME_ENV, *(k for k in env if k.startswith("PYTHON"))})
    return tuple((name, env.get(name)) for name in names)


class ForkedProcess:
    """A coordinator a zygote forked: not this process's child, so its status comes from
    the zygote, on a pipe (what :class:`subprocess.Popen` offers the tests, no more)."""

    def __init__(self, pid: int, stdout: IO[str], status: int) -> None:
        self.pid = pid
        self.stdout: IO[str] | None = stdout
        self.returncode: int | None = None
        self._status = status

    def poll(self) -> int | None:
        return self._wait(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._wait(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(f"coordinator {self.pid}", timeout or 0)
        return code

    def _wait(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self._status], [], [], timeout)
            if not ready:
                return None
            data = os.read(self._status, _STATUS.size)
            os.close(self._status)
            # (nothing written: the zygote died before its child; report it as killed)
            status = _STATUS.unpack(data)[0] if data else signal.SIGKILL
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # (after its end, the pid may be another process's)
            # it may have ended since, and the zygote reaped it (its status is on the way):
            # unlike a child of ours, it is not kept as a zombie until we wait
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygotes:
    """The zygotes of a test session, started when first asked for; :meth:`close` ends them
    (the coordinators they forked live on until their tests stop them)."""

    def __init__(self, cwd: str) -> None:
        self._cwd = cwd
        self._zygotes: dict[object, tuple[subprocess.Popen[bytes], socket.socket]] = {}

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str], cwd: str, stderr: int
    ) -> ForkedProcess:
        """Run ``python -m plasma`` with ``argv`` in a fork of a zygote; stdout is a pipe."""
        sock = self._zygote(env)
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            request = pickle.dumps((list(argv), dict(env), cwd))
            fds = array.array("i", [out_w, stderr, status_w])
            sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
            reply = sock.recv(64)
        except BaseException:
            for fd in (out_r, status_r):
                os.close(fd)
            raise
        finally:
            os.close(out_w)
            os.close(status_w)
        if not reply:
            os.close(out_r)
            os.close(status_r)
            raise RuntimeError("the coordinator zygote is gone")
        return ForkedProcess(int(reply), open(out_r, encoding="utf-8"), status_r)

    def _zygote(self, env: Mapping[str, str]) -> socket.socket:
        key = import_key(env)
        if key not in self._zygotes:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            zenv = dict(env)
            zenv["OPENBLAS_NUM_THREADS"] = "1"  # numpy's BLAS: no threads in a process that forks
            proc = subprocess.Popen(
                [sys.executable, "-c", "import tests.zygote as z; z.main()", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=zenv,
                cwd=self._cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
            theirs.close()
            self._zygotes[key] = (proc, ours)
        return self._zygotes[key][1]

    def close(self) -> None:
        for proc, sock in self._zygotes.values():
            sock.close()  # the zygote ends at end of file
            proc.wait(timeout=30)
        self._zygotes.clear()


def main() -> None:
    """The zygote: import the coordinator, then fork one child per request until the
    session's end of the socket closes."""
    import plasma.cli
    import plasma.cli.serve  # noqa: F401  (what `serve` imports: the coordinator, the store)

    control = socket.socket(fileno=int(sys.argv[1]))
    children: dict[int, tuple[int, int]] = {}  # pidfd -> (pid, status pipe)
    poller = select.poll()
    poller.register(control, select.POLLIN)
    while True:
        for fd, _ in poller.poll():
            if fd != control.fileno():
                pid, status_w = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                os.write(status_w, _STATUS.pack(status))
                os.close(status_w)
                continue
            fds = array.array("i")
            request, ancdata, _, _ = control.recvmsg(1 << 20, socket.CMSG_SPACE(_REQUEST_FDS * 4))
            if not request:
                return
            for _, _, data in ancdata:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            out_w, stderr, status_w = fds
            argv, env, cwd = pickle.loads(request)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                others = [fd for pidfd, (_, w) in children.items() for fd in (pidfd, w)]
                _child(argv, env, cwd, out_w, stderr, [control.fileno(), status_w, *others])
            os.close(out_w)
            os.close(stderr)
            pidfd = os.pidfd_open(pid)
            children[pidfd] = (pid, status_w)
            poller.register(pidfd, select.POLLIN)
            control.send(str(pid).encode())


def _child(
    argv: list[str], env: dict[str, str], cwd: str, out_w: int, stderr: int, close: list[int]
) -> None:
    """Become ``python -m plasma *argv`` (never returns)."""
    code = 1
    try:
        for fd in close:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((null, 0), (out_w, 1), (stderr, 2)):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        random.seed()  # (not the zygote's state, shared by every child)
        sys.argv = ["plasma", *argv]
        import plasma.cli

        code = plasma.cli.main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
