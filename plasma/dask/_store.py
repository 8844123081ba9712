"""The worker data store: task results in worker memory, shared through the host's
coordinator on demand (internal).

Owns the mapping ``Worker.data`` (``{key: value}``) and the objects behind it; never talks to
the scheduler or to other workers (the worker plugin wires it in, :mod:`plasma.dask._plugins`).

A result lives where plain Dask keeps it: in ``memory``, the worker's own mapping (a dict, or
Dask's ``SpillBuffer``, whose spilling to disk keeps working: :class:`PlasmaData` passes
Dask's eviction calls through). It moves into the store only when a worker of the same
coordinator asks for it (see :class:`Serving`): then, if it is at least ``threshold`` bytes
(``dask.sizeof``) and ``put`` can round-trip it, it is written into an object once with
:meth:`plasma.Client.put` (numpy arrays and Arrow data in their own layouts, anything else
pickled with protocol 5, its buffers copied straight into the object), its private copy is
dropped, and the worker keeps the zero-copy read-only view :meth:`plasma.Client.get_object`
returns; this and every later same-host request get the object's id. A result that no
same-host peer reads is never copied. When the store cannot take it (full, or its
coordinator gone) the result stays in memory and is sent as bytes, with a log line.

No result goes into the store at once. None has to outlive its worker (Dask recomputes the
results of a dead worker, and :mod:`plasma.dask._reaper` deletes its objects). And a move
never needs more memory than plain Dask: it holds a result twice only until the object is
written (then the private copy goes), where a plain same-host transfer holds it twice for
good (the receiver's copy); a result that does not fit in the store's free room is sent as
bytes, as without the store. (Writing every large result into the store when it was made,
as plasma.dask did before, cost a copy per result whether or not a peer read it: dataframe
graphs, whose results mostly stay on their worker, ran 0.64-0.74x as fast as plain Dask.)

Three kinds of entries: in memory; *owned* (an object this store created: deleting the key
deletes the object); *borrowed* (an object another worker of the same coordinator created,
read by id after a transfer: deleting the key only drops the view, the owner deletes it).

Same-host transfers: while the worker answers a ``get_data`` request of a worker connected to
the same coordinator, reading a key returns a :class:`Handle` instead of the value: a few
bytes that pickle as "object X of coordinator T". The receiving worker unpickles it into a
:class:`Shared` (the object read from its own connection, zero copy) and stores it as a
borrowed entry. An object lent that way is not deleted until the request that carried it
ends (the receiver has read it by then).

Object ids are :data:`PREFIX` + 15 random bytes, so :mod:`plasma.dask._reaper` can tell the
objects of dead workers from anyone else's.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import logging
import os
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dask.sizeof import sizeof

from plasma.client import Client, connect
from plasma.dask import _sizeof  # noqa: F401  (tensors measured by their bytes)
from plasma.dask._placement import Location
from plasma.errors import Disconnected, ObjectNotFound, PlasmaError
from plasma.ids import ObjectID
from plasma.units import format_size

logger = logging.getLogger("plasma.dask")

PREFIX = b"dask:"  # the first bytes of every object id this module creates
DEFAULT_THRESHOLD = 1 << 20  # values of at least this many bytes are shared by id
CLIENT_NAME = "plasma.dask"  # the client name is "plasma.dask WORKER_ADDRESS"
SPILL_API = ("fast", "slow", "evict", "spilled_total")  # Dask's spilling, passed through


def coordinator_token(socket_path: str) -> str:
    """Names one coordinator among all hosts: boot id + the socket's device, inode and
    change time.

    Two coordinators on one host have different sockets; two hosts have different boot ids.
    A coordinator started after another stopped may get its socket's inode number again: the
    change time (ns) of its socket file tells them apart, as a rule (see PlasmaData.client).
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:  # not Linux-like enough: the host name still tells hosts apart
        boot = os.uname().nodename
    st = os.stat(socket_path)
    return f"{boot}:{st.st_dev}:{st.st_ino}:{st.st_ctime_ns}"


@dataclass(slots=True)
class Serving:
    """A ``get_data`` request being answered: whether its peer shares our coordinator, the
    sizes of the keys it asks for that the worker knows already (``dask.sizeof`` of a
    DataFrame takes ~0.5 ms: not twice), and the objects lent to it by id (see
    :func:`serving`)."""

    same_host: bool
    sizes: Mapping[Any, int] = field(default_factory=dict)
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
class _Object:
    """A result held in the store: the view of it, and the object behind it."""

    value: object
    oid: bytes
    owned: bool
    node: int | None
    nbytes: int


