"""The C half of a client's references (``Getter`` of ``plasma/_native/fast_get.c``) with
the Python half (:class:`~plasma._client_core.refs.Refs`), no coordinator: a directory and a
pin table in plain buffers, a segment in an anonymous map. A plain get is served in one C
call; its view's going caches the reference or gives its pin back; what is not plain goes
to the Python half. (With clients and a coordinator, on both read paths:
test_reads_without_requests.py, test_directory_stress.py.)"""

from __future__ import annotations

import gc
import mmap
import os
import resource
import socket
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from plasma import protocol as p
from plasma._client_core.fast_path import NATIVE
from plasma._client_core.outbox import Outbox
from plasma._client_core.refs import Refs
from plasma._client_core.segment_maps import SegmentMaps
from plasma.directory import DYING, Directory, directory_size, pin_table_size
from plasma.ids import ObjectID
from plasma.records import ObjectLocation
from tests.conftest import wait_until
from tests.helpers import STRANGER_UID, in_forked_child, watchers

pytestmark = pytest.mark.skipif(NATIVE is None, reason="the native read path is not built")

A, B, C = b"a" * 20, b"b" * 20, b"c" * 20
SEGMENT = 1


class Parts:
    """A Refs with its C half over a directory of 16 slots and a pin table."""

    def __init__(self, release_delay: int = 2, pin_entries: int = 8, unpins: Any = None) -> None:
        assert NATIVE is not None and NATIVE.getter is not None
        self.lock = NATIVE.lock()
        self.outbox = Outbox(lambda msg: None)
        if unpins is not None:  # (where the Getter's Unpin hints go: unpins.append)
            self.outbox.unpins = unpins
        self.maps = SegmentMaps(self.lock)
        self.maps.read_path = NATIVE
        self.segment = mmap.mmap(-1, 1 << 16)
        self.maps.segments[SEGMENT] = self.segment
        self.refs = Refs(self.lock, self.outbox, self.maps, release_delay)
        self.fast: Any = self.refs.fast
        self.maps.fast = self.fast
        self.buf = bytearray(directory_size(16))
        self.directory = Directory(self.buf, 16)
        self.maps.use_tables(
            NATIVE.reader(self.buf, None), NATIVE.pins(bytearray(pin_table_size(pin_entries)))
        )
        self.slots: dict[bytes, int] = {}

    def seal(self, oid: bytes, offset: int, data: bytes, generation: int = 7) -> None:
        self.segment[offset : offset + len(data)] = data
        loc = ObjectLocation(SEGMENT, offset, len(data), 0, 0)
        self.slots[oid] = self.directory.insert(oid, generation, loc)

    @property
    def pinned(self) -> int:
        return int(self.maps.pins.count)


@pytest.fixture
def parts() -> Iterator[Parts]:
    made = Parts()
    yield made
    gc.collect()


def test_a_plain_get_pins_records_and_views_the_data_read_only(parts: Parts) -> None:
    parts.seal(A, 64, b"hello")
    view = parts.fast.get(ObjectID(A))
    assert bytes(view) == b"hello" and view.readonly and parts.pinned == 1
    held = parts.refs.held[A]
    assert held.views == 1 and held.pin >= 0 and not held.revoked
    assert held.loc == p.ObjectLocation(SEGMENT, 64, 5, 0, 0)
    assert held.found is not None and held.found.generation == 7
    with pytest.raises(TypeError):
        view[0] = 1
    with pytest.raises(BufferError):
        parts.segment.close()  # (the view holds the map)
    assert parts.fast.get(A) is None  # held already: the Python half reuses it
    again = parts.refs.reuse(A)
    assert again is not None and bytes(again[0]) == b"hello" and held.views == 2
    del view, again
    gc.collect()
    assert A not in parts.refs.held and list(parts.refs.cache) == [A]
    assert parts.refs.cache_bytes == 5 and parts.pinned == 1  # cached: the pin stays
    assert parts.fast.get(A) is None  # cached: the Python half reuses it


def test_nothing_is_served_or_pinned_for_what_the_directory_cannot_serve(parts: Parts) -> None:
    assert parts.fast.get(A) is None  # unknown
    parts.seal(B, 0, b"x")
    parts.maps.segments.pop(SEGMENT)
    assert parts.fast.get(B) is None  # its segment not mapped
    parts.maps.segments[SEGMENT] = parts.segment
    assert parts.fast.get(b"short") is None and parts.fast.get("b" * 20) is None
    assert parts.pinned == 0 and not parts.refs.held
    assert parts.fast.get(B) is not None  # (and then it is)


