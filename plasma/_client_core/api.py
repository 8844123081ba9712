"""The clients' public methods, declared and documented once (internal).

:class:`ClientAPI` owns the signature and docstring of every method the blocking
:class:`plasma.Client` and the trio :class:`plasma.aio.AsyncClient` share: the first
implements it as written, the second as coroutines with the same parameters.
:func:`documented` gives each client's methods their docstrings from here when the class
is made, so a method's contract is written once. This module never implements anything;
``tests/test_client_api.py`` checks that both clients have every method with these
parameters.
"""

from __future__ import annotations

import builtins
import inspect
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, TypeVar

from plasma._client_core.core import ManyItem, Node, ObjectRef
from plasma.ids import ObjectID

__all__ = ["ClientAPI", "documented", "method_names"]


class ClientAPI(Protocol):
    """What both clients do (the trio client's methods are coroutines)."""

    def create(
        self,
        object_id: ObjectRef,
        size: int,
        metadata: bytes = b"",
        *,
        node: Node = None,
        timeout: float | None = 0.0,
    ) -> memoryview:
        """Create an object of ``size`` bytes; returns its writable buffer. Seal it when filled.

        The creator's reference follows the buffer: once the object is sealed and no view of
        the buffer (a slice, a numpy array on it) is left, it is released, as a reader's
        reference is with its views; :meth:`release` drops it earlier.

        ``timeout`` is how long to wait for space when the store is full (None: forever).
        ``node``: a NUMA node, ``"interleave"`` (its pages spread over every node, for an
        object every node reads) or a list of nodes to interleave across; None: the
        client's default node.
        """
        ...

    def seal(self, object_id: ObjectRef, *, wait: bool = False) -> None:
        """Make the object immutable and visible; the creator keeps its reference while a
        view of its create buffer is alive (see :meth:`create`). Sent without waiting
        (errors surface on a later call); ``wait=True`` returns once the coordinator sealed
        it, raising its error and any earlier one here."""
        ...

    def abort(self, object_id: ObjectRef) -> None:
        """Drop an unsealed object this client created."""
        ...

    def release(self, object_id: ObjectRef) -> None:
        """Drop one reference this client holds (views already handed out stay mapped).

        The creator reference of a sealed object whose create buffer is still alive goes now
        (not again when the buffer dies); one that already went with its buffer is not
        released a second time.
        """
        ...

    def create_and_seal(
        self,
        object_id: ObjectRef,
        data: bytes | bytearray | memoryview,
        metadata: bytes = b"",
        *,
        node: int | None = None,
    ) -> None:
        """Create, fill and seal in one go; small objects need no round trip."""
        ...

    def create_and_seal_many(
        self,
        items: Iterable[ManyItem],
        *,
        node: int | None = None,
    ) -> None:
        """Create, fill and seal many objects with at most one round trip (plus arena refills).

        Each item is ``(id, data)`` or ``(id, data, metadata)``; a malformed one raises
        ``BadRequest`` naming its index, and nothing is stored.
        Objects up to 1 MiB are written into this client's arena and registered by
        ``SealArena`` messages sent without waiting; an error (say, an id that exists)
        surfaces on the next reply or :meth:`flush`. When a refill of the arena fails
        (StoreFull), the objects before it are stored and the rest are not.
        """
        ...

    def get(
        self,
        object_ids: Any,
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
        writable: bool = False,
    ) -> Any:
        """Zero-copy read-only buffers of sealed objects, waiting up to ``timeout`` seconds.

        Returns one buffer (or ``(data, metadata)`` pair) per id; a single id gives a single
        result. Raises ``ObjectNotSealed``, ``ObjectNotFound`` or ``PlasmaTimeout`` when an
        object is not available; the references already taken are then released.

        With ``writable`` each data buffer is a copy-on-write view (a private mapping of the
        object's pages): the caller may modify it, pages are copied as they are first written,
        and the store's bytes never change. Metadata stays read-only.
        """
        ...

    def get_buffers(
        self,
        object_ids: Iterable[ObjectRef],
        timeout: float | None = None,
        *,
        with_metadata: bool = False,
    ) -> list[Any]:
        """Like :meth:`get` but returns None for objects that are not available."""
        ...

    def get_metadata(
        self, object_ids: Sequence[ObjectRef], timeout: float | None = None
    ) -> list[bytes]:
        """The metadata of each object (waiting up to ``timeout`` like :meth:`get`)."""
        ...

    def contains(self, object_id: ObjectRef) -> bool:
        """True when the object exists and is sealed."""
        ...

    def delete(self, object_ids: ObjectRef | Iterable[ObjectRef]) -> list[ObjectID]:
        """Delete objects (deferred while referenced); returns the ids whose delete was deferred.

        Raises ``ObjectNotFound`` naming ids that are absent or unsealed, after deleting the rest.
        """
        ...

    def list(self) -> dict[ObjectID, dict[str, Any]]:
        """Every object: data_size, metadata_size, node, state, ref_count, create_time, owner."""
        ...

    def replicate(self, object_id: ObjectRef, nodes: Iterable[int]) -> builtins.list[int]:
        """Make read-only copies of a sealed object on ``nodes``: a reader on one of them
        gets its node's copy (through the directory too). Returns the nodes with a copy
        (the object's own included). The copies count against their nodes' budgets
        (StoreFull, and none made, when one has no room) and go with the object."""
        ...

    def migrate(self, object_id: ObjectRef, node: int) -> builtins.list[int]:
        """Move a sealed object's pages to ``node``; readers keep their views (the same
        addresses, the same bytes). Returns the nodes its pages are on. StoreFull when
        ``node`` has no room for it."""
        ...

    def evict(self, nbytes: int) -> int:
        """Evict sealed unreferenced objects in CLOCK order (those unreferenced longest and
        not read since first) until ``nbytes`` are chosen; returns the bytes chosen."""
        ...

    def stats(self, placement: bool = False, top_objects: int = 10) -> dict[str, Any]:
        """Store, segments, clients (with the memory each holds), operations, errors, tasks
        with their latest perf sample, and ``holders``: the bytes held in all and the
        ``top_objects`` largest objects held, with their holders.

        With ``placement`` also where each segment's pages are (slower: it asks the kernel).
        """
        ...

    def register_task(
        self, task_id: str, pid: int, node: int | None = None, run_id: str = ""
    ) -> None:
        """Have the coordinator sample process ``pid`` as ``task_id`` (placed on ``node``)."""
        ...

    def task_done(self, task_id: str, run_id: str = "") -> None:
        """Tell the coordinator ``task_id`` ended: it takes a final sample and stops sampling it."""
        ...

    def submit_sample(self, task_id: str, sample: Any, run_id: str = "") -> None:
        """Record a sample taken by the caller (a ``plasma.perf.PerfSample`` or its dict)."""
        ...

    def flush(self) -> None:
        """Release cached references, wait until the coordinator handled everything sent so
        far, and raise its deferred errors."""
        ...

    def subscribe(self, *, with_locations: bool = False) -> object:
        """Start receiving seal and delete notifications.

        With ``with_locations`` each seal notification also hands this client a reference to
        the object, so a following :meth:`get` of it needs no round trip (release it if unused).
        """
        ...

    def run_call(self, run_id: str, payload: Any) -> Any:
        """Ask the owner of ``run_id`` (a DAG runner) something and wait for its answer."""
        ...

    def put(
        self,
        value: Any,
        object_id: ObjectRef | None = None,
        *,
        node: Node = None,
        replicas: Iterable[int] = (),
    ) -> ObjectID:
        """Store a numpy array, Arrow object or bytes; returns its id. ``node`` as for
        :meth:`create`; ``replicas``: nodes to make read-only copies on (:meth:`replicate`)."""
        ...

    def get_object(
        self, object_id: ObjectRef, timeout: float | None = None, *, writable: bool = False
    ) -> Any:
        """The value stored by :meth:`put`, as a zero-copy read-only view; with ``writable``
        a copy-on-write view (numpy arrays, raw buffers and pickled arrays the caller may
        modify, the store's bytes unchanged; see :meth:`get`)."""


_Class = TypeVar("_Class", bound=type)


def method_names() -> builtins.list[str]:
    """The names of :class:`ClientAPI`'s methods, in the order they are declared."""
    return [
        name
        for name, value in vars(ClientAPI).items()
        if inspect.isfunction(value) and not name.startswith("_")
    ]


def documented(cls: _Class) -> _Class:
    """Class decorator: each of :class:`ClientAPI`'s methods of ``cls`` gets its docstring
    from there (TypeError, when the class is made, if one is missing)."""
    for name in method_names():
        method = vars(cls).get(name)
        if method is None:
            raise TypeError(f"{cls.__name__} lacks ClientAPI.{name}")
        method.__doc__ = getattr(ClientAPI, name).__doc__
    return cls
