"""Peer: plasma-coord itself, ``plasma-coord serve`` driven through ``plasma.connect``.

Small objects use ``create_and_seal`` (the client-arena path), batches
``create_and_seal_many``, arrays ``put`` / ``get_object`` (zero-copy). A view releases its
object when it is garbage collected. A get of a sealed object in a segment the client has
mapped is served from the shared directory with no message; seals are sent without a reply,
so ``sync`` is ``flush``, and an acknowledged seal (``seal_acked``) is ``seal`` + ``flush``, as
in ``plasma.compat``. ``reader`` is a second connection with ``release_delay=0`` (no client
cache of released objects).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import numpy as np

import plasma
from bench.peers.base import Key, SocketPeer, stop_process, wait_for_path, worker_main

SERVE_COMMAND = (sys.executable, "-m", "plasma", "serve")
SETTLE_TIMEOUT = 120.0  # seconds a new store may take to fault its spares in


class PlasmaCoordPeer(SocketPeer):
    socket_name = "plasma-coord.sock"

    @property
    def client(self) -> plasma.Client:
        if self._client is None:
            raise RuntimeError("not connected")
        return self._client

    def start(self) -> dict[str, Any]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._socket.unlink(missing_ok=True)
        self._server = subprocess.Popen(
            [
                *SERVE_COMMAND,
                *("--socket", str(self._socket), "--memory", str(self.memory)),
                *self.serve_args,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_path(self._socket, self._server, 30)
        self._client = plasma.connect(str(self._socket), client_name="bench")
        return {"version": "plasma-coord (this tree)", "batch": "create_and_seal_many"}

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            stop_process(self._server)

    def connect(self, socket: str, cache: bool = True) -> Any:
        if cache:
            return plasma.connect(socket, client_name="bench-child")
        return plasma.connect(socket, client_name="bench-reader", release_delay=0)

    def settle(self) -> None:
        # the segments `serve --prefault` prepares in the background are ready
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while (spares := self.client.stats()["spares"])["preparing"] or (
            spares["prefault"] != "off" and not spares["ready"] and not spares["error"]
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no spare segment ready after {SETTLE_TIMEOUT} s: {spares}")
            time.sleep(0.05)

    def sync(self) -> None:
        self.client.flush()  # seals were sent without waiting: now they are applied

    def put_small(self, data: bytes) -> Key:
        oid = plasma.ObjectID.from_random()
        self.client.create_and_seal(oid, data)
        return oid

    def put_many(self, items: list[bytes]) -> list[Key]:
        batch = [(plasma.ObjectID.from_random(), data, b"") for data in items]
        self.client.create_and_seal_many(batch)
        return [oid for oid, _, _ in batch]

    def get(self, key: Key) -> memoryview:
        # the single-id form (no list to build), and _client: no property call in the timing
        view: memoryview = self._client.get(key)
        return view

    def delete(self, keys: list[Key]) -> None:
        self.client.delete(keys)

    def contains(self, key: Key) -> bool:
        return self.client.contains(key)

    def create_unsealed(self, data: bytes) -> Key:
        oid = plasma.ObjectID.from_random()
        self.client.create(oid, len(data))[:] = data
        return oid

    def seal_acked(self, key: Key) -> None:
        # the strict seal (one round trip), as plasma.compat's; then the creator's reference
        # goes (no reply)
        self.client.seal(key, wait=True)
        self.client.release(key)

    def store_counts(self) -> tuple[int, int]:
        stats = self.client.stats()
        return stats["objects"], stats["evictions"]

    def put_array(self, array: np.ndarray) -> Key:
        return self.client.put(array)

    def get_array(self, key: Key) -> np.ndarray:
        array: np.ndarray = self.client.get_object(key)
        return array

    def close(self) -> None:
        self.client.close()

    def key_from_bytes(self, data: bytes) -> Key:
        return plasma.ObjectID(data)


PEER = PlasmaCoordPeer

if __name__ == "__main__":
    worker_main("bench.peers.plasma_coord")
