"""The worker data store: task results in the host's coordinator (internal).

Owns the mapping ``Worker.data`` (``{key: value}``) and the objects behind it; never talks to
the scheduler or to other workers (the worker plugin wires it in, :mod:`plasma.dask._plugins`).

A value of at least ``threshold`` bytes (``dask.sizeof``) is written into an object of the
coordinator with :meth:`plasma.Client.put` (numpy arrays and Arrow data in their own layouts,
anything else pickled with protocol 5, its buffers copied straight into the object) and kept
as the zero-copy read-only view :meth:`plasma.Client.get_object` returns; smaller values, and
values ``put`` cannot round-trip exactly (``bytes``-like values, ``ndarray`` subclasses), stay
in the worker's memory. When the store is full the value stays in memory too, with a log line.

Three kinds of entries: in memory; *owned* (an object this store created: deleting the key
deletes the object); *borrowed* (an object another worker of the same coordinator created,
read by id after a transfer: deleting the key only drops the view, the owner deletes it).

Same-host transfers: while the worker answers a ``get_data`` request of a worker connected to
the same coordinator (see :class:`Serving`), reading a key held in the store returns a
:class:`Handle` instead of the value: a few bytes that pickle as "object X of coordinator T".
The receiving worker unpickles it into a :class:`Shared` (the object read from its own
connection, zero copy) and stores it as a borrowed entry. An object lent that way is not
deleted until the request that carried it ends (the receiver has read it by then).

Object ids are :data:`PREFIX` + 15 random bytes, so :mod:`plasma.dask._reaper` can tell the
objects of dead workers from anyone else's.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.sizeof import sizeof

from plasma.client import Client, connect
from plasma.dask import _sizeof  # noqa: F401  (tensors measured by their bytes)
from plasma.dask._placement import Location
from plasma.errors import Disconnected, ObjectNotFound, PlasmaError, StoreFull
from plasma.ids import ObjectID
from plasma.units import format_size

logger = logging.getLogger("plasma.dask")

PREFIX = b"dask:"  # the first bytes of every object id this module creates
DEFAULT_THRESHOLD = 1 << 20  # values of at least this many bytes go to the store
CLIENT_NAME = "plasma.dask"  # the client name is "plasma.dask WORKER_ADDRESS"


def coordinator_token(socket_path: str) -> str:
    """Names one coordinator among all hosts: boot id + the socket's device and inode.

    Two coordinators on one host have different sockets; two hosts have different boot ids.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:  # not Linux-like enough: the host name still tells hosts apart
        boot = os.uname().nodename
    st = os.stat(socket_path)
    return f"{boot}:{st.st_dev}:{st.st_ino}"


@dataclass(slots=True)
class Serving:
    """A ``get_data`` request being answered: whether its peer shares our coordinator, and
    the objects lent to it by id (see :func:`serving`)."""

    same_host: bool
    lent: list[bytes] = field(default_factory=list)


serving: contextvars.ContextVar[Serving | None] = contextvars.ContextVar(
    "plasma_dask_serving", default=None
)


class Handle:
    """What a same-host peer receives instead of a value: pickles to a :class:`Shared`."""

    __slots__ = ("nbytes", "node", "oid", "token")

    def __init__(self, token: str, oid: bytes, node: int | None, nbytes: int) -> None:
        self.token, self.oid, self.node, self.nbytes = token, oid, node, nbytes

    def __reduce__(self) -> tuple[Any, tuple[str, bytes, int | None, int]]:
        return (_resolve, (self.token, self.oid, self.node, self.nbytes))


@dataclass(slots=True, frozen=True)
class Shared:
    """A value read by id from the coordinator ``token``: the receiver stores it as borrowed."""

    value: object
    token: str
    oid: bytes
    node: int | None
    nbytes: int


@sizeof.register(Shared)
def _sizeof_shared(shared: Shared) -> int:
    return shared.nbytes


# coordinator token -> socket path, for every store of this process (filled by PlasmaData)
_sockets: dict[str, str] = {}


_readers: dict[str, Client] = {}  # socket path -> this process's reader of peers' objects


def _reader(socket_path: str) -> Client:
    """This process's connection for reading peers' objects; never closed, so the views it
    hands out stay valid for as long as anything holds them (the process exit ends it)."""
    reader = _readers.get(socket_path)
    if reader is None:
        reader = _readers[socket_path] = connect(
            socket_path, f"{CLIENT_NAME} reader", release_delay=0
        )
    return reader


def _resolve(token: str, oid: bytes, node: int | None, nbytes: int) -> Shared:
    """Unpickling a :class:`Handle`: read the object from this host's coordinator."""
    socket_path = _sockets.get(token)
    if socket_path is None:
        raise PlasmaError(
            f"plasma.dask: received object {oid.hex()} of coordinator {token}, which this "
            f"process is not connected to (connected: {sorted(_sockets) or 'none'})"
        )
    try:
        value = _reader(socket_path).get_object(ObjectID(oid), timeout=0)
    except ObjectNotFound:
        raise ObjectNotFound(
            f"plasma.dask: object {oid.hex()} ({format_size(nbytes)}) was deleted by the "
            f"worker that sent its id before this worker could read it"
        ) from None
    return Shared(value, token, oid, node, nbytes)


