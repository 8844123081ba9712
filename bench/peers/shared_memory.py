"""Peer: ``multiprocessing.shared_memory`` segments, one per object, arrays via pickle protocol 5.

There is no server: an object is a named POSIX shared-memory segment (a file in /dev/shm)
created with ``SharedMemory(create=True)``, written, and closed by its creator; "seal" is
closing the handle. A reader maps the segment read-only by name (``get`` and ``get_array``
are zero-copy: the returned view owns the mapping). Arrays are a pickle-5 header followed by
the out-of-band buffer. For ``memory`` there is no store process: the harness measures this
worker (the creator), and the objects' pages live in the kernel's tmpfs, outside any RSS.
"""

from __future__ import annotations

import mmap
import os
import pickle
import struct
from multiprocessing import resource_tracker, shared_memory
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers.base import Key, Peer, worker_main

_LEN = struct.Struct("<Q")
_SHM = Path("/dev/shm")


class SharedMemoryPeer(Peer):
    def __init__(self, workdir: Path, memory: int) -> None:
        super().__init__(workdir, memory)
        self._prefix = f"bench{os.getpid()}_"
        self._count = 0

    def start(self) -> dict[str, Any]:
        return {"version": "python stdlib"}

    def stop(self) -> None:
        for path in _SHM.glob(self._prefix + "*"):
            path.unlink(missing_ok=True)

    def store_pids(self) -> list[int]:
        return []

    def _create(self, chunks: list[bytes | memoryview]) -> str:
        self._count += 1
        name = f"{self._prefix}{self._count}"
        shm = shared_memory.SharedMemory(name, create=True, size=sum(len(c) for c in chunks))
        # The creator unlinks explicitly (``delete``); do not let the tracker race it.
        resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
        offset, buf = 0, shm.buf
        assert buf is not None
        for chunk in chunks:
            buf[offset : offset + len(chunk)] = chunk
            offset += len(chunk)
        shm.close()
        return name

    def put_small(self, data: bytes) -> Key:
        return self._create([data])

    def get(self, key: Key) -> memoryview:
        return memoryview(_map(key))

    def delete(self, keys: list[Key]) -> None:
        for key in keys:
            (_SHM / key).unlink(missing_ok=True)

    def put_array(self, array: np.ndarray) -> Key:
        buffers: list[pickle.PickleBuffer] = []
        header = pickle.dumps(array, protocol=5, buffer_callback=buffers.append)
        raws = [b.raw() for b in buffers]
        lengths = b"".join(_LEN.pack(len(r)) for r in raws)
        return self._create([_LEN.pack(len(header)), _LEN.pack(len(raws)), lengths, header, *raws])

    def get_array(self, key: Key) -> np.ndarray:
        view = memoryview(_map(key))
        (header_len,) = _LEN.unpack_from(view, 0)
        (n_buffers,) = _LEN.unpack_from(view, 8)
        offset = 16 + 8 * n_buffers + header_len
        buffers = []
        for i in range(n_buffers):
            (length,) = _LEN.unpack_from(view, 16 + 8 * i)
            buffers.append(view[offset : offset + length])
            offset += length
        start = 16 + 8 * n_buffers
        array: np.ndarray = pickle.loads(view[start : start + header_len], buffers=buffers)
        return array

    def child_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def child(cls, config: dict[str, Any]) -> Peer:
        return cls(Path("."), 0)

    def close(self) -> None:
        pass

    def key_to_bytes(self, key: Key) -> bytes:
        return str(key).encode()

    def key_from_bytes(self, data: bytes) -> Key:
        return data.decode()


def _map(name: str) -> mmap.mmap:
    """Map segment ``name`` read-only; the mapping lives as long as views of it."""
    fd = os.open(_SHM / name, os.O_RDONLY)
    try:
        return mmap.mmap(fd, 0, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


PEER = SharedMemoryPeer

if __name__ == "__main__":
    worker_main("bench.peers.shared_memory")
