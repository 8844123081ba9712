"""What every peer adapter implements, and the JSON-lines worker loop that drives it.

A worker is ``python -m bench.peers.MODULE`` in the peer's venv. It reads one JSON request per
line on stdin and writes one JSON reply per line on its *original* stdout; everything a
library prints goes to stderr instead (fd 1 is pointed at fd 2 before the peer is imported).

Requests: ``{"op": "start", "workdir": str, "memory": int, "serve_args": [str]}``,
``{"op": "run", "scenario": str, "params": {...}}``, ``{"op": "stop"}``. Replies:
``{"ok": true, "result": ...}`` or ``{"ok": false, "error": str}``.
"""

from __future__ import annotations

import abc
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

Key = Any  # whatever names an object in the peer: ObjectID, ObjectRef, segment name...


class Peer(abc.ABC):
    """One object store as the scenarios see it; the main instance owns the store process."""

    #: whether ``put_many`` is a real batch API rather than the default loop
    batch_api = False
    #: extra arguments of the store's server command (``Scenario.serve_args``), set before
    #: ``start``; only plasma-coord's peer takes any
    serve_args: tuple[str, ...] = ()

    def __init__(self, workdir: Path, memory: int) -> None:
        self.workdir = workdir
        self.memory = memory

    @abc.abstractmethod
    def start(self) -> dict[str, Any]:
        """Start the store (if it has a process) and connect; return version facts."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Disconnect and stop the store."""

    @abc.abstractmethod
    def store_pids(self) -> list[int]:
        """Processes that hold the store's bookkeeping; ``[]`` means this process."""

    @abc.abstractmethod
    def put_small(self, data: bytes) -> Key:
        """Create and seal one object holding ``data`` by the peer's fastest single path."""

    def put_many(self, items: list[bytes]) -> list[Key]:
        """Create and seal many objects; a loop of ``put_small`` unless ``batch_api``."""
        return [self.put_small(d) for d in items]

    def settle(self) -> None:
        """Return once a store just started is ready to serve at full speed (what it
        prepares in the background after it accepts clients is done); nothing by default."""
        return None

    def sync(self) -> None:
        """Return once the store applied everything this client sent (its seals are visible
        to every other client); nothing to do where seals are acknowledged already."""
        return None

    def reader(self) -> Peer:
        """A client of the store, in this process, that no client-side cache serves: a second
        connection where the peer allows one (plasma-coord's with ``release_delay=0``), else
        this client. Close it with :meth:`close` unless it is ``self``."""
        return self

    @abc.abstractmethod
    def get(self, key: Key) -> Any:
        """A view of a sealed object supporting ``view[0]``; dropping it releases the object."""

    @abc.abstractmethod
    def delete(self, keys: list[Key]) -> None:
        """Remove objects that no view references any more."""

    # The strict request/reply calls and the store's books, for the peers that run the
    # ``rpc`` and ``scale`` scenarios (``Scenario.peers``).

    def contains(self, key: Key) -> bool:
        """Whether the store holds the sealed object: one request and its reply."""
        raise NotImplementedError(f"{type(self).__name__} has no contains")

    def create_unsealed(self, data: bytes) -> Key:
        """Create an object holding ``data`` and leave it unsealed (for :meth:`seal_acked`)."""
        raise NotImplementedError(f"{type(self).__name__} has no separate create and seal")

    def seal_acked(self, key: Key) -> None:
        """Seal an object from :meth:`create_unsealed`, returning once the store confirmed
        it, and drop the creator's reference."""
        raise NotImplementedError(f"{type(self).__name__} has no separate create and seal")

    def store_counts(self) -> tuple[int, int]:
        """(objects the store holds, objects it has evicted since it started)."""
        raise NotImplementedError(f"{type(self).__name__} does not count its objects")

    @abc.abstractmethod
    def put_array(self, array: np.ndarray) -> Key:
        """Store a numpy array (its bytes are copied once into shared memory)."""

    @abc.abstractmethod
    def get_array(self, key: Key) -> np.ndarray:
        """The stored array, zero-copy where the peer can."""

    def put_value(self, value: Any) -> Key:
        """Store any picklable Python value (here: a dict of arrays); by default the way the
        peer stores arrays, which for every peer here pickles what is not an array."""
        return self.put_array(value)

    def get_value(self, key: Key) -> Any:
        """The stored value, its arrays zero-copy where the peer can."""
        return self.get_array(key)

    @abc.abstractmethod
    def child_config(self) -> dict[str, Any]:
        """Picklable facts a client in another process needs to connect (``child``)."""

    @classmethod
    @abc.abstractmethod
    def child(cls, config: dict[str, Any]) -> Peer:
        """A client of an already running store, in a child process."""

    @abc.abstractmethod
    def close(self) -> None:
        """Disconnect a child client."""

    def key_to_bytes(self, key: Key) -> bytes:
        """Serialize a key to send it to another process."""
        return bytes(key)

    def key_from_bytes(self, data: bytes) -> Key:
        """The inverse of ``key_to_bytes``, in the receiving process."""
        return data


