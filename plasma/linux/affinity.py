"""CPU affinity of a process or thread (sched_getaffinity / sched_setaffinity)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable

from plasma.errors import BadRequest, Unsupported
from plasma.linux._syscall import os_error


def get_affinity(pid: int = 0) -> set[int]:
    """The CPUs ``pid`` (0: the calling thread) may run on."""
    if not hasattr(os, "sched_getaffinity"):
        raise Unsupported("sched_getaffinity: not available on this platform")
    try:
        return set(os.sched_getaffinity(pid))
    except OSError as exc:
        raise os_error(exc.errno or 0, f"sched_getaffinity(pid={pid})") from None


def set_affinity(cpus: Iterable[int], pid: int = 0) -> None:
    """Restrict ``pid`` (0: the calling thread) to ``cpus``."""
    if not hasattr(os, "sched_setaffinity"):
        raise Unsupported("sched_setaffinity: not available on this platform")
    wanted = sorted(set(cpus))
    if not wanted:
        raise BadRequest("set_affinity needs at least one CPU")
    if any(not isinstance(cpu, int) or cpu < 0 for cpu in wanted):
        raise BadRequest(f"CPU numbers must be non-negative integers, got {wanted}")
    try:
        os.sched_setaffinity(pid, wanted)
    except OSError as exc:
        err = os_error(exc.errno or 0, f"sched_setaffinity(pid={pid}, cpus={wanted})")
        if exc.errno == errno.EINVAL:  # none of the CPUs is online and allowed
            err = OSError(exc.errno, f"{err.strerror}; allowed CPUs: {sorted(get_affinity())}")
        raise err from None