def test_the_oldest_cached_pin_goes_beyond_the_release_delay_and_a_dying_one_says_so() -> None:
    parts = Parts(release_delay=1)
    parts.seal(A, 0, b"a")
    parts.seal(B, 64, b"b")
    first = parts.fast.get(A)
    parts.directory.set_state(parts.slots[A], DYING)  # (a delete waits for its pins)
    del first
    assert list(parts.refs.cache) == [A] and parts.pinned == 1
    second = parts.fast.get(B)
    assert parts.pinned == 2
    del second
    assert list(parts.refs.cache) == [B] and parts.pinned == 1  # A's pin given back
    assert list(parts.outbox.unpins) == [A]  # it was dying: the coordinator is told
    assert parts.refs.cache_bytes == 1


class _PythonRecorder:
    """An ``append`` written in Python (no built-in one-argument method to call directly)."""

    def __init__(self) -> None:
        self.ids: list[bytes] = []

    def append(self, oid: bytes) -> None:
        self.ids.append(oid)


@pytest.mark.parametrize("unpins", [list, _PythonRecorder], ids=["built-in", "python"])
def test_a_dying_pin_let_go_says_so_through_any_append(unpins: Any) -> None:
    """The Getter calls a built-in one-argument append (deque's, list's) directly, anything
    else through a call: the hint is queued either way, once."""
    recorder = unpins()
    parts = Parts(release_delay=0, unpins=recorder)
    parts.seal(A, 0, b"a")
    view = parts.fast.get(A)
    parts.directory.set_state(parts.slots[A], DYING)
    del view
    assert parts.pinned == 0
    assert (recorder if isinstance(recorder, list) else recorder.ids) == [A]


def test_records_and_views_made_again_from_what_went_are_whole() -> None:
    """A get after another's record and view went (a spare of each is kept for the next get)
    gets a record and a view of its own object, none of what went kept: not revoked, one
    view, its pin and read, its bytes; and no buffer of the segment is left once the views
    are gone."""
    parts = Parts(release_delay=0)
    parts.seal(A, 0, b"aa", generation=7)
    parts.seal(B, 64, b"bbb", generation=9)
    view = parts.fast.get(A)
    parts.refs.held[A].revoked = True  # (let go with its view, not cached)
    del view
    assert parts.pinned == 0 and not parts.refs.held
    view = parts.fast.get(B)
    held = parts.refs.held[B]
    assert bytes(view) == b"bbb" and view.readonly
    assert held.views == 1 and not held.revoked and held.pin >= 0
    assert held.found is not None and held.found.generation == 9
    assert held.loc == p.ObjectLocation(SEGMENT, 64, 3, 0, 0)
    del view, held
    assert parts.pinned == 0 and not parts.refs.held
    parts.segment.close()  # (no export of it kept: it closes)


def test_the_cache_is_bounded_in_bytes_too(parts: Parts) -> None:
    parts.refs.cache_limit = 100
    parts.seal(A, 0, b"a" * 60)
    parts.seal(B, 64, b"b" * 60)
    for oid in (A, B):
        view = parts.fast.get(oid)
        del view
    assert list(parts.refs.cache) == [B] and parts.refs.cache_bytes == 60 and parts.pinned == 1
    assert not parts.outbox.unpins  # not dying: nothing to say


def test_without_a_release_delay_the_pin_goes_with_the_last_view() -> None:
    parts = Parts(release_delay=0)
    parts.seal(A, 0, b"a")
    view = parts.fast.get(A)
    assert parts.pinned == 1
    del view
    assert parts.pinned == 0 and not parts.refs.held and not parts.refs.cache


def test_a_revoked_reference_goes_when_its_view_does_not_to_the_cache(parts: Parts) -> None:
    parts.seal(A, 0, b"a")
    view = parts.fast.get(A)
    parts.refs.revoke([A])
    del view
    assert parts.pinned == 0 and not parts.refs.cache


def test_a_reference_of_the_python_half_in_the_cache_is_let_go_by_it() -> None:
    parts = Parts(release_delay=1)
    got = parts.refs.readable(C, p.ObjectLocation(SEGMENT, 128, 4, 0, 0))  # the coordinator's
    del got
    gc.collect()
    assert list(parts.refs.cache) == [C]
    parts.seal(A, 0, b"a")
    view = parts.fast.get(A)
    del view
    assert list(parts.refs.cache) == [A] and list(parts.outbox.releases) == [C]


