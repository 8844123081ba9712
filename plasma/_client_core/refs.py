"""The client core's references (internal): what this client holds of the store's objects.

It owns the one reference (or directory pin) held per object while views of it live, the
views themselves (owners whose finalizers count them down, on any thread: the C read path's
``View``, else numpy arrays), the release-delay cache of references whose views all went
(oldest first, bounded in objects and bytes), revocations, copy-on-write private views, the
creator references that follow ``create`` buffers, and the locations a with_locations
subscription handed over. It decides when a reference goes: the id is queued on the outbox
(a Release, or an Unpin hint after clearing the pin), which batches it into the next frames.
It never sends, never decodes a reply and never maps or unmaps memory: views are made over
the segment maps' mappings, which it only reads.

Where the C read path is built, part of this has a C half (``fast``, a ``Getter`` of
``plasma/_native/fast_get.c``): a plain get (one id, its data) served from the directory in
one call, and the plain going of such a view (to the cache, or its pin let go), sharing
these dicts, this lock and the cache's counts. Its records are ``Pinned`` (see
:class:`Holding`); what is not plain it leaves to the code here.
"""

from __future__ import annotations

import mmap
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from plasma import protocol as p
from plasma._client_core.fast_path import Read
from plasma._client_core.outbox import Outbox
from plasma._client_core.segment_maps import SegmentMaps
from plasma.ids import ObjectID

__all__ = ["RELEASE_DELAY", "RELEASE_DELAY_BYTES", "RELEASE_DELAY_SHARE", "Refs", "Views"]

# Released objects whose reference a client keeps, so getting them again needs no round trip
# (as Arrow Plasma's release_delay); dropped on flush(), close() and when revoked by a delete.
# At most RELEASE_DELAY objects and RELEASE_DELAY_BYTES bytes (and 1/32 of the store), so
# that a client never keeps much memory from eviction; all of it goes back when the
# coordinator, short of memory, sends Reclaim.
RELEASE_DELAY = 64
RELEASE_DELAY_BYTES = 64 << 20
RELEASE_DELAY_SHARE = 32

# Ids whose creator reference went with its buffer, remembered (the newest ones) so that an
# explicit release of one afterwards is not a second release.
MAX_AUTO_RELEASED = 1 << 16

Views = tuple[memoryview, memoryview]  # (data, metadata)


def _size(loc: p.ObjectLocation) -> int:
    return loc.data_size + loc.metadata_size


class Holding(Protocol):
    """A reference held: a :class:`_Held`, or the C ``Pinned`` a ``Getter`` records."""

    @property
    def loc(self) -> p.ObjectLocation: ...
    @property
    def pin(self) -> int: ...
    @property
    def found(self) -> Read | None: ...

    views: int
    revoked: bool


@dataclass(slots=True)
class _Counts:
    """The release-delay cache's bounds and bytes (where no ``Getter`` keeps them)."""

    release_delay: int
    cache_limit: int = RELEASE_DELAY_BYTES
    cache_bytes: int = 0


@dataclass(slots=True)
class _Held:
    """An object this client holds one reference to: a coordinator reference, or a pin
    (``pin`` >= 0, its pin-table entry; ``found`` the directory read it was taken on)."""

    loc: p.ObjectLocation
    views: int = 1
    revoked: bool = False
    pin: int = -1
    found: Read | None = None


@dataclass(slots=True)
class _Creation:
    """An object this client made with ``create``, whose creator reference it still holds:
    released once the object is sealed and no view of its buffer is left."""

    buffer_alive: bool = True
    sealed: bool = False


