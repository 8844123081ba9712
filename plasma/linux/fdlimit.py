"""The process's file-descriptor budget: RLIMIT_NOFILE and a reserve for running out.

A coordinator holds one descriptor per client connection and per segment; when the soft
limit is reached ``accept()`` fails with EMFILE and the pending connection stays queued, so
a naive accept loop either dies or spins. :func:`raise_nofile_limit` lifts the soft limit
to the hard one at start; :class:`FdReserve` keeps one descriptor spare so that, when out
of descriptors, the coordinator can still accept a connection to tell it why and close it.
"""

from __future__ import annotations

import errno
import os
import resource

# accept() errors that mean "out of descriptors or kernel memory", not "this peer is bad"
EXHAUSTED = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def raise_nofile_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns ``(soft, hard)`` now in force.

    Leaves the limit as it is where the kernel refuses (the caller still works, with fewer
    clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def fallback_file_limit(wanted: int) -> int:
    """At most ``wanted`` fallback files, and never more than a quarter of the descriptors
    this process may open (the hard limit, which :func:`raise_nofile_limit` makes the soft
    one): the rest stay for clients, segments and the spiller."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, hard // 4))


class FdReserve:
    """One descriptor (``/dev/null``) held back for when every other one is in use."""

    def __init__(self) -> None:
        self._fd: int | None = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)

    def release(self) -> bool:
        """Free the reserve so the next open can succeed; False if it is already used."""
        if self._fd is None:
            return False
        os.close(self._fd)
        self._fd = None
        return True

    def restore(self) -> None:
        """Take the reserve back (silently retried at the next ``restore`` when still out)."""
        if self._fd is None:
            try:
                self._fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno not in EXHAUSTED:
                    raise

    def close(self) -> None:
        self.release()


def side_connection_limit(wanted: int) -> int:
    """At most ``wanted`` connections at once for a side server of the coordinator (the
    dashboard, ``/metrics``), and never more than a sixteenth of the descriptors the soft
    limit allows: the two together take at most an eighth, the rest stay the store's (its
    clients, segments, spill and fallback files), whatever those side servers are sent."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft // 16))
