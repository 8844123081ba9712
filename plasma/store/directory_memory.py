"""Where the directory's shared memory comes from: the coordinator's memfds, or this
process's memory for a store without a coordinator (tests, tools). Only makes and frees
buffers; what goes in them is :mod:`plasma.store.facade`'s (and :mod:`plasma.directory`'s).
"""

from __future__ import annotations

from typing import Any, Protocol


class DirectoryMemory(Protocol):
    """Creates the shared memory the directory and its access bytes live in."""

    def new_directory(self, nbytes: int, access_bytes: int) -> tuple[Any, Any]:
        """Zero-filled writable buffers for a directory and its access bytes. May raise
        PlasmaError (the store then keeps its current directory)."""
        ...

    def free_directory(self, directory: Any, access: Any) -> None:
        """The store no longer uses these buffers (readers may still map them)."""
        ...


class LocalDirectoryMemory:
    """Directory memory in this process only (for the store without a coordinator)."""

    def new_directory(self, nbytes: int, access_bytes: int) -> tuple[Any, Any]:
        return bytearray(nbytes), bytearray(access_bytes)

    def free_directory(self, directory: Any, access: Any) -> None:
        pass