class _Count:
    """An int attribute of :class:`Refs` kept in its ``_counts`` (its ``Getter`` where there
    is one, so that the C half reads and updates the same)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, refs: Any, owner: type | None = None) -> int:
        return int(getattr(refs._counts, self.name))

    def __set__(self, refs: Any, value: int) -> None:
        setattr(refs._counts, self.name, value)


def _keep_until_called(*kept: object) -> None:
    """A finalizer that does nothing: its arguments live as long as what it watches."""


class Refs:
    """The references this client holds, and when each goes. ``lock`` is the client core's
    (finalizers may run on any thread)."""

    def __init__(
        self, lock: threading.RLock, outbox: Outbox, maps: SegmentMaps, release_delay: int
    ) -> None:
        self._lock = lock
        self._outbox = outbox
        self._maps = maps
        # the C read path makes views in C (else numpy arrays own them)
        path = maps.read_path
        self._c_views = path.views if path is not None else None
        # objects we hold one reference to: with live views (held) or recently released
        # (cache, oldest first, at most release_delay; revoked when someone deletes them)
        self.held: dict[bytes, Holding] = {}
        self.cache: dict[bytes, Holding] = {}
        # the C half (None without the C read path), which keeps the cache's counts then
        self.fast: Any = None
        if path is not None and path.getter is not None:
            self.fast = path.getter(
                maps.segments,
                self.held,
                self.cache,
                lock,
                self._drop_view,
                self._evict_oldest,
                outbox.unpins.append,
                ObjectID,
            )
        self._counts: Any = self.fast if self.fast is not None else _Counts(release_delay)
        self.release_delay = release_delay
        self.cache_limit = RELEASE_DELAY_BYTES  # lowered for small stores (see connected)
        # references a with_locations subscription handed over: id -> their locations
        self.prefetched: dict[bytes, list[p.ObjectLocation]] = {}
        # the arrays behind live views: id of a weak reference -> (it, the object's id)
        self._owners: dict[int, tuple[weakref.ref[np.ndarray], bytes]] = {}
        # objects created here whose creator reference is still held, the arrays behind
        # their create buffers, and the ids whose creator reference went with its buffer
        self._creations: dict[bytes, _Creation] = {}
        self._create_owners: dict[int, tuple[weakref.ref[np.ndarray], bytes, _Creation]] = {}
        self._auto_released: dict[bytes, None] = {}
        # set in a forked child: the views it inherited are the parent's, never let go here
        self.forked = False

    # the cache's bounds and bytes, kept where the C half sees them too
    release_delay = _Count()
    cache_limit = _Count()  # (lowered for small stores, see ``connected``)
    cache_bytes = _Count()

    def holds(self, oid: bytes) -> bool:
        """Whether a reference to ``oid`` is held (in use or cached)."""
        return oid in self.held or oid in self.cache

    # ---------------------------------------------------------------- views

    def readable(self, oid: bytes, loc: p.ObjectLocation) -> Views:
        """Read-only (data, metadata) views of an object for which the coordinator gave us a
        reference. While views of it are alive the client holds exactly one reference: a
        second reference (from a concurrent get) is handed back at once.
        """
        with self._lock:
            held = self.held.get(oid)
            if held is None:
                self.held[oid] = _Held(loc)
            else:
                held.views += 1
                self._outbox.releases.append(oid)
            return self._views(oid, loc)

    def pinned(self, oid: bytes, found: Read, pin: int) -> Views:
        """Views of ``oid``, held by the pin-table entry ``pin`` taken on the directory read
        ``found``. The caller holds the lock and knows ``oid`` is not held already."""
        self.held[oid] = _Held(found.location, pin=pin, found=found)
        return self._views(oid, found.location)

    def reuse(self, oid: bytes) -> Views | None:
        """Views of an object this client holds (in use or recently released and cached),
        with no round trip; else None."""
        with self._lock:
            held = self.held.get(oid)
            if held is None:
                held = self.cache.pop(oid, None)
                if held is None:
                    return None
                self.cache_bytes -= _size(held.loc)
                self.held[oid] = held
            elif held.revoked:
                return None
            held.views += 1
            return self._views(oid, held.loc)

    def _views(self, oid: bytes, loc: p.ObjectLocation) -> Views:
        total = loc.data_size + loc.metadata_size
        segment = self._maps.segments[loc.segment]
        if self._c_views is not None:  # one C object owns the bytes, calls back when it goes
            got: Views = self._c_views(
                segment, loc.offset, loc.data_size, loc.metadata_size, self._drop_view, oid
            )
            return got
        owner = np.frombuffer(segment, np.uint8, count=max(total, 1), offset=loc.offset)
        owner.flags.writeable = False
        # when ``owner`` dies, the weak reference calls back (on whatever thread collects it)
        ref = weakref.ref(owner, self._owner_died)
        self._owners[id(ref)] = (ref, oid)
        view = owner.data  # a memoryview that keeps ``owner`` alive
        return view[: loc.data_size], view[loc.data_size : total]

    def private_view(self, oid: bytes, data: memoryview) -> memoryview:
        """A writable copy-on-write view of the data of object ``oid``, of which ``data`` is
        the read-only view a get returned: a private mapping (MAP_PRIVATE, PROT_READ |
        PROT_WRITE) of the pages covering it, from the segment's descriptor (allowed on a
        read-only one too). Writes go to pages of this process only: the store's bytes never
        change. Pages not written yet are the segment's, so the object must not go: the view
        keeps ``data`` (and with it this client's reference) alive until it dies. Where no
        private mapping can be made (no descriptor, hugepages short), a copy."""
        size = len(data)
        with self._lock:
            held = self.held.get(oid)
            loc = held.loc if held is not None else None
            kept = self._maps.segment_fds.get(loc.segment) if loc is not None else None
            if loc is None or kept is None:
                return memoryview(bytearray(data))
            fd, page = kept
            start = loc.offset - loc.offset % page
            try:
                mm = mmap.mmap(
                    fd,
                    loc.offset - start + max(size, 1),
                    mmap.MAP_PRIVATE,
                    mmap.PROT_READ | mmap.PROT_WRITE,
                    offset=start,
                )
            except OSError:
                return memoryview(bytearray(data))
        owner = np.frombuffer(mm, np.uint8, count=max(size, 1), offset=loc.offset - start)
        weakref.finalize(owner, _keep_until_called, data)
        return owner.data[:size]

    def _owner_died(self, ref: weakref.ref[np.ndarray]) -> None:
        entry = self._owners.pop(id(ref), None)
        if entry is not None:
            self._drop_view(entry[1])

    def _drop_view(self, oid: bytes) -> None:
        """Finalizer of a view owner (any thread, any time): when the last view of an object
        goes, keep its reference in the release-delay cache (releasing the oldest ones beyond
        ``release_delay`` objects or ``cache_limit`` bytes) or release it."""
        if self.forked:
            return  # a forked child's copies of the parent's views: not this process's
        with self._lock:
            held = self.held.get(oid)
            if held is None:
                return
            held.views -= 1
            if held.views:
                return
            del self.held[oid]
            if held.revoked or not self.release_delay:
                self._let_go(oid, held)
                return
            self.cache[oid] = held
            self.cache_bytes += _size(held.loc)
            while len(self.cache) > self.release_delay or self.cache_bytes > self.cache_limit:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        """Let the oldest cached reference go (the lock held)."""
        oldest = next(iter(self.cache))
        old = self.cache.pop(oldest)
        self.cache_bytes -= _size(old.loc)
        self._let_go(oldest, old)

    # ---------------------------------------------------------------- letting go

    def _let_go(self, oid: bytes, held: Holding) -> None:
        """Give up the reference ``held`` stands for: clear its pin (telling the coordinator
        when the object is dying, so its delete finishes now), or release it."""
        if held.pin < 0:
            self._outbox.releases.append(oid)
            return
        pins, reader = self._maps.pins, self._maps.reader
        if pins is None:  # forked child: the pin table is the parent's
            return
        pins.unpin(held.pin)
        if held.found is not None and reader is not None and reader.dying(held.found):
            self._outbox.unpins.append(oid)

    def revoke(self, ids: list[bytes]) -> None:
        """The coordinator waits for our references to these to delete them."""
        with self._lock:
            for oid in ids:
                held = self.cache.pop(oid, None)
                if held is not None:
                    self.cache_bytes -= _size(held.loc)
                    self._let_go(oid, held)
                elif oid in self.held:
                    self.held[oid].revoked = True

    def drop_cache(self) -> None:
        """Release every cached (unused) reference with the next message."""
        with self._lock:
            for oid, held in self.cache.items():
                self._let_go(oid, held)
            self.cache.clear()
            self.cache_bytes = 0

    # ---------------------------------------------------------------- prefetched

    def prefetch(self, oid: bytes, loc: p.ObjectLocation) -> None:
        """A subscription handed over a reference to ``oid`` at ``loc``."""
        self.prefetched.setdefault(oid, []).append(loc)

    def take_prefetched(self, ids: list[bytes]) -> list[p.ObjectLocation | str] | None:
        """Locations handed over by a with_locations subscription (a reference each), when
        there is one for every id: no round trip needed."""
        prefetched = self.prefetched
        if not prefetched or any(not prefetched.get(oid) for oid in ids):
            return None
        locations: list[p.ObjectLocation | str] = []
        for oid in ids:
            locations.append(prefetched[oid].pop())
            if not prefetched[oid]:
                del prefetched[oid]
        return locations

    # ---------------------------------------------------------------- creator references

    def create_buffer(self, oid: bytes, loc: p.ObjectLocation) -> memoryview:
        """The writable buffer ``create`` returns: the creator reference follows it, as a
        reader's follows its views. Once the object is sealed and no view of the buffer is
        left, the reference is released (see :meth:`sealed` and :meth:`release`)."""
        mm = self._maps.segments[loc.segment]
        owner = np.frombuffer(mm, np.uint8, count=max(loc.data_size, 1), offset=loc.offset)
        creation = _Creation()
        ref = weakref.ref(owner, self._create_buffer_died)
        with self._lock:
            self._creations[oid] = creation
            self._auto_released.pop(oid, None)
            self._create_owners[id(ref)] = (ref, oid, creation)
        return owner.data[: loc.data_size]

    def _create_buffer_died(self, ref: weakref.ref[np.ndarray]) -> None:
        """Finalizer of a create buffer (any thread, any time)."""
        entry = self._create_owners.pop(id(ref), None)
        if entry is None or self.forked:
            return
        _, oid, creation = entry
        with self._lock:
            creation.buffer_alive = False
            if creation.sealed and self._creations.get(oid) is creation:
                self._release_creator(oid)

    def sealed(self, oid: bytes) -> None:
        """``oid`` was sealed (its Seal is sent): its creator reference goes now if no view
        of its create buffer is left, else when the last one dies."""
        with self._lock:
            creation = self._creations.get(oid)
            if creation is None or creation.sealed:
                return
            creation.sealed = True
            if not creation.buffer_alive:
                self._release_creator(oid)

    def _release_creator(self, oid: bytes) -> None:
        """Release the creator reference of ``oid`` with the next frames (after its Seal)."""
        del self._creations[oid]
        self._outbox.releases.append(oid)
        released = self._auto_released
        released[oid] = None
        while len(released) > MAX_AUTO_RELEASED:
            del released[next(iter(released))]

    def holds_creator_reference(self, oid: bytes) -> bool:
        """True while this client holds the creator reference of a sealed object it made
        with ``create`` (its buffer still alive): what an explicit ``release`` drops."""
        creation = self._creations.get(oid)
        return creation is not None and creation.sealed

    def aborted(self, oid: bytes) -> None:
        """``oid`` was aborted: the object and its creator reference are gone."""
        with self._lock:
            self._creations.pop(oid, None)

    def release(self, oid: bytes) -> bool:
        """An explicit release of ``oid``: whether its Release is to be sent (not when the
        creator reference it would drop went with its buffer already). A reference a
        subscription handed over is released first."""
        prefetched = self.prefetched.get(oid)
        if prefetched:
            prefetched.pop()
            if not prefetched:
                del self.prefetched[oid]
            return True
        with self._lock:
            creation = self._creations.get(oid)
            if creation is not None and creation.sealed:
                del self._creations[oid]  # released now: not again when the buffer goes
            elif creation is None and oid in self._auto_released:
                del self._auto_released[oid]
                return False  # released already, with its buffer
        return True