class PlasmaData(MutableMapping[Any, object]):
    """``Worker.data`` sharing results of at least ``threshold`` bytes with the workers of
    the coordinator listening on ``socket_path`` by id (see the module docstring).

    ``memory``: where results live until a same-host peer asks for them (default: a dict;
    the plugin passes the worker's own mapping, and when that is Dask's ``SpillBuffer`` its
    spilling attributes ``fast``, ``slow``, ``evict`` and ``spilled_total`` are this
    store's). Results move into the store only while a request marked by :data:`serving`
    reads them, which is what :class:`~plasma.dask.PlasmaPlugin` does for ``get_data``:
    alone, this mapping keeps every result in ``memory``.

    Connects on first use, as ``"plasma.dask NAME"`` (the plugin names it after its worker,
    which is how same-host peers recognise each other). :meth:`close` deletes the objects it
    created and disconnects. ``moves`` and ``moved_bytes`` count the results moved into the
    store so far.
    """

    def __init__(
        self,
        socket_path: str,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        name: str = "",
        memory: MutableMapping[Any, object] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.threshold = threshold
        self.name = name
        self.memory: MutableMapping[Any, object] = {} if memory is None else memory
        self._client: Client | None = None
        self._objects: dict[Any, _Object] = {}
        self._lent: collections.Counter[bytes] = collections.Counter()
        self._doomed: set[bytes] = set()  # deleted keys whose object is lent right now
        self.moves = self.moved_bytes = 0

    def __getattr__(self, name: str) -> Any:
        if name in SPILL_API:  # Dask looks these up with hasattr: absent unless memory has them
            return getattr(self.memory, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

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
            # (the latest path: a token of a coordinator gone, its socket's inode and change
            # time met again, names the one this process connected to since)
            _sockets[self.token] = self.socket_path
            self._client = client
        return self._client

    @property
    def location(self) -> Location:
        """Where this store's objects live: (coordinator token, NUMA node)."""
        _ = self.client  # connecting sets token and node
        return (self.token, self.node)

    def close(self) -> None:
        """Delete every object this store created and disconnect (``memory`` stays)."""
        client, self._client = self._client, None
        if client is None:
            return
        owned = [o.oid for o in self._objects.values() if o.owned]
        self._objects.clear()
        try:
            with contextlib.suppress(Disconnected):  # the coordinator is gone, objects too
                if owned or self._doomed:
                    _delete(client, [*owned, *self._doomed])
        finally:
            self._doomed.clear()
            client.close()

    # ------------------------------------------------------------ the mapping

    def __getitem__(self, key: Any) -> object:
        obj = self._objects.get(key)
        request = serving.get()
        if obj is None:
            value = self.memory[key]
            if request is None or not request.same_host:
                return value
            obj = self._move(key, value, request.sizes.get(key))
            if obj is None:
                return value
        elif request is None or not request.same_host:
            return obj.value
        elif not obj.owned and not self.client.contains(ObjectID(obj.oid)):
            return obj.value  # its owner deleted it: send the bytes of our view
        self._lent[obj.oid] += 1
        request.lent.append(obj.oid)
        return Handle(self.token, obj.oid, obj.node, obj.nbytes)

    def __setitem__(self, key: Any, value: object) -> None:
        if key in self:
            del self[key]
        if not isinstance(value, Shared):
            self.memory[key] = value
        elif value.token == self.location[0]:
            self._objects[key] = _Object(value.value, value.oid, False, value.node, value.nbytes)
        else:  # read from another coordinator (this process uses two): ours is not that one
            self.memory[key] = value.value

    def __delitem__(self, key: Any) -> None:
        obj = self._objects.pop(key, None)
        if obj is None:
            del self.memory[key]
        elif not obj.owned:  # borrowed: only our view goes (released at the next flush)
            pass
        elif self._lent[obj.oid]:
            self._doomed.add(obj.oid)
        else:
            _delete(self.client, [obj.oid])

    def __iter__(self) -> Iterator[Any]:
        yield from self.memory
        yield from self._objects

    def __len__(self) -> int:
        return len(self.memory) + len(self._objects)

    def __contains__(self, key: object) -> bool:
        return key in self._objects or key in self.memory

    # ------------------------------------------------------------ for the plugin

    def flush(self) -> None:
        """Send the releases of the views dropped since the last call (ours and this
        process's reader's): a client sends them with its next message, and an idle one
        would keep deleted objects' memory held until then."""
        for client in (self._client, _readers.get(self.socket_path)):
            if client is not None:
                client.flush()

    @property
    def holds_objects(self) -> bool:
        """Whether any key is held in the store (owned or borrowed) right now."""
        return bool(self._objects)

    def object_of(self, key: Any) -> tuple[bytes, int | None, int] | None:
        """The object holding ``key`` (id, node, bytes), or None when it is in memory."""
        obj = self._objects.get(key)
        if obj is None:
            return None
        return obj.oid, obj.node, obj.nbytes

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

    def _move(self, key: Any, value: object, nbytes: int | None = None) -> _Object | None:
        """Write the in-memory result ``key`` into an object and keep its view instead; None
        (the result stays in memory and is sent as bytes) when it is too small, cannot be
        stored, or the store cannot take it."""
        if nbytes is None:
            nbytes = sizeof(value)
        if nbytes < self.threshold or not _storable(value):
            return None
        oid = PREFIX + os.urandom(20 - len(PREFIX))
        try:
            client = self.client
            client.put(value, oid, node=self.node)
            view = client.get_object(oid, timeout=0)
        except TypeError:  # put cannot pickle it (a lambda, a lock...): send it as Dask does
            return None
        except PlasmaError as exc:  # no room, evicted before we read it, no coordinator...
            logger.warning(
                "plasma.dask: cannot move a %s result of %s into the store, sending its "
                "bytes: %s: %s",
                type(value).__name__,
                format_size(nbytes),
                type(exc).__name__,
                exc,
            )
            return None
        obj = self._objects[key] = _Object(view, oid, True, self.node, nbytes)
        del self.memory[key]
        self.moves += 1
        self.moved_bytes += nbytes
        return obj


def _delete(client: Client, oids: list[bytes]) -> None:
    """Delete ``oids``; those already gone (a reaper got there first) are no error."""
    with contextlib.suppress(ObjectNotFound):
        client.delete([ObjectID(o) for o in oids])
