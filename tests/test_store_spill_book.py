"""The spill books alone (no Store): files and their live copies, bounds, batches, figures."""

from __future__ import annotations

import math

from plasma.store.memory import Node
from plasma.store.spill import SpillBook


def test_files_count_their_live_copies_and_go_with_the_last() -> None:
    book = SpillBook(True, 1.0, None, 100)
    f = book.new_batch([])
    book.written(f, written=3, nbytes=300, live=2, file_bytes=4096, seconds=0.5)
    assert (book.disk_objects(), book.disk_bytes()) == (2, 4096) and f not in book.batches
    assert not book.drop_copy(f)  # one copy left
    assert book.drop_copy(f) and book.files == {}  # the last: the file goes
    stats = book.stats()
    assert stats["written_objects"] == 3 and stats["spill_bytes_per_second"] == 600


def test_a_batch_with_nothing_live_leaves_no_file() -> None:
    book = SpillBook(True, 1.0, None, 100)
    f = book.new_batch([])
    book.written(f, written=1, nbytes=10, live=0, file_bytes=512, seconds=0.0)
    assert book.files == {} and book.stats()["spill_bytes_per_second"] == 0.0


def test_bounds_on_bytes_and_objects() -> None:
    book = SpillBook(True, 1.0, 8192, 3)
    assert book.room() == 8192 and not book.full()
    f = book.new_batch([])
    book.written(f, written=2, nbytes=8000, live=2, file_bytes=8192, seconds=0.1)
    assert book.room() == 0 and book.full()
    unbounded = SpillBook(True, 1.0, None, 2)
    g = unbounded.new_batch([])
    unbounded.written(g, written=2, nbytes=2, live=2, file_bytes=64, seconds=0.1)
    assert unbounded.room() == math.inf and unbounded.full()  # (two objects: the most)
    assert "2 objects, the most allowed" in unbounded.describe()


def test_a_failed_batch_is_remembered_until_one_succeeds() -> None:
    book = SpillBook(True, 1.0, None, 100)
    f = book.new_batch([])
    assert book.failed(f, "disk full") == [] and book.error == "disk full"
    assert "the last spill failed: disk full" in book.describe()
    g = book.new_batch([])
    assert g != f
    book.written(g, written=1, nbytes=1, live=1, file_bytes=64, seconds=0.1)
    assert book.error == "" and book.stats()["errors"] == 1


def test_objects_on_disk_and_restored_are_counted_by_their_bytes() -> None:
    book = SpillBook(True, 1.0, None, 100)
    book.to_disk(100)
    book.to_disk(50)
    book.restored(100, seconds=0.25)
    book.off_disk(50)
    c = book.stats()
    assert (c["objects"], c["bytes"], c["restored_objects"], c["restored_bytes"]) == (0, 0, 1, 100)
    assert c["restore_bytes_per_second"] == 400


def test_adopted_files_keep_the_next_file_id_above_them() -> None:
    book = SpillBook(True, 1.0, None, 100)
    book.adopt_file(41, 1024)
    assert book.forget_empty(41) and 41 not in book.files  # nothing live in it
    book.adopt_file(42, 2048)
    book.adopt_copy(42)
    assert not book.forget_empty(42) and book.disk_objects() == 1
    assert book.new_batch([]) == 43


def test_wakeups_are_taken_once() -> None:
    book = SpillBook(True, 1.0, None, 100)
    assert not book.take_wakeup()
    book.wake()
    assert book.take_wakeup() and not book.take_wakeup()


def test_what_a_node_wants_copied_is_what_waits_or_what_passes_the_threshold() -> None:
    nd = Node(0, 800)
    nd.used, nd.spill_demand = 700, 100
    assert SpillBook(True, 1.0, None, 100).wanted(nd) == 100  # (no threshold: what waits)
    # past 0.5 of the budget by 300 bytes (none has a copy): those and a batch more (1/8)
    assert SpillBook(True, 0.5, None, 100).wanted(nd) == 300 + 100


def test_a_restore_is_hopeless_only_when_nothing_can_make_room() -> None:
    nd = Node(0, 1000)
    nd.used = 1000  # full, and nothing in it has a copy on disk
    book = SpillBook(True, 1.0, 500, 100)
    assert not book.restore_hopeless(nd, 400)  # copies of 400 bytes would fit on disk
    assert book.restore_hopeless(nd, 600)  # ... of 600 would not (at most 500 bytes)
    book.error = "disk full"
    assert book.restore_hopeless(nd, 100)  # the last spill failed: none will be written
    nd.evicting = 1
    assert not book.restore_hopeless(nd, 100)  # memory is on its way (an eviction)
    nd.evicting = 0
    book.batches[1] = []
    assert not book.restore_hopeless(nd, 100)  # ... or a batch is being written
