"""The libc handle, per-architecture syscall numbers and errno -> exception mapping.

Every wrapper in :mod:`plasma.linux` goes through :func:`syscall` or :func:`libc_call`, so
the rules are uniform: ENOSYS, a non-Linux platform or an unknown architecture raise
:class:`plasma.errors.Unsupported` naming the call; any other failure raises ``OSError``
with the real errno and a message that names the call and its arguments.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import sys
from typing import Any

from plasma.errors import Unsupported

# Numbers from arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h.
SYSCALL_NUMBERS: dict[str, dict[str, int]] = {
    "x86_64": {
        "mbind": 237,
        "set_mempolicy": 238,
        "get_mempolicy": 239,
        "move_pages": 279,
        "perf_event_open": 298,
    },
    "aarch64": {
        "mbind": 235,
        "get_mempolicy": 236,
        "set_mempolicy": 237,
        "move_pages": 239,
        "perf_event_open": 241,
    },
}
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


def machine() -> str:
    """The canonical architecture name (``x86_64`` or ``aarch64`` when supported)."""
    arch = platform.machine().lower()
    return _ARCH_ALIASES.get(arch, arch)


def syscall_number(name: str, arch: str | None = None) -> int:
    """The number of syscall ``name`` on ``arch`` (default: this machine)."""
    arch = arch or machine()
    if not sys.platform.startswith("linux"):
        raise Unsupported(f"{name}: Linux only (this is {sys.platform})")
    table = SYSCALL_NUMBERS.get(arch)
    if table is None:
        raise Unsupported(f"{name}: no syscall number for architecture {arch!r}")
    return table[name]


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once with ``use_errno``."""
    if not sys.platform.startswith("linux"):
        raise Unsupported(f"plasma.linux: Linux only (this is {sys.platform})")
    lib = ctypes.CDLL(None, use_errno=True)
    lib.syscall.restype = ctypes.c_long
    return lib


def os_error(err: int, call: str) -> OSError:
    """The exception for a failed ``call``: Unsupported for ENOSYS, else OSError(err)."""
    if err == errno.ENOSYS:
        return Unsupported(f"{call}: not implemented by this kernel (ENOSYS)")
    return OSError(err, f"{call}: {os.strerror(err)} ({errno.errorcode.get(err, err)})")


def syscall(name: str, *args: Any, call: str | None = None) -> int:
    """Invoke raw syscall ``name``: ints pass as ``long``, ctypes objects and None as they are.

    ``call`` describes the call (with its arguments) in error messages.
    """
    number = syscall_number(name)
    converted = [ctypes.c_long(a) if isinstance(a, int) else a for a in args]
    result: int = libc().syscall(ctypes.c_long(number), *converted)
    if result == -1:
        raise os_error(ctypes.get_errno(), call or name)
    return result


def libc_call(name: str, *args: Any, call: str | None = None) -> int:
    """Invoke libc function ``name`` (argtypes already set or plain ints); -1 means errno."""
    func = getattr(libc(), name, None)
    if func is None:
        raise Unsupported(f"{name}: not provided by this C library")
    result: int = func(*args)
    if result == -1:
        raise os_error(ctypes.get_errno(), call or name)
    return result
