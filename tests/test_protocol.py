"""The frame codec: round trips, arbitrary chunking, limits, garbage (property-tested)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plasma import protocol as p

ids = st.binary(min_size=20, max_size=20)
sizes = st.integers(min_value=0, max_value=2**62)
seqs = st.integers(min_value=0, max_value=2**32)
timeouts = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)
locations = st.builds(p.ObjectLocation, sizes, sizes, sizes, sizes, st.integers(0, 1023))

requests = st.one_of(
    st.builds(
        p.Connect,
        seqs,
        st.integers(0, 9),
        st.text(max_size=20),
        st.lists(st.integers(0, 4095), max_size=8),
    ),
    st.builds(p.Create, seqs, ids, sizes, sizes, st.none() | st.integers(0, 7), timeouts),
    st.builds(p.CreateMany, seqs, st.lists(st.builds(p.CreateItem, ids, sizes, sizes), max_size=5)),
    st.builds(p.Seal, seqs, st.lists(ids, max_size=5), st.booleans()),
    st.builds(p.Get, seqs, st.lists(ids, max_size=5), timeouts),
    st.builds(p.Release, seqs, st.lists(ids, max_size=5), st.booleans()),
    st.builds(p.Delete, seqs, st.lists(ids, max_size=5)),
    st.builds(p.Evict, seqs, sizes),
    st.builds(
        p.SealArena,
        seqs,
        sizes,
        st.lists(st.builds(p.ArenaObject, ids, sizes, sizes, sizes), max_size=5),
        st.booleans(),
    ),
    st.builds(
        p.RunCall,
        seqs,
        st.text(max_size=10),
        st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)),
    ),
)
replies = st.one_of(
    st.builds(
        p.Got,
        seqs,
        st.lists(locations | st.sampled_from(["timeout", "object_not_sealed"]), max_size=5),
    ),
    st.builds(p.Error, seqs, st.sampled_from(["store_full", "bad_request"]), st.text(max_size=30)),
    st.builds(
        p.Notification,
        seqs,
        st.sampled_from(["sealed", "deleted"]),
        ids,
        sizes,
        sizes,
        st.none() | locations,
    ),
)


@given(st.lists(requests, min_size=1, max_size=8), st.data())
def test_requests_survive_any_chunking(msgs, data):
    stream = b"".join(p.encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = p.FrameDecoder(p.Request, max_frame=1 << 30)
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        dec.feed(stream[start:end])
        out += dec.messages()
    assert out == msgs
    assert dec.buffered == 0


@given(replies)
def test_replies_round_trip(msg):
    dec = p.FrameDecoder(p.Reply)
    dec.feed(p.encode(msg))
    assert dec.messages() == [msg]


@given(st.binary(min_size=1, max_size=200))
def test_garbage_gives_protocol_error_or_needs_more(data):
    dec = p.FrameDecoder(p.Request, max_frame=64)
    dec.feed(data)
    try:
        msgs = dec.messages()
    except p.ProtocolError:
        return
    for m in msgs:  # whatever decodes must be a well-typed request
        assert isinstance(m, msgspec.Struct)


def test_oversized_frame_is_refused_before_it_arrives():
    dec = p.FrameDecoder(p.Request, max_frame=1024)
    dec.feed((1025).to_bytes(4, "little"))
    with pytest.raises(p.ProtocolError, match="exceeds the maximum of 1024"):
        dec.next_message()


def test_wrong_field_type_is_a_protocol_error():
    bad = msgspec.msgpack.encode(["Get", "not-a-seq", [], None])
    dec = p.FrameDecoder(p.Request)
    dec.feed(len(bad).to_bytes(4, "little") + bad)
    with pytest.raises(p.ProtocolError, match="malformed"):
        dec.next_message()
