"""The client's reference bookkeeping (sans-I/O): views, the release-delay cache, revocation."""

from __future__ import annotations

import gc
import mmap
import os
import socket
import time
from typing import Any

import pytest

from plasma import protocol as p
from plasma._client_core import HANGUP_CHECK_INTERVAL, RELEASE_DELAY_BYTES, ClientCore
from plasma._client_core.fast_path import NATIVE, ReadPath
from plasma.directory import DirectoryReader
from plasma.errors import Disconnected, PermissionDenied
from tests.conftest import wait_until


def state_with_segment(size: int = 1 << 20, release_delay: int = 2) -> ClientCore:
    state = ClientCore(release_delay)
    state.maps.segments[1] = mmap.mmap(-1, size)
    return state


def loc(offset: int, size: int = 64) -> p.ObjectLocation:
    return p.ObjectLocation(segment=1, offset=offset, data_size=size, metadata_size=0, node=0)


def released(state: ClientCore) -> list[bytes]:
    """The ids of the Release the next message would carry."""
    frames = state.frames()
    if not frames:
        return []
    decoder = p.FrameDecoder(p.Request)
    decoder.feed(frames)
    (msg,) = decoder.messages()
    assert isinstance(msg, p.Release)
    return msg.ids


def test_one_reference_per_object_while_views_live_then_cached():
    state = state_with_segment()
    data = state.refs.readable(b"a" * 20, loc(0))
    again = state.refs.readable(b"a" * 20, loc(0))  # a second reference from the store...
    assert released(state) == [b"a" * 20]  # ...is handed back at once
    del data, again
    gc.collect()
    assert released(state) == []  # the last view went: kept in the cache
    assert b"a" * 20 in state.refs.cache
    view = state.refs.reuse(b"a" * 20)  # served locally, the cache entry is in use again
    assert view is not None and b"a" * 20 not in state.refs.cache
    del view
    gc.collect()
    state.refs.drop_cache()
    assert released(state) == [b"a" * 20]


def test_cache_keeps_the_newest_release_delay_objects():
    state = state_with_segment(release_delay=2)
    for i in range(4):
        view = state.refs.readable(bytes([i]) * 20, loc(64 * i))
        del view
        gc.collect()
    assert released(state) == [bytes([0]) * 20, bytes([1]) * 20]
    assert list(state.refs.cache) == [bytes([2]) * 20, bytes([3]) * 20]


def test_cache_is_bounded_in_bytes():
    big = RELEASE_DELAY_BYTES // 2 + 1
    state = state_with_segment(size=3 * big, release_delay=64)
    for i in range(3):
        view = state.refs.readable(bytes([i]) * 20, loc(i * big, big))
        del view
        gc.collect()
    assert released(state) == [bytes([0]) * 20, bytes([1]) * 20]
    assert state.refs.cache_bytes == big


def test_revoked_objects_are_not_served_locally():
    state = state_with_segment()
    cached = state.refs.readable(b"c" * 20, loc(0))
    in_use = state.refs.readable(b"u" * 20, loc(64))
    del cached
    gc.collect()
    state.refs.revoke([b"c" * 20, b"u" * 20])
    assert released(state) == [b"c" * 20]  # unused: released with the next message
    assert state.refs.reuse(b"c" * 20) is None
    assert state.refs.reuse(b"u" * 20) is None  # in use: no new local gets of it
    del in_use
    gc.collect()
    assert released(state) == [b"u" * 20]  # and released, not cached, when its views go
    assert state.refs.cache == {}


def test_release_delay_zero_releases_when_the_last_view_goes():
    state = state_with_segment(release_delay=0)
    view = state.refs.readable(b"z" * 20, loc(0))
    del view
    gc.collect()
    assert released(state) == [b"z" * 20]


class CountingPoller:
    def __init__(self, poller: Any) -> None:
        self.poller, self.calls = poller, 0

    def poll(self, timeout: int) -> list[tuple[int, int]]:
        self.calls += 1
        return self.poller.poll(timeout)


