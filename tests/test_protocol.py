"""The frame codec: round trips, arbitrary chunking, limits, garbage (property-tested)."""

from __future__ import annotations

import math
import sys
import typing
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plasma import protocol as p
from plasma._client_core import IDS_PER_FRAME
from plasma.ids import ID_SIZE

ids = st.binary(min_size=20, max_size=20)
sizes = st.integers(min_value=0, max_value=2**62) | st.just(p.MAX_INT)
seqs = st.integers(min_value=0, max_value=2**32) | st.just(p.MAX_INT)
nodes = st.none() | st.integers(0, 7) | st.just(p.MAX_NODE)
texts = st.text(max_size=20) | st.just(p.MAX_STRING).map("é".__mul__)  # counts characters
timeouts = st.none() | st.floats(min_value=0, max_value=sys.float_info.max, allow_nan=False)
locations = st.builds(p.ObjectLocation, sizes, sizes, sizes, sizes, st.integers(0, 1023))
payloads = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=10,
)

requests = st.one_of(
    st.builds(
        p.Connect,
        seqs,
        st.integers(0, 9),
        texts,
        st.lists(st.integers(0, 4095) | st.just(p.MAX_CPU), max_size=8),
    ),
    st.builds(p.Create, seqs, ids, sizes, sizes, nodes, timeouts),
    st.builds(
        p.CreateMany,
        seqs,
        st.lists(st.builds(p.CreateItem, ids, sizes, sizes), max_size=5),
        nodes,
        timeouts,
    ),
    st.builds(p.Seal, seqs, st.lists(ids, max_size=5), st.booleans()),
    st.builds(p.Get, seqs, st.lists(ids, max_size=5), timeouts),
    st.builds(p.Release, seqs, st.lists(ids, max_size=5), st.booleans()),
    st.builds(p.Delete, seqs, st.lists(ids, max_size=5)),
    st.builds(p.Abort, seqs, ids),
    st.builds(p.Contains, seqs, ids),
    st.builds(p.List, seqs),
    st.builds(p.Evict, seqs, sizes),
    st.builds(p.Subscribe, seqs, st.booleans()),
    st.builds(p.Arena, seqs, sizes, nodes),
    st.builds(
        p.SealArena,
        seqs,
        sizes,
        st.lists(st.builds(p.ArenaObject, ids, sizes, sizes, sizes), max_size=5),
        st.booleans(),
    ),
    st.builds(p.Stats, seqs, st.booleans()),
    st.builds(p.Sync, seqs),
    st.builds(
        p.TaskRegister,
        seqs,
        texts,
        st.integers(1, 1 << 22) | st.just(p.MAX_PID),
        nodes,
        texts,
    ),
    st.builds(p.TaskDone, seqs, texts, texts),
    st.builds(p.SubmitSample, seqs, texts, st.dictionaries(st.text(max_size=5), payloads), texts),
    st.builds(p.RunRegister, seqs, texts),
    st.builds(p.RunCall, seqs, texts, payloads),
    st.builds(p.RunRespond, seqs, sizes, payloads, st.none() | texts, texts),
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
REQUEST_TYPES = typing.get_args(p.Request)


def enc(value: Any) -> bytes:
    return msgspec.msgpack.encode(value)


def frame(payload: bytes) -> bytes:
    """``payload`` behind its length prefix."""
    return len(payload).to_bytes(4, "little") + payload


def request_frame(*fields: Any) -> bytes:
    """A frame holding the MessagePack array ``fields`` (a tag, then the fields)."""
    return frame(enc(list(fields)))


def decode_one(data: bytes) -> Any:
    """The first message in ``data``, decoded as a request (frames of any size)."""
    dec = p.FrameDecoder(p.Request, max_frame=1 << 30)
    dec.feed(data)
    return dec.next_message()


def nested_arrays(depth: int, leaf: bytes = b"\xc0") -> bytes:
    """MessagePack for ``depth`` arrays of one element each around ``leaf`` (built as bytes:
    encoding such an object would itself recurse too deeply)."""
    return b"\x91" * depth + leaf


def nested_maps(depth: int) -> bytes:
    """``{"k": {"k": ... None}}``, ``depth`` maps deep."""
    return b"\x81\xa1k" * depth + b"\xc0"


def nested_keys(depth: int) -> bytes:
    """A map whose key is an array ``depth - 1`` deep: keys decode to nested tuples."""
    return b"\x81" + nested_arrays(depth - 1, b"\x01") + b"\xc0"


def raw_request(tag: str, *fields: bytes) -> bytes:
    """A frame holding ``[tag, *fields]`` where each field is already MessagePack."""
    assert len(fields) < 15
    return frame(bytes([0x90 | (len(fields) + 1)]) + enc(tag) + b"".join(fields))


def nested_list(depth: int) -> Any:
    """``[[...[None]...]]``, ``depth`` lists deep (built without recursing)."""
    value: Any = None
    for _ in range(depth):
        value = [value]
    return value


# ---------------------------------------------------------------- round trips


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


@given(st.lists(requests, min_size=1, max_size=8), st.data())
def test_feed_messages_decodes_in_place_what_feed_and_messages_decode(msgs, data):
    """The clients' receive path: whole frames straight from the received bytes, the rest
    buffered; any chunking gives the same messages, and a reused receive buffer changes
    nothing already decoded."""
    stream = b"".join(p.encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    dec = p.FrameDecoder(p.Request, max_frame=1 << 30)
    recv = bytearray(len(stream))
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
        recv[: end - start] = stream[start:end]
        out += dec.feed_messages(memoryview(recv)[: end - start])
        recv[:] = bytes(len(recv))  # the next receive overwrites the buffer
    assert out == msgs
    assert dec.buffered == 0


def test_feed_messages_reports_bad_frames_and_stays_failed():
    dec = p.FrameDecoder(p.Request, max_frame=1024)
    with pytest.raises(p.ProtocolError, match="exceeds the maximum of 1024"):
        dec.feed_messages(p.encode(p.Sync(seq=1)) + (1025).to_bytes(4, "little"))
    with pytest.raises(p.ProtocolError, match="exceeds"):
        dec.feed_messages(p.encode(p.Sync(seq=2)))
    bad = msgspec.msgpack.encode(["Get", "not-a-seq", [], None])
    dec = p.FrameDecoder(p.Request)
    with pytest.raises(p.ProtocolError, match="malformed"):
        dec.feed_messages(len(bad).to_bytes(4, "little") + bad + p.encode(p.Sync(seq=3)))
    with pytest.raises(p.ProtocolError, match="malformed"):
        dec.feed_messages(b"")


@given(replies)
def test_replies_round_trip(msg):
    dec = p.FrameDecoder(p.Reply)
    dec.feed(p.encode(msg))
    assert dec.messages() == [msg]


def test_replies_stay_loose():
    """Replies come from the coordinator: request bounds do not apply to them."""
    dec = p.FrameDecoder(p.Reply)
    dec.feed(p.encode(p.Error(seq=2**64 - 1, code="x" * 10_000, message="")))
    dec.feed(frame(b"\x93" + enc("RunResult") + enc(0) + nested_arrays(p.MAX_PAYLOAD_DEPTH + 1)))
    assert [type(m) for m in dec.messages()] == [p.Error, p.RunResult]


# ---------------------------------------------------------------- framing errors


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


def test_the_decoder_stays_failed():
    """After a bad frame every call raises again; the good frame behind it is not served."""
    dec = p.FrameDecoder(p.Request, max_frame=1 << 30)
    dec.feed(raw_request("RunCall", enc(1), enc("r"), nested_arrays(100_000)))
    dec.feed(p.encode(p.Sync(seq=2)))
    with pytest.raises(p.ProtocolError, match="malformed message") as first:
        dec.next_message()
    for call in (dec.next_message, dec.messages):
        with pytest.raises(p.ProtocolError) as again:
            call()
        assert str(again.value) == str(first.value)


# ---------------------------------------------------------------- field ranges

TOO_MANY_IDS = [bytes(20)] * (p.MAX_IDS_PER_REQUEST + 1)
LONG = "x" * (p.MAX_STRING + 1)
NAN, INF = math.nan, math.inf

OUT_OF_RANGE = {
    "seq -1": ["Sync", -1],
    "seq 2**63": ["Sync", 2**63],
    "seq 2**64-1": ["List", 2**64 - 1],
    "Connect protocol_version -1": ["Connect", 1, -1, "", []],
    "Connect client_name too long": ["Connect", 1, 1, LONG, []],
    "Connect cpu 65536": ["Connect", 1, 1, "", [0, p.MAX_CPU + 1]],
    "Connect cpu -1": ["Connect", 1, 1, "", [-1]],
    "Connect too many cpus": ["Connect", 1, 1, "", [0] * (p.MAX_CPUS + 1)],
    "Create id 19 bytes": ["Create", 1, bytes(19), 1, 0, None, 0.0],
    "Create id 21 bytes": ["Create", 1, bytes(21), 1, 0, None, 0.0],
    "Create data_size -1": ["Create", 1, bytes(20), -1, 0, None, 0.0],
    "Create data_size 2**63": ["Create", 1, bytes(20), 2**63, 0, None, 0.0],
    "Create metadata_size -1": ["Create", 1, bytes(20), 1, -1, None, 0.0],
    "Create node -1": ["Create", 1, bytes(20), 1, 0, -1, 0.0],
    "Create node 65536": ["Create", 1, bytes(20), 1, 0, p.MAX_NODE + 1, 0.0],
    "Create timeout nan": ["Create", 1, bytes(20), 1, 0, None, NAN],
    "Create timeout inf": ["Create", 1, bytes(20), 1, 0, None, INF],
    "Create timeout -inf": ["Create", 1, bytes(20), 1, 0, None, -INF],
    "Create timeout -1": ["Create", 1, bytes(20), 1, 0, None, -1.0],
    "CreateMany timeout nan": ["CreateMany", 1, [], None, NAN],
    "CreateMany timeout inf": ["CreateMany", 1, [], None, INF],
    "CreateMany node 65536": ["CreateMany", 1, [], p.MAX_NODE + 1, 0.0],
    "CreateMany item id short": ["CreateMany", 1, [[bytes(5), 1, 0]], None, 0.0],
    "CreateMany item size 2**63": ["CreateMany", 1, [[bytes(20), 2**63, 0]], None, 0.0],
    "CreateMany too many items": [
        "CreateMany",
        1,
        [[bytes(20), 1, 0]] * (p.MAX_IDS_PER_REQUEST + 1),
        None,
        0.0,
    ],
    "Seal id short": ["Seal", 1, [bytes(20), bytes(3)], False],
    "Seal too many ids": ["Seal", 1, TOO_MANY_IDS, False],
    "Abort id empty": ["Abort", 1, b""],
    "Get timeout nan": ["Get", 1, [bytes(20)], NAN],
    "Get timeout inf": ["Get", 1, [bytes(20)], INF],
    "Get timeout -inf": ["Get", 1, [bytes(20)], -INF],
    "Get timeout -0.5": ["Get", 1, [bytes(20)], -0.5],
    "Get id long": ["Get", 1, [bytes(21)], None],
    "Get too many ids": ["Get", 1, TOO_MANY_IDS, None],
    "Release too many ids": ["Release", 1, TOO_MANY_IDS, False],
    "Delete too many ids": ["Delete", 1, TOO_MANY_IDS],
    "Delete id short": ["Delete", 1, [bytes(19)]],
    "Contains id long": ["Contains", 1, bytes(40)],
    "Evict nbytes -1": ["Evict", 1, -1],
    "Evict nbytes 2**64-1": ["Evict", 1, 2**64 - 1],
    "Arena size 2**63": ["Arena", 1, 2**63, None],
    "Arena node -1": ["Arena", 1, 1, -1],
    "SealArena segment -1": ["SealArena", 1, -1, [], False],
    "SealArena segment 2**63": ["SealArena", 1, 2**63, [], False],
    "SealArena offset -1": ["SealArena", 1, 0, [[bytes(20), -1, 1, 0]], False],
    "SealArena data_size 2**63": ["SealArena", 1, 0, [[bytes(20), 0, 2**63, 0]], False],
    "SealArena id long": ["SealArena", 1, 0, [[bytes(21), 0, 1, 0]], False],
    "SealArena too many objects": [
        "SealArena",
        1,
        0,
        [[bytes(20), 0, 1, 0]] * (p.MAX_IDS_PER_REQUEST + 1),
        False,
    ],
    "TaskRegister pid 2**31": ["TaskRegister", 1, "t", 2**31, None, ""],
    "TaskRegister pid 2**63": ["TaskRegister", 1, "t", 2**63, None, ""],
    "TaskRegister pid 0": ["TaskRegister", 1, "t", 0, None, ""],
    "TaskRegister pid -1": ["TaskRegister", 1, "t", -1, None, ""],
    "TaskRegister node 65536": ["TaskRegister", 1, "t", 1, p.MAX_NODE + 1, ""],
    "TaskRegister task_id too long": ["TaskRegister", 1, LONG, 1, None, ""],
    "TaskRegister run_id too long": ["TaskRegister", 1, "t", 1, None, LONG],
    "TaskDone task_id too long": ["TaskDone", 1, LONG, ""],
    "SubmitSample key too long": ["SubmitSample", 1, "t", {LONG: 1}, ""],
    "SubmitSample run_id too long": ["SubmitSample", 1, "t", {}, LONG],
    "RunRegister run_id too long": ["RunRegister", 1, LONG],
    "RunCall run_id too long": ["RunCall", 1, LONG, None],
    "RunRespond request -1": ["RunRespond", 1, -1, None, None, ""],
    "RunRespond code too long": ["RunRespond", 1, 1, None, LONG, ""],
    "RunRespond message too long": ["RunRespond", 1, 1, None, "e", LONG],
}


@pytest.mark.parametrize("fields", list(OUT_OF_RANGE.values()), ids=list(OUT_OF_RANGE))
def test_out_of_range_fields_are_refused(fields):
    with pytest.raises(p.ProtocolError, match="malformed message"):
        decode_one(request_frame(*fields))


AT_THE_LIMITS = {
    "seq max": ["Sync", p.MAX_INT],
    "Connect": ["Connect", p.MAX_INT, 0, "é" * p.MAX_STRING, [p.MAX_CPU] * p.MAX_CPUS],
    "Create": ["Create", 0, bytes(20), p.MAX_INT, p.MAX_INT, p.MAX_NODE, sys.float_info.max],
    "Create node 0, timeout 0": ["Create", 0, bytes(20), 0, 0, 0, 0],
    "Get timeout None": ["Get", 1, [bytes(20)] * p.MAX_IDS_PER_REQUEST, None],
    "CreateMany": ["CreateMany", 1, [[bytes(20), 1, 0]] * p.MAX_IDS_PER_REQUEST, None, None],
    "SealArena": ["SealArena", 1, p.MAX_INT, [[bytes(20), 0, 1, 0]] * p.MAX_IDS_PER_REQUEST, True],
    "TaskRegister pid max": ["TaskRegister", 1, "t", p.MAX_PID, p.MAX_NODE, "r"],
    "TaskRegister pid 1": ["TaskRegister", 1, "t", 1, None, ""],
    "RunRespond": ["RunRespond", 1, p.MAX_INT, None, "x" * p.MAX_STRING, "y" * p.MAX_STRING],
}


@pytest.mark.parametrize("fields", list(AT_THE_LIMITS.values()), ids=list(AT_THE_LIMITS))
def test_values_at_the_limits_are_accepted(fields):
    msg = decode_one(request_frame(*fields))
    assert type(msg).__name__ == fields[0]


def test_what_the_clients_send_per_frame_fits():
    """The clients chunk ids at IDS_PER_FRAME: such frames stay within the limits and under
    the default frame size, even with the largest values."""
    assert IDS_PER_FRAME <= p.MAX_IDS_PER_REQUEST
    oid = b"\xff" * 20
    big = [
        p.Get(seq=p.MAX_INT, ids=[oid] * IDS_PER_FRAME, timeout=sys.float_info.max),
        p.Release(seq=p.MAX_INT, ids=[oid] * IDS_PER_FRAME),
        p.SealArena(p.MAX_INT, p.MAX_INT, [p.ArenaObject(oid, *[p.MAX_INT] * 3)] * IDS_PER_FRAME),
        p.CreateMany(p.MAX_INT, [p.CreateItem(oid, p.MAX_INT, p.MAX_INT)] * IDS_PER_FRAME),
    ]
    dec = p.FrameDecoder(p.Request)
    for msg in big:
        dec.feed(p.encode(msg))
        assert dec.next_message() == msg


def _unbounded(t: Any, where: str, any_ok: bool) -> list[str]:
    """The places in type ``t`` (from msgspec.inspect) that accept values without a bound."""
    mi = msgspec.inspect
    if isinstance(t, mi.IntType):
        return [] if t.ge is not None and t.le is not None else [where]
    if isinstance(t, mi.FloatType):  # ge and le together also refuse NaN and both infinities
        return [] if t.ge is not None and t.le == sys.float_info.max else [where]
    if isinstance(t, mi.StrType | mi.BytesType):
        return [] if t.max_length is not None else [where]
    if isinstance(t, mi.ListType):
        bad = [] if t.max_length is not None else [where]
        return bad + _unbounded(t.item_type, f"{where}[]", any_ok)
    if isinstance(t, mi.DictType):
        keys = _unbounded(t.key_type, f"{where} key", any_ok)
        return keys + _unbounded(t.value_type, f"{where} value", any_ok)
    if isinstance(t, mi.UnionType):
        return [bad for u in t.types for bad in _unbounded(u, where, any_ok)]
    if isinstance(t, mi.StructType):
        return [bad for f in t.fields for bad in _unbounded(f.type, f"{where}.{f.name}", any_ok)]
    if isinstance(t, mi.AnyType):
        return [] if any_ok else [where]
    assert isinstance(t, mi.BoolType | mi.NoneType), f"{where}: {t} needs a rule here"
    return []


@pytest.mark.parametrize("kind", REQUEST_TYPES, ids=lambda k: k.__name__)
def test_every_request_field_is_bounded(kind):
    """Every number, string, bytes and list of every request has a bound; free-form values
    only appear where ``__post_init__`` bounds their depth."""
    any_ok = "__post_init__" in vars(kind)
    assert _unbounded(msgspec.inspect.type_info(kind), kind.__name__, any_ok) == []


# ---------------------------------------------------------------- nesting


DEEP = {
    "RunCall arrays": lambda d: raw_request("RunCall", enc(1), enc("r"), nested_arrays(d)),
    "RunCall maps": lambda d: raw_request("RunCall", enc(1), enc("r"), nested_maps(d)),
    "RunCall keys": lambda d: raw_request("RunCall", enc(1), enc("r"), nested_keys(d)),
    "RunRespond arrays": lambda d: raw_request(
        "RunRespond", enc(1), enc(1), nested_arrays(d), enc(None), enc("")
    ),
    "SubmitSample maps": lambda d: raw_request(
        "SubmitSample", enc(1), enc("t"), b"\x81\xa1k" + nested_maps(d - 1), enc("")
    ),
}


@pytest.mark.parametrize("make", list(DEEP.values()), ids=list(DEEP))
def test_deep_nesting_is_a_protocol_error(make):
    """100,000 levels used to raise RecursionError out of the decoder."""
    with pytest.raises(p.ProtocolError, match="malformed message"):
        decode_one(make(100_000))


@pytest.mark.parametrize("make", list(DEEP.values()), ids=list(DEEP))
def test_payload_depth_is_bounded(make):
    """A payload msgspec can decode but that nests beyond MAX_PAYLOAD_DEPTH is refused; one
    at the limit is accepted and can be relayed (re-encoded) as it is."""
    with pytest.raises(p.ProtocolError, match=f"deeper than {p.MAX_PAYLOAD_DEPTH}"):
        decode_one(make(p.MAX_PAYLOAD_DEPTH + 1))
    with pytest.raises(p.ProtocolError, match=f"deeper than {p.MAX_PAYLOAD_DEPTH}"):
        decode_one(make(500))
    msg = decode_one(make(p.MAX_PAYLOAD_DEPTH))
    value = msg.sample if isinstance(msg, p.SubmitSample) else msg.payload
    relayed = p.RunRequest(seq=0, request=1, client=2, payload=value)
    dec = p.FrameDecoder(p.Reply)
    dec.feed(p.encode(relayed))
    assert dec.messages() == [relayed]


def test_a_deep_payload_is_refused_when_built_too():
    """The depth check is iterative: a deep payload built locally raises ValueError."""
    with pytest.raises(ValueError, match="nests deeper"):
        p.RunCall(seq=1, run_id="r", payload=nested_list(100_000))


# ---------------------------------------------------------------- fuzzing


# hostile values: the edges of every bound, and anything else MessagePack can say
edge_ints = st.sampled_from(
    [-1, 0, 1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 65535, 65536]
)
edge_values = st.one_of(
    edge_ints,
    st.sampled_from([math.nan, math.inf, -math.inf, -1.0, -0.0, sys.float_info.max]),
    st.sampled_from([b"", bytes(19), bytes(20), bytes(21), "x" * (p.MAX_STRING + 1)]),
    st.sampled_from([p.MAX_PAYLOAD_DEPTH, p.MAX_PAYLOAD_DEPTH + 1, 200]).map(nested_list),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.binary(max_size=24),
    st.text(max_size=8),
)
values = st.recursive(
    edge_values | scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=3) | edge_ints, inner, max_size=4)
    ),
    max_leaves=12,
)
# as MessagePack bytes, so they can nest deeper than encoding (or decoding) allows
depths = st.sampled_from([p.MAX_PAYLOAD_DEPTH + 1, 2_000, 100_000]) | st.integers(0, 100_000)
encoded_values = st.one_of(
    values.map(enc),
    depths.map(nested_arrays),
    depths.map(nested_maps),
    depths.filter(bool).map(nested_keys),
    st.binary(max_size=16),  # not even MessagePack
)


def paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Where in ``value`` (nested lists and maps) something could be replaced."""
    out = [path]
    if isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*path, k))
    return out


def hostile_like(value: Any) -> st.SearchStrategy[Any]:
    """Values of the same kind as ``value`` but at or past the bounds, or of another kind."""
    if isinstance(value, bool):
        return values
    if isinstance(value, int):
        like = edge_ints | st.integers(-(2**63), 2**64 - 1)
    elif isinstance(value, float) or value is None:  # a timeout, node, or error code
        like = edge_values | st.floats()
    elif isinstance(value, bytes):
        like = st.binary(max_size=24)
    elif isinstance(value, str):
        like = st.sampled_from(["", "x" * p.MAX_STRING, "x" * (p.MAX_STRING + 1)])
    else:  # a list, or a free-form payload
        like = st.integers(p.MAX_PAYLOAD_DEPTH - 1, 300).map(nested_list)
    return like | values


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    """A valid request with one value somewhere inside replaced by a hostile one."""
    fields = msgspec.msgpack.decode(p.encode(draw(requests))[4:])
    *parents, last = draw(st.sampled_from(paths(fields)[2:]))  # not the whole, nor the tag
    target = fields
    for key in parents:
        target = target[key]
    target[last] = draw(hostile_like(target[last]))
    return frame(enc(fields))


@st.composite
def spliced_requests(draw: st.DrawFn) -> bytes:
    """A valid request with one field replaced by hostile MessagePack bytes."""
    fields = [enc(f) for f in msgspec.msgpack.decode(p.encode(draw(requests))[4:])]
    fields[draw(st.integers(1, len(fields) - 1))] = draw(encoded_values)
    return raw_request(msgspec.msgpack.decode(fields[0]), *fields[1:])


deep_payloads = st.one_of(  # the free-form fields, nested as deep as MessagePack allows
    st.builds(lambda v: raw_request("RunCall", enc(1), enc("r"), v), encoded_values),
    st.builds(lambda v: raw_request("RunRespond", enc(1), enc(2), v), encoded_values),
    st.builds(
        lambda v: raw_request("SubmitSample", enc(1), enc("t"), b"\x81\xa1k" + v), encoded_values
    ),
)
request_shaped = st.builds(
    lambda tag, fields: raw_request(tag, *fields),
    st.sampled_from([t.__name__ for t in REQUEST_TYPES]) | st.text(max_size=12),
    st.lists(encoded_values, max_size=7),
)
chunks = st.one_of(
    st.binary(max_size=64),  # anything, framing included
    st.binary(max_size=64).map(frame),  # a frame of garbage
    values.map(enc).map(frame),  # a frame of some MessagePack value
    request_shaped,
    mutated_requests(),
    spliced_requests(),
    deep_payloads,
    requests.map(p.encode),
)


FIELD_RANGES = {"pid": (1, p.MAX_PID), "node": (0, p.MAX_NODE), "cpus": (0, p.MAX_CPU)}


def assert_in_bounds(value: Any, field: str = "") -> None:
    """What the protocol promises of a decoded request, checked value by value (free-form
    payloads aside)."""
    if isinstance(value, msgspec.Struct):
        for name in value.__struct_fields__:
            if name not in ("payload", "sample"):
                assert_in_bounds(getattr(value, name), name)
    elif isinstance(value, list):
        assert len(value) <= max(p.MAX_IDS_PER_REQUEST, p.MAX_CPUS)
        for v in value:
            assert_in_bounds(v, field)
    elif isinstance(value, bool) or value is None:
        pass
    elif isinstance(value, int):
        low, high = FIELD_RANGES.get(field, (0, p.MAX_INT))
        assert low <= value <= high, field
    elif isinstance(value, float):
        assert math.isfinite(value) and value >= 0, field
    elif isinstance(value, bytes):
        assert len(value) == ID_SIZE, field
    else:
        assert isinstance(value, str) and len(value) <= p.MAX_STRING, field


@settings(max_examples=500, deadline=None)
@given(st.lists(chunks, min_size=1, max_size=4), st.data())
def test_any_bytes_give_requests_or_protocol_error(pieces, data):
    """Whatever bytes arrive, however cut, the decoder yields requests within the bounds or
    raises ProtocolError, and nothing else; a request that decodes re-encodes and decodes
    again."""
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=4)))
    dec = p.FrameDecoder(p.Request)
    try:
        for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True):
            dec.feed(stream[start:end])
            while (msg := dec.next_message()) is not None:
                assert isinstance(msg, REQUEST_TYPES)
                assert_in_bounds(msg)
                wire = p.encode(msg)  # compare bytes, not messages: payloads may hold NaN
                assert p.encode(decode_one(wire)) == wire
    except p.ProtocolError as exc:
        assert str(exc)
        with pytest.raises(p.ProtocolError):
            dec.next_message()
