"""The ``rpc`` scenario: strict request/reply calls against a bare trio echo of the same frames.

Runs in a peer's worker: one case per call of :data:`CALLS`, timed one at a time (p50, p99).
With ``echo`` (the plasma-coord worker only: the echo server needs trio, which the repo's venv
has) the worker also starts ``python -m bench.echo_server`` and times, from a plain blocking
socket, send + receive of a frame the size of a ``Contains`` request, in blocks interleaved
with the call's, so both see the same machine. Those figures come back as ``echo:p50_us`` and
``echo:p99_us``: the harness turns them into the ``echo`` column.
"""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np

from bench.peers.base import Key, Peer, stop_process

CONTAINS, SEAL = 1, 2
CALLS = {CONTAINS: "contains", SEAL: "acknowledged seal"}
OPS = (10_000, 2000)  # timed calls per repeat (and as many echoes): (full, quick)
BLOCK = 500  # calls, then echoes, in turn
WARMUP = 200
SIZE = 64
ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0

Timer = Callable[[], int]  # one timed call; its nanoseconds


def rpc(peer: Peer, call: int, quick: bool, echo: bool) -> dict[str, float]:
    """p50 and p99 (µs) of ``call`` on ``peer``; with ``echo``, the echo's as well."""
    n = OPS[1] if quick else OPS[0]
    with contextlib.ExitStack() as stack:
        timers = {"": _call_timer(peer, call, stack)}
        if echo:
            timers["echo:"] = stack.enter_context(EchoServer(peer.workdir)).round_trip
        for timer in timers.values():
            for _ in range(WARMUP):
                timer()
        samples: dict[str, list[int]] = {prefix: [] for prefix in timers}
        while len(samples[""]) < n:
            for prefix, timer in timers.items():
                samples[prefix] += [timer() for _ in range(BLOCK)]
    metrics = {}
    for prefix, values in samples.items():
        metrics[f"{prefix}p50_us"] = float(np.percentile(values, 50)) / 1e3
        metrics[f"{prefix}p99_us"] = float(np.percentile(values, 99)) / 1e3
    return metrics


def _call_timer(peer: Peer, call: int, stack: contextlib.ExitStack) -> Timer:
    """A timer of one ``call``; what it leaves in the store goes when ``stack`` closes."""
    clock = time.perf_counter_ns
    payload = bytes(range(SIZE))
    if call == CONTAINS:
        key = peer.put_small(payload)
        peer.sync()
        stack.callback(peer.delete, [key])
        if not peer.contains(key):
            raise AssertionError("contains() of a sealed object returned False")

        def contains() -> int:
            t0 = clock()
            peer.contains(key)
            return clock() - t0

        return contains
    if call == SEAL:
        keys: list[Key] = []
        stack.callback(peer.delete, keys)

        def seal() -> int:
            key = peer.create_unsealed(payload)  # untimed
            t0 = clock()
            peer.seal_acked(key)
            elapsed = clock() - t0
            keys.append(key)
            return elapsed

        return seal
    raise ValueError(f"unknown rpc call {call}")


def contains_frame() -> bytes:
    """A frame as long as the ``Contains`` request plasma-coord's client sends (plasma is
    imported here: only the plasma-coord worker, in the repo's venv, measures the echo)."""
    from plasma import protocol

    return protocol.encode(protocol.Contains(seq=100_000, id=bytes(20)))


class EchoServer:
    """``python -m bench.echo_server`` on a socket in ``workdir``, and a blocking client of it."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "echo.sock"
        self.frame = contains_frame()
        self._buf = memoryview(bytearray(1 << 16))
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def __enter__(self) -> EchoServer:
        self.path.unlink(missing_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.echo_server", str(self.path)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        try:
            assert self._proc.stdout is not None
            ready, _, _ = select.select([self._proc.stdout], [], [], START_TIMEOUT)
            line = self._proc.stdout.readline() if ready else b""
            if line != b"ready\n":
                raise RuntimeError(f"the echo server did not start: {line!r}")
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.connect(str(self.path))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._sock is not None:
            self._sock.close()
        if self._proc is not None:
            stop_process(self._proc)
            assert self._proc.stdout is not None
            self._proc.stdout.close()

    def round_trip(self) -> int:
        """Nanoseconds to send :attr:`frame` and receive it back."""
        sock, frame, buf, clock = self._sock, self.frame, self._buf, time.perf_counter_ns
        assert sock is not None
        t0 = clock()
        sock.sendall(frame)
        got = sock.recv_into(buf)
        while got < len(frame):
            n = sock.recv_into(buf[got:])
            if not n:
                raise ConnectionError("the echo server hung up")
            got += n
        return clock() - t0
