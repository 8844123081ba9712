"""Peer: Ray's object store through ``ray.put`` / ``ray.get`` (local node, 1 CPU, no dashboard).

Payloads are put as numpy uint8 arrays so that ``ray.get`` is Ray's zero-copy path. Objects are
freed when their last ``ObjectRef`` goes away (``delete`` drops nothing itself). Other
processes join as drivers of the same cluster and receive refs by out-of-band pickling. The
plasma store lives inside the raylet: ``memory`` measures the raylet process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.peers.base import Key, Peer, worker_main

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # after the environment above: ray reads it at import
import ray.cloudpickle

_QUIET = {"log_to_driver": False, "configure_logging": False}


class RayPeer(Peer):
    def __init__(self, workdir: Path, memory: int) -> None:
        super().__init__(workdir, memory)
        self._address = ""

    def start(self) -> dict[str, Any]:
        context = ray.init(
            num_cpus=1, include_dashboard=False, object_store_memory=self.memory, **_QUIET
        )
        self._address = context.address_info["gcs_address"]
        return {"version": f"ray {ray.__version__}"}

    def stop(self) -> None:
        ray.shutdown()

    def store_pids(self) -> list[int]:
        node = ray._private.worker._global_node
        return [info.process.pid for info in node.all_processes["raylet"]]

    def put_small(self, data: bytes) -> Key:
        return ray.put(np.frombuffer(data, dtype=np.uint8))

    def get(self, key: Key) -> np.ndarray:
        array: np.ndarray = ray.get(key)
        return array

    def delete(self, keys: list[Key]) -> None:
        """Nothing to do: the caller drops its refs and Ray frees the objects."""

    def put_array(self, array: np.ndarray) -> Key:
        return ray.put(array)

    def get_array(self, key: Key) -> np.ndarray:
        array: np.ndarray = ray.get(key)
        return array

    def child_config(self) -> dict[str, Any]:
        return {"address": self._address}

    @classmethod
    def child(cls, config: dict[str, Any]) -> Peer:
        ray.init(address=config["address"], **_QUIET)
        return cls(Path("."), 0)

    def close(self) -> None:
        ray.shutdown()

    def key_to_bytes(self, key: Key) -> bytes:
        data: bytes = ray.cloudpickle.dumps(key)
        return data

    def key_from_bytes(self, data: bytes) -> Key:
        return ray.cloudpickle.loads(data)


PEER = RayPeer

if __name__ == "__main__":
    worker_main("bench.peers.ray_store")
