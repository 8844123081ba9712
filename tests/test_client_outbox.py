"""The client core's outbox alone: no coordinator, no socket."""

from __future__ import annotations

import msgspec
import pytest

from plasma import protocol as p
from plasma._client_core.outbox import IDS_PER_FRAME, Outbox, chunks
from plasma.errors import BadRequest


def sent(frames: bytes) -> list[msgspec.Struct]:
    decoder = p.FrameDecoder(p.Request)
    decoder.feed(frames)
    return list(decoder.messages())


def test_sequence_numbers_count_up_from_one() -> None:
    outbox = Outbox(lambda msg: None)
    assert [outbox.next_seq() for _ in range(3)] == [1, 2, 3]


def test_a_lone_request_goes_alone_when_nothing_is_queued() -> None:
    outbox = Outbox(lambda msg: None)
    assert not outbox.queued()
    (msg,) = sent(outbox.frames(p.Sync(seq=outbox.next_seq())))
    assert isinstance(msg, p.Sync) and msg.seq == 1


def test_queued_messages_go_first_in_their_order_then_the_requests() -> None:
    nobodys: list[p.Abort | p.ReturnArena] = []
    outbox = Outbox(nobodys.append)
    outbox.releases.extend([b"r" * 20, b"s" * 20])
    outbox.unpins.append(b"u" * 20)
    outbox.tables_wanted = 7
    outbox.cleanup.append(p.Abort(seq=0, id=b"a" * 20))
    outbox.cleanup.append(p.ReturnArena(seq=0, grant=3))
    assert outbox.queued()
    request = p.Contains(seq=outbox.next_seq(), id=b"c" * 20)
    msgs = sent(outbox.frames(request))
    assert [type(m) for m in msgs] == [
        p.Release,
        p.Unpin,
        p.Tables,
        p.Abort,
        p.ReturnArena,
        p.Contains,
    ]
    assert msgs[0].ids == [b"r" * 20, b"s" * 20] and msgs[0].ack is False
    assert msgs[1].ids == [b"u" * 20] and msgs[2].have == 7
    seqs = [m.seq for m in msgs]
    assert seqs[-1] == 1 and seqs[:-1] == [2, 3, 4, 5, 6]  # numbered as they leave
    assert [m.seq for m in nobodys] == [5, 6]  # their answers concern nobody
    assert not outbox.queued()
    assert outbox.frames() == b""


def test_releases_are_batched_at_most_ids_per_frame_a_frame() -> None:
    outbox = Outbox(lambda msg: None)
    ids = [i.to_bytes(20, "big") for i in range(IDS_PER_FRAME + 5)]
    outbox.releases.extend(ids)
    msgs = sent(outbox.frames())
    assert [len(m.ids) for m in msgs] == [IDS_PER_FRAME, 5]
    assert [oid for m in msgs for oid in m.ids] == ids


def test_a_bad_request_takes_nothing_from_the_queue() -> None:
    outbox = Outbox(lambda msg: None)
    outbox.releases.append(b"r" * 20)
    with pytest.raises(BadRequest, match="Evict"):
        outbox.frames(p.Evict(seq=outbox.next_seq(), nbytes=-1))
    assert list(outbox.releases) == [b"r" * 20]


def test_chunks_split_id_lists_by_frame() -> None:
    ids = [bytes(20)] * (2 * IDS_PER_FRAME + 1)
    assert [len(c) for c in chunks(ids)] == [IDS_PER_FRAME, IDS_PER_FRAME, 1]
    assert list(chunks([])) == []
