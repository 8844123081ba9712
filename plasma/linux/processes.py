"""The processes of the machine from ``/proc``: their CPU affinity, and signalling them."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from plasma.linux._syscall import libc_call
from plasma.topology import parse_cpulist

__all__ = ["die_with_parent", "process_affinities", "send_signal"]

PR_SET_PDEATHSIG = 1


def process_affinities(proc: str | Path = "/proc") -> dict[int, frozenset[int]]:
    """pid → ``Cpus_allowed_list`` of every user-space process under ``proc``.

    Kernel threads (and zombies: both have an empty ``cmdline``) and processes that exit
    while being read are left out.
    """
    out = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            if not Path(entry.path, "cmdline").read_bytes():
                continue
            status = Path(entry.path, "status").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key == "Cpus_allowed_list":
                out[int(entry.name)] = parse_cpulist(value)
                break
    return out


def die_with_parent(parent: int, signum: int = signal.SIGTERM) -> None:
    """In a child (a ``preexec_fn``): get ``signum`` when the thread that started it dies,
    even by SIGKILL (prctl PR_SET_PDEATHSIG); at once if ``parent`` is already gone."""
    libc_call("prctl", PR_SET_PDEATHSIG, signum, 0, 0, 0, call="prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)


def send_signal(pid: int, signum: int) -> str:
    """Send ``signum`` to ``pid``; "" on success, else why not (it exited, not permitted)."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return "no such process (it exited)"
    except PermissionError:
        return "not permitted"
    return ""