def test_a_lock_held_by_another_thread_leaves_the_get_to_the_python_half(parts: Parts) -> None:
    parts.seal(A, 0, b"a")
    taken, done = threading.Event(), threading.Event()

    def hold() -> None:
        with parts.lock:
            taken.set()
            done.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait()
    try:
        assert parts.fast.get(A) is None and parts.pinned == 0
        assert not parts.lock.acquire(blocking=False)
    finally:
        done.set()
        holder.join()
    with parts.lock:  # this thread's own: it is in the middle of the Python half's work
        assert parts.fast.get(A) is None
    view = parts.fast.get(A)
    assert view is not None


def test_a_view_that_goes_while_another_thread_holds_the_lock_waits_for_it(
    parts: Parts,
) -> None:
    parts.seal(A, 0, b"a")
    view = parts.fast.get(A)
    release, dropped = threading.Event(), threading.Event()
    with parts.lock:

        def drop() -> None:
            nonlocal view
            del view
            dropped.set()

        dropper = threading.Thread(target=drop)
        dropper.start()
        assert not dropped.wait(0.2)  # (a check that it waits, not a synchronisation)
        assert A in parts.refs.held  # untouched while the lock is ours
        release.set()
    dropper.join()
    assert list(parts.refs.cache) == [A]


def test_a_forked_child_or_a_closed_client_lets_the_python_half_decide(parts: Parts) -> None:
    parts.seal(A, 0, b"a")
    parts.seal(B, 64, b"b")
    inherited = parts.fast.get(A)
    parts.refs.forked = True  # (what ClientCore.forked does)
    parts.maps.use_tables(None, None)
    assert parts.fast.get(B) is None
    del inherited
    assert A in parts.refs.held  # the parent's: never let go here


def test_a_hang_up_seen_by_the_watcher_leaves_the_get_to_the_python_half(parts: Parts) -> None:
    """A thread watches the socket; once the peer hangs up (unread bytes do not count) a get
    serves nothing and pins nothing; watch(-1) stops and joins the thread."""
    parts.seal(A, 0, b"a")
    ours, theirs = socket.socketpair()
    before = watchers()
    try:
        assert parts.fast.watch(ours.fileno()) is True
        started = watchers() - before
        assert parts.fast.fd == ours.fileno() and len(started) == 1
        theirs.sendall(b"a reply nobody read yet")
        view = parts.fast.get(A)
        assert view is not None and parts.fast.hung_up is False
        del view
        parts.refs.drop_cache()
        theirs.close()
        wait_until(lambda: parts.fast.hung_up, what="the watcher to see the hang-up")
        assert parts.fast.get(A) is None  # seen: the Python half looks, and serves nothing
        assert parts.pinned == 0
        assert parts.fast.watch(-1) is False
        assert parts.fast.hung_up is None and parts.fast.fd == -1
        assert not started & watchers()  # (it ended by itself, and was joined)
    finally:
        ours.close()


def test_the_watcher_never_keeps_the_socket_open(parts: Parts) -> None:
    """Closed while its watcher waits on it, the socket goes at once: the peer sees the
    close (the coordinator sees its client go). A thread in poll(2) on it would hold it."""
    ours, theirs = socket.socketpair()
    before = watchers()
    try:
        assert parts.fast.watch(ours.fileno())
        (started,) = watchers() - before
        wait_until(lambda: started in watchers(waiting=True), what="the watcher to wait")
        ours.close()  # (a client stops its watcher first: see ClientCore.unwatch)
        theirs.settimeout(30)
        assert theirs.recv(1) == b""
    finally:
        parts.fast.watch(-1)
        theirs.close()


def test_a_new_socket_stops_the_old_watcher_and_starts_afresh(parts: Parts) -> None:
    parts.seal(A, 0, b"a")
    pairs = [socket.socketpair() for _ in range(3)]
    try:
        assert parts.fast.watch(pairs[0][0].fileno())
        pairs[0][1].close()
        wait_until(lambda: parts.fast.hung_up, what="the watcher to see the hang-up")
        before = watchers()  # (the first one ended by itself)
        assert parts.fast.watch(pairs[1][0].fileno())
        assert parts.fast.hung_up is False  # the new socket's watcher's word
        second = watchers() - before
        view = parts.fast.get(A)
        assert view is not None
        del view
        assert parts.fast.watch(pairs[2][0].fileno())
        third = watchers() - before - second
        assert len(second) == len(third) == 1 and not second & watchers()  # stopped first
        pairs[2][1].close()
        wait_until(lambda: parts.fast.hung_up, what="the watcher to see the hang-up")
    finally:
        parts.fast.watch(-1)
        for pair in pairs:
            for sock in pair:
                sock.close()