def test_a_hang_up_is_seen_without_reading_and_only_then(read_path: ReadPath) -> None:
    """The core looks at its socket for a hang-up (no read): replies waiting to be read do
    not count; a closed peer does, for good; the coordinator's own reason, read later,
    replaces the bare Disconnected. Directory gets look once the C read path's thread
    watching the socket saw a hang-up (no syscall before), or, on the Python read path, at
    most every HANGUP_CHECK_INTERVAL (no syscall in between); other gets look every time."""
    ours, theirs = socket.socketpair()
    state = ClientCore()
    state.watch(ours.fileno())
    fast = state.refs.fast
    assert (fast is not None) == (read_path is NATIVE)
    state.maps.reader = DirectoryReader.__new__(DirectoryReader)  # (stands for a mapped directory)
    poller = state._poller = CountingPoller(state._poller)  # type: ignore[assignment]
    not_an_id = "not an id: get_pinned gives up after its look at the socket"

    def next_look() -> None:  # (a documented bound or the watcher's word, not a synchronisation)
        if fast is not None:
            wait_until(lambda: fast.hung_up is not False, what="the watcher to see it")
        else:
            wait_until(lambda: time.monotonic() >= state.next_hangup_check, what="the next look")

    try:
        theirs.sendall(b"a reply nobody read yet")
        assert not state.hung_up()
        state.check_connected()
        looks = 1 if fast is not None else 2  # (the watcher saw nothing: no look)
        assert poller.calls == looks
        start = time.monotonic()
        for _ in range(1000):
            assert state.get_pinned(not_an_id, 0, False) is None
        elapsed = time.monotonic() - start
        if fast is not None:
            assert poller.calls == looks
        else:
            assert poller.calls - looks <= 1 + elapsed / HANGUP_CHECK_INTERVAL
            calls = poller.calls
            next_look()
            assert state.get_pinned(not_an_id, 0, False) is None
            assert poller.calls == calls + 1
        theirs.close()
        next_look()
        assert state.get_pinned(not_an_id, 0, False) is None
        assert state.maps.reader is None  # seen by the directory get: the directory is done with
        assert state.hung_up()
        with pytest.raises(Disconnected, match="the coordinator closed the connection"):
            state.check_connected()
        state.unexpected(p.Error(seq=0, code="permission_denied", message="go away"))
        with pytest.raises(PermissionDenied, match="go away"):
            state.check_connected()
        state.unwatch()  # (the socket closes: its number is looked at no more)
        ours.close()
        assert state.hung_up()  # still: it was lost
    finally:
        state.unwatch()
        ours.close()


def test_a_writable_view_is_a_private_copy_on_write_mapping_of_a_read_only_segment():
    """A uid allowed only to read is sent its segments O_RDONLY: MAP_PRIVATE with PROT_WRITE
    of such a descriptor is allowed, the writes stay in this process, and an object at an
    offset that is not page-aligned is mapped by its covering pages."""
    from plasma.linux import memfd

    fd = memfd.memfd_create("plasma-test")
    os.ftruncate(fd, 4 * mmap.PAGESIZE)
    offset = mmap.PAGESIZE + 100  # the object straddles a page boundary
    original = bytes(range(256)) * 20
    os.pwrite(fd, original, offset)
    state = ClientCore(release_delay=0)
    state.maps.fds.append(memfd.reopen_read_only(fd))
    info = p.SegmentInfo(id=1, size=4 * mmap.PAGESIZE, node=0, page_size=mmap.PAGESIZE)
    info.writable = False
    state.maps.map_segments([info])
    oid = b"w" * 20
    where = p.ObjectLocation(
        segment=1, offset=offset, data_size=len(original), metadata_size=0, node=0
    )
    data = state.refs.readable(oid, where)[0]
    assert data.readonly
    private = state.refs.private_view(oid, data)
    del data
    assert not private.readonly and bytes(private) == original
    private[:5] = b"CHANGED"[:5]
    private[-1] = 0
    assert bytes(private[:5]) == b"CHANG"
    assert os.pread(fd, len(original), offset) == original  # the segment's bytes: unchanged
    reused = state.refs.reuse(oid)
    assert reused is not None and bytes(reused[0]) == original  # another view: the original
    del reused
    gc.collect()
    assert released(state) == []  # the private view keeps the reference...
    del private
    gc.collect()
    assert released(state) == [oid]  # ...until it dies
    state.close_maps()
    assert not state.maps.segment_fds
    os.close(fd)
