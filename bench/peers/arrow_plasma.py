"""Peer: Arrow Plasma, the C++ ``plasma-store-server`` shipped by pyarrow 11 (``pyarrow.plasma``).

Small objects use ``create_and_seal`` (one request); arrays are ``create`` + copy + ``seal``
and come back zero-copy through ``get_buffers``. A buffer releases its object when it is
garbage collected. Plasma has no batch create, so ``put_many`` is the default loop. Its seal
is acknowledged (a reply), ``contains`` is a request, and ``debug_string`` gives the object
and eviction counts of its LRU list.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers.base import Key, SocketPeer, stop_process, wait_for_path, worker_main

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Plasma is deprecated since Arrow 10.0.0"
    import pyarrow
    import pyarrow.plasma as plasma


class ArrowPlasmaPeer(SocketPeer):
    socket_name = "plasma.sock"

    def start(self) -> dict[str, Any]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        server = Path(pyarrow.__file__).parent / "plasma-store-server"
        self._server = subprocess.Popen(
            [str(server), "-m", str(self.memory), "-s", str(self._socket)],
            stdout=subprocess.DEVNULL,
        )
        wait_for_path(self._socket, self._server, 30)
        self._client = plasma.connect(str(self._socket))
        return {"version": f"pyarrow {pyarrow.__version__}"}

    def stop(self) -> None:
        self._client = None
        if self._server is not None:
            stop_process(self._server)

    def connect(self, socket: str, cache: bool = True) -> Any:
        return plasma.connect(socket)  # pyarrow 11's client caches nothing

    def put_small(self, data: bytes) -> Key:
        oid = plasma.ObjectID(os.urandom(20))
        self._client.create_and_seal(oid, data)
        return oid

    def get(self, key: Key) -> memoryview:
        return memoryview(self._client.get_buffers([key])[0])

    def delete(self, keys: list[Key]) -> None:
        self._client.delete(keys)

    def contains(self, key: Key) -> bool:
        return bool(self._client.contains(key))

    def create_unsealed(self, data: bytes) -> Key:
        oid = plasma.ObjectID(os.urandom(20))
        buf = self._client.create(oid, len(data))
        np.frombuffer(buf, dtype=np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
        del buf
        return oid

    def seal_acked(self, key: Key) -> None:
        self._client.seal(key)  # a request answered by a reply; then a release, unanswered

    def store_counts(self) -> tuple[int, int]:
        # every object here is unreferenced, so all of them are in the LRU list it reports
        fields = {}
        for line in self._client.debug_string().splitlines():
            name, _, value = line.rpartition(": ")
            fields[name] = value
        return int(fields["(global lru) num objects"]), int(fields["(global lru) num evictions"])

    def put_array(self, array: np.ndarray) -> Key:
        oid = plasma.ObjectID(os.urandom(20))
        meta = json.dumps([array.dtype.str, array.shape]).encode()
        buf = self._client.create(oid, array.nbytes, meta)
        np.copyto(np.frombuffer(buf, dtype=array.dtype).reshape(array.shape), array)
        del buf
        self._client.seal(oid)
        return oid

    def get_array(self, key: Key) -> np.ndarray:
        [(meta, buf)] = self._client.get_buffers([key], with_meta=True)
        dtype, shape = json.loads(bytes(meta))
        return np.frombuffer(buf, dtype=dtype).reshape(shape)

    def close(self) -> None:
        self._client.disconnect()

    def key_to_bytes(self, key: Key) -> bytes:
        return bytes(key.binary())

    def key_from_bytes(self, data: bytes) -> Key:
        return plasma.ObjectID(data)


PEER = ArrowPlasmaPeer

if __name__ == "__main__":
    worker_main("bench.peers.arrow_plasma")