def _storable(value: object) -> bool:
    """Whether ``put`` / ``get_object`` give back a value of the same type."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return False  # they come back as a read-only memoryview
    return not isinstance(value, np.ndarray) or type(value) is np.ndarray


@dataclass(slots=True)
class _Entry:
    value: object
    oid: bytes | None = None  # None: the value lives in the worker's memory
    owned: bool = False
    node: int | None = None
    nbytes: int = 0


class PlasmaData(MutableMapping[Any, object]):
    """``Worker.data`` keeping values of at least ``threshold`` bytes in the coordinator
    listening on ``socket_path`` (see the module docstring); the rest in memory.

    Connects on first use, as ``"plasma.dask NAME"`` (the plugin names it after its worker,
    which is how same-host peers recognise each other). :meth:`close` deletes the objects it
    created and disconnects.
    """

    def __init__(
        self, socket_path: str, *, threshold: int = DEFAULT_THRESHOLD, name: str = ""
    ) -> None:
        self.socket_path = socket_path
        self.threshold = threshold
        self.name = name
        self._client: Client | None = None
        self._entries: dict[Any, _Entry] = {}
        self._lent: collections.Counter[bytes] = collections.Counter()
        self._doomed: set[bytes] = set()  # deleted keys whose object is lent right now

    # ------------------------------------------------------------ connection

    @property
    def client(self) -> Client:
        """The connection (made on first use; ``Disconnected`` if nothing listens there)."""
        if self._client is None:
            # release_delay=0: a deleted key must free its memory now, not when 64 more went
            name = f"{CLIENT_NAME} {self.name}".strip()
            client = connect(self.socket_path, name, release_delay=0)
            self.token = coordinator_token(self.socket_path)
            self.node: int | None = client.info.node
            _sockets.setdefault(self.token, self.socket_path)
            self._client = client
        return self._client

    @property
    def location(self) -> Location:
        """Where this store's objects live: (coordinator token, NUMA node)."""
        _ = self.client  # connecting sets token and node
        return (self.token, self.node)

    def close(self) -> None:
        """Delete every object this store created and disconnect (values in memory stay)."""
        client, self._client = self._client, None
        if client is None:
            return
        owned = [e.oid for e in self._entries.values() if e.owned and e.oid is not None]
        self._entries = {k: e for k, e in self._entries.items() if e.oid is None}
        try:
            with contextlib.suppress(Disconnected):  # the coordinator is gone, objects too
                if owned or self._doomed:
                    _delete(client, [*owned, *self._doomed])
        finally:
            self._doomed.clear()
            client.close()

    # ------------------------------------------------------------ the mapping

    def __getitem__(self, key: Any) -> object:
        entry = self._entries[key]
        request = serving.get()
        if request is None or not request.same_host or entry.oid is None:
            return entry.value
        if not entry.owned and not self.client.contains(ObjectID(entry.oid)):
            return entry.value  # its owner deleted it: send the bytes of our view
        self._lent[entry.oid] += 1
        request.lent.append(entry.oid)
        return Handle(self.token, entry.oid, entry.node, entry.nbytes)

    def __setitem__(self, key: Any, value: object) -> None:
        if key in self._entries:
            del self[key]
        if isinstance(value, Shared) and value.token == self.location[0]:
            entry = _Entry(value.value, value.oid, False, value.node, value.nbytes)
        elif isinstance(value, Shared):  # read from another coordinator: copy it here
            entry = self._entry(value.value)
        else:
            entry = self._entry(value)
        self._entries[key] = entry

    def __delitem__(self, key: Any) -> None:
        entry = self._entries.pop(key)
        if entry.oid is None:
            return
        if not entry.owned:  # borrowed: only our view goes (released at the next flush)
            return
        if self._lent[entry.oid]:
            self._doomed.add(entry.oid)
        else:
            _delete(self.client, [entry.oid])

    def __iter__(self) -> Iterator[Any]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    # ------------------------------------------------------------ for the plugin

    def flush(self) -> None:
        """Send the releases of the views dropped since the last call (ours and this
        process's reader's): a client sends them with its next message, and an idle one
        would keep deleted objects' memory held until then."""
        for client in (self._client, _readers.get(self.socket_path)):
            if client is not None:
                client.flush()

    def object_of(self, key: Any) -> tuple[bytes, int | None, int] | None:
        """The object holding ``key`` (id, node, bytes), or None when it is in memory."""
        entry = self._entries.get(key)
        if entry is None or entry.oid is None:
            return None
        return entry.oid, entry.node, entry.nbytes

    def return_lent(self, oids: list[bytes]) -> None:
        """A request that lent ``oids`` ended: delete those whose key went meanwhile."""
        done = []
        for oid in oids:
            self._lent[oid] -= 1
            if not self._lent[oid]:
                del self._lent[oid]
                if oid in self._doomed:
                    self._doomed.discard(oid)
                    done.append(oid)
        if done and self._client is not None:
            _delete(self._client, done)

    # ------------------------------------------------------------ internals

    def _entry(self, value: object) -> _Entry:
        nbytes = sizeof(value)
        if nbytes < self.threshold or not _storable(value):
            return _Entry(value, nbytes=nbytes)
        client = self.client
        oid = PREFIX + os.urandom(20 - len(PREFIX))
        try:
            client.put(value, oid, node=self.node)
            view = client.get_object(oid, timeout=0)
        except (StoreFull, ObjectNotFound) as exc:  # no room, or evicted before we read it
            logger.warning(
                "plasma.dask: store full, keeping a %s result of %s in worker memory: %s",
                type(value).__name__,
                format_size(nbytes),
                exc,
            )
            return _Entry(value, nbytes=nbytes)
        except TypeError:  # put cannot pickle it (a lambda, a lock...): keep it in memory
            return _Entry(value, nbytes=nbytes)
        return _Entry(view, oid, True, self.node, nbytes)


def _delete(client: Client, oids: list[bytes]) -> None:
    """Delete ``oids``; those already gone (a reaper got there first) are no error."""
    with contextlib.suppress(ObjectNotFound):
        client.delete([ObjectID(o) for o in oids])