class SocketPeer(Peer):
    """A store process serving clients on a Unix socket in the work dir; children connect to it."""

    socket_name: ClassVar[str]  # the socket's file name in the work dir

    def __init__(self, workdir: Path, memory: int) -> None:
        super().__init__(workdir, memory)
        self._server: subprocess.Popen[bytes] | None = None
        self._socket = workdir / self.socket_name
        self._client: Any = None

    @abc.abstractmethod
    def connect(self, socket: str, cache: bool = True) -> Any:
        """A client of the store listening on ``socket``; ``cache=False``: without a client
        cache of released objects (peers whose client has none ignore it)."""

    def store_pids(self) -> list[int]:
        return [self._server.pid] if self._server is not None else []

    def child_config(self) -> dict[str, Any]:
        return {"socket": str(self._socket)}

    @classmethod
    def child(cls, config: dict[str, Any]) -> Peer:
        peer = cls(Path(config["socket"]).parent, 0)
        peer._client = peer.connect(config["socket"], cache=config.get("cache", True))
        return peer

    def reader(self) -> Peer:
        return type(self).child(self.child_config() | {"cache": False})


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by processes ``pids`` (all their threads), from
    utime and stime in /proc/PID/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / tick


def read_memory(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon, RssFile and RssShmem of ``pid`` in bytes, from /proc/PID/status."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def store_memory(pids: list[int]) -> dict[str, int]:
    """Bytes of processes ``pids`` together: ``vmrss`` (VmRSS), ``shmem`` (RssShmem: the
    shared-memory pages they have mapped and touched) and ``private`` (the difference)."""
    mems = [read_memory(pid) for pid in pids]
    vmrss = sum(m["VmRSS"] for m in mems)
    shmem = sum(m["RssShmem"] for m in mems)
    return {"vmrss": vmrss, "shmem": shmem, "private": vmrss - shmem}


def wait_for_path(path: Path, proc: subprocess.Popen[Any] | None, timeout: float) -> None:
    """Wait until ``path`` exists (a server's socket), failing early if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before {path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.02)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM then, after ``timeout``, SIGKILL."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load_peer_class(module: str) -> type[Peer]:
    """The ``PEER`` class of an adapter module."""
    cls: type[Peer] = importlib.import_module(module).PEER
    return cls


def worker_main(module: str) -> None:
    """Serve JSON-lines requests for the adapter in ``module`` until ``stop`` or EOF."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    from bench import scenarios  # after the redirect: peers may print on import

    cls = load_peer_class(module)
    peer: Peer | None = None

    def reply(ok: bool, value: Any) -> None:
        out.write(json.dumps({"ok": ok, "result" if ok else "error": value}) + "\n")

    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "start":
                peer = cls(Path(request["workdir"]), int(request["memory"]))
                peer.serve_args = tuple(request.get("serve_args", ()))
                reply(True, peer.start())
            elif op == "run":
                if peer is None:
                    raise RuntimeError("run before start")
                reply(True, scenarios.run(peer, module, request["scenario"], request["params"]))
            elif op == "stop":
                if peer is not None:
                    peer.stop()
                reply(True, None)
                return
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:
            traceback.print_exc()
            reply(False, f"{type(exc).__name__}: {exc}")
    if peer is not None:
        peer.stop()