def test_a_forked_child_leaves_the_parents_watcher_alone(parts: Parts) -> None:
    """A forked child has no watcher thread: watch(-1) there neither joins it (forever) nor
    wakes the parent's (which would stop watching)."""
    ours, theirs = socket.socketpair()
    try:
        assert parts.fast.watch(ours.fileno())
        assert in_forked_child(lambda: parts.fast.watch(-1) is False) == "ok"
        assert parts.fast.hung_up is False
        theirs.close()
        wait_until(lambda: parts.fast.hung_up, what="the parent's watcher to see the hang-up")
    finally:
        parts.fast.watch(-1)
        ours.close()


def test_where_no_thread_can_be_started_a_get_polls_the_socket(parts: Parts) -> None:
    """No thread (EAGAIN: RLIMIT_NPROC reached, as a user without privileges): the socket
    is polled by a get instead, at most every interval_ns."""
    parts.seal(A, 0, b"a")

    def without_threads() -> bool:
        if os.getuid() == 0:
            os.setuid(STRANGER_UID)  # (root may start threads beyond the limit)
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        ours, theirs = socket.socketpair()
        parts.fast.interval_ns = 10**12  # (a look now, then not for a long while)
        assert parts.fast.watch(ours.fileno()) is False and parts.fast.hung_up is None
        view = parts.fast.get(A)
        assert view is not None
        del view
        parts.refs.drop_cache()
        theirs.close()
        assert parts.fast.get(A) is not None  # not looked again yet (one read of the clock)
        parts.refs.drop_cache()
        assert parts.fast.watch(ours.fileno()) is False  # (a new socket: looked at next get)
        assert parts.fast.get(A) is None  # looked: hung up
        return parts.pinned == 0

    assert in_forked_child(without_threads) == "ok"


def test_bad_arguments_are_errors() -> None:
    assert NATIVE is not None
    parts = Parts()
    args = (parts.maps.segments, {}, {}, parts.lock, print, print, print, ObjectID)
    NATIVE.getter(*args)
    with pytest.raises(TypeError):
        NATIVE.getter(*args[:3], threading.RLock(), *args[4:])  # the C lock only
    with pytest.raises(TypeError):
        NATIVE.getter(*args[:7], bytes)  # no slot to read an id from
    with pytest.raises(TypeError):
        parts.fast.reader = object()
    with pytest.raises(TypeError):
        parts.fast.node = "0"


def test_the_c_lock_is_a_reentrant_lock() -> None:
    assert NATIVE is not None
    lock = NATIVE.lock()
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire() and lock.acquire(blocking=False)
    lock.release()
    got: list[bool] = []
    other = threading.Thread(target=lambda: got.append(lock.acquire(blocking=False)))
    other.start()
    other.join()
    assert got == [False]
    lock.release()
    other = threading.Thread(target=lambda: got.append(lock.acquire(blocking=False)))
    other.start()
    other.join()
    assert got == [False, True]  # (held by that thread, gone: never released)
    with pytest.raises(TypeError):
        NATIVE.lock(1)


def test_bind_serves_a_plain_get_in_c_and_passes_anything_else_on(parts: Parts) -> None:
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    class Client:
        def get(self, *args: Any, **kwargs: Any) -> str:
            calls.append((args, kwargs))
            return "python"

    client = Client()
    get = parts.fast.bind(Client.get, weakref.ref(client))
    parts.seal(A, 0, b"a")
    view = get(A)
    assert bytes(view) == b"a" and not calls
    assert get(A) == "python"  # held: the Python half's
    assert get(B, 5) == "python" and get(B, timeout=None) == "python"
    assert get(*[B] * 9) == "python"  # (more arguments than fit on its stack)
    assert calls == [((A,), {}), ((B, 5), {}), ((B,), {"timeout": None}), ((B,) * 9, {})]
    assert get.__wrapped__ is Client.get
    del client
    with pytest.raises(ReferenceError):
        get(B, 5)  # (held weakly: the client is gone)
    with pytest.raises(TypeError):
        parts.fast.bind(Client.get, None)
