"""The client core's references alone: built over a plain mapping, no coordinator."""

from __future__ import annotations

import gc
import mmap

from plasma import protocol as p
from plasma._client_core.fast_path import client_lock
from plasma._client_core.outbox import Outbox
from plasma._client_core.refs import Refs
from plasma._client_core.segment_maps import SegmentMaps

A, B, C = b"a" * 20, b"b" * 20, b"c" * 20


def parts(release_delay: int = 2) -> tuple[Refs, Outbox]:
    lock = client_lock()
    outbox = Outbox(lambda msg: None)
    maps = SegmentMaps(lock)
    maps.segments[1] = mmap.mmap(-1, 1 << 16)
    return Refs(lock, outbox, maps, release_delay), outbox


def at(offset: int, size: int = 64) -> p.ObjectLocation:
    return p.ObjectLocation(segment=1, offset=offset, data_size=size, metadata_size=0, node=0)


def taken(outbox: Outbox) -> list[bytes]:
    ids = list(outbox.releases)
    outbox.releases.clear()
    return ids


def test_views_count_one_reference_which_is_cached_then_released() -> None:
    refs, outbox = parts(release_delay=1)
    first = refs.readable(A, at(0))
    second = refs.reuse(A)
    assert second is not None and refs.held[A].views == 2 and refs.holds(A)
    del first
    gc.collect()
    assert refs.held[A].views == 1 and not taken(outbox)
    del second
    gc.collect()
    assert A not in refs.held and list(refs.cache) == [A] and refs.cache_bytes == 64
    assert not taken(outbox)  # cached: no release yet
    view = refs.readable(B, at(64))
    del view
    gc.collect()
    assert taken(outbox) == [A] and list(refs.cache) == [B]  # the oldest went
    refs.drop_cache()
    assert taken(outbox) == [B] and not refs.cache and refs.cache_bytes == 0
    assert not refs.holds(A) and not refs.holds(B)


def test_a_second_reference_goes_back_at_once() -> None:
    refs, outbox = parts()
    views = [refs.readable(A, at(0)), refs.readable(A, at(0))]
    assert taken(outbox) == [A] and refs.held[A].views == 2
    del views


def test_views_are_read_only_windows_on_the_segment() -> None:
    refs, _ = parts()
    refs._maps.segments[1][128:133] = b"hello"
    data, meta = refs.readable(C, p.ObjectLocation(1, 128, 3, 2, 0))
    assert data.readonly and bytes(data) == b"hel" and bytes(meta) == b"lo"


def test_revoked_references_go_when_unused_and_are_not_reused() -> None:
    refs, outbox = parts()
    cached = refs.readable(A, at(0))
    in_use = refs.readable(B, at(64))
    del cached
    gc.collect()
    refs.revoke([A, B, C])
    assert taken(outbox) == [A] and refs.reuse(B) is None
    del in_use
    gc.collect()
    assert taken(outbox) == [B] and not refs.cache


def test_a_forked_child_never_lets_go_of_the_parents_views() -> None:
    refs, outbox = parts(release_delay=0)
    view = refs.readable(A, at(0))
    refs.forked = True
    del view
    gc.collect()
    assert not taken(outbox) and A in refs.held


def test_the_creator_reference_goes_once_sealed_and_the_buffer_is_gone() -> None:
    refs, outbox = parts()
    buffer = refs.create_buffer(A, at(0))
    buffer[:1] = b"x"
    refs.sealed(A)
    assert refs.holds_creator_reference(A) and not taken(outbox)
    del buffer
    gc.collect()
    assert taken(outbox) == [A] and not refs.holds_creator_reference(A)
    assert refs.release(A) is False  # released already, with its buffer
    assert refs.release(A) is True  # (remembered once: another release is the caller's)


def test_an_explicit_release_takes_over_the_creator_reference() -> None:
    refs, outbox = parts()
    buffer = refs.create_buffer(A, at(0))
    refs.sealed(A)
    assert refs.release(A) is True
    del buffer
    gc.collect()
    assert not taken(outbox)  # not released a second time when the buffer goes


def test_an_aborted_object_has_no_creator_reference_left() -> None:
    refs, outbox = parts()
    buffer = refs.create_buffer(A, at(0))
    refs.aborted(A)
    refs.sealed(A)
    del buffer
    gc.collect()
    assert not taken(outbox) and not refs.holds_creator_reference(A)


def test_prefetched_locations_serve_a_get_only_when_every_id_has_one() -> None:
    refs, _ = parts()
    refs.prefetch(A, at(0))
    refs.prefetch(A, at(64))
    refs.prefetch(B, at(128))
    assert refs.take_prefetched([A, C]) is None
    assert refs.take_prefetched([A, B]) == [at(64), at(128)]
    assert refs.prefetched == {A: [at(0)]}
    assert refs.release(A) is True and not refs.prefetched  # its Release drops that one
