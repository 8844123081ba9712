"""Peer: vineyard (``vineyardd --meta local``, the daemon shipped in the ``vineyard`` wheel).

Small objects are blobs: ``create_blob`` + copy + ``seal``; a batch allocates all its blobs in
one ``create_blob([sizes])`` call and then seals each. Arrays go through ``put`` / ``get``
(vineyard's zero-copy tensor). The store's bookkeeping lives in the ``vineyardd`` process.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import vineyard

from bench.peers.base import Key, SocketPeer, stop_process, wait_for_path, worker_main


class VineyardPeer(SocketPeer):
    socket_name = "vineyard.sock"

    def start(self) -> dict[str, Any]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        daemon = Path(vineyard.__file__).parent / "bdist" / "vineyardd"
        size = str(self.memory)
        self._server = subprocess.Popen(
            [str(daemon), "--meta", "local", "--socket", str(self._socket), "--size", size],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        wait_for_path(self._socket, self._server, 60)
        self._client = vineyard.connect(str(self._socket))
        return {"version": f"vineyard {vineyard.__version__}", "batch": "create_blob([sizes])"}

    def stop(self) -> None:
        self._client = None
        if self._server is not None:
            stop_process(self._server)

    def connect(self, socket: str, cache: bool = True) -> Any:
        return vineyard.connect(socket)

    def put_small(self, data: bytes) -> Key:
        builder = self._client.create_blob(len(data))
        builder.copy(0, data)
        return builder.seal(self._client).id

    def put_many(self, items: list[bytes]) -> list[Key]:
        builders = self._client.create_blob([len(d) for d in items])
        keys = []
        for builder, data in zip(builders, items, strict=True):
            builder.copy(0, data)
            keys.append(builder.seal(self._client).id)
        return keys

    def get(self, key: Key) -> memoryview:
        return memoryview(self._client.get_blob(key))

    def delete(self, keys: list[Key]) -> None:
        self._client.delete(keys)

    def put_array(self, array: np.ndarray) -> Key:
        return self._client.put(array)

    def get_array(self, key: Key) -> np.ndarray:
        array: np.ndarray = self._client.get(key)
        return array

    def close(self) -> None:
        self._client.close()

    def key_to_bytes(self, key: Key) -> bytes:
        return int(key).to_bytes(8, "little")

    def key_from_bytes(self, data: bytes) -> Key:
        return vineyard.ObjectID(int.from_bytes(data, "little"))


PEER = VineyardPeer

if __name__ == "__main__":
    os.environ.setdefault("GLOG_minloglevel", "2")
    worker_main("bench.peers.vineyard_store")
