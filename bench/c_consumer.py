"""The hand-off scenario's consumers written in C (``bench/c/handoff_consumer.c``), beside
its Python ones: the C client of ``clients/c`` getting objects a Python producer just sealed.

:func:`build` makes the program (the library by its Makefile, then the consumer against it)
in a work dir; :class:`Consumer` runs one, connected to the store, and speaks to it through
its standard input and output with the calls the scenario makes of a
``multiprocessing.Connection`` (``send_bytes``, ``poll``, ``recv_bytes``, ``recv``), so one
producer loop drives both kinds.
"""

from __future__ import annotations

import os
import select
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "clients" / "c"
SOURCE = ROOT / "bench" / "c" / "handoff_consumer.c"


def build(workdir: Path) -> Path:
    """The consumer program, built in ``workdir`` (RuntimeError saying why it could not)."""
    out = workdir / "c-client"
    program = out / "handoff_consumer"
    library = out / "libplasma_coord.a"
    commands = [
        ["make", "-s", "-C", str(CLIENT), f"BUILD={out}", "CFLAGS=-O2"],
        ["cc", "-std=c11", "-O2", f"-I{CLIENT}", "-o", str(program), str(SOURCE), str(library)],
    ]
    for command in commands:
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except OSError as exc:
            raise RuntimeError(f"cannot build the C consumer: {exc}") from None
        if proc.returncode != 0:
            raise RuntimeError(f"cannot build the C consumer: {proc.stderr.strip()[-500:]}")
    return program


class Consumer:
    """One C consumer process connected to the store at ``socket``."""

    def __init__(self, program: Path, socket: str) -> None:
        self.proc = subprocess.Popen(
            [str(program), socket], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self._in, self._out = self.proc.stdin, self.proc.stdout.fileno()

    def send_bytes(self, data: bytes) -> None:
        """An object id to get; empty: the end (the consumer then sends its timings)."""
        if data:
            self._in.write(data)
            self._in.flush()
        else:
            self._in.close()

    def poll(self, timeout: float) -> bool:
        return bool(select.select([self._out], [], [], timeout)[0])

    def recv_bytes(self) -> bytes:
        """Its "done" (one byte)."""
        return os.read(self._out, 1)

    def recv(self) -> list[int]:
        """Its timings (ns), once its input ended; it exits then."""
        assert self.proc.stdout is not None
        text = self.proc.stdout.read()
        if self.proc.wait(timeout=120) != 0:
            raise RuntimeError(f"the C consumer exited with status {self.proc.returncode}")
        return [int(line) for line in text.split()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
