"""The C read path as the package uses it (``plasma._native``): built where CI runs, chosen
by clients, refusing bad files with errors, holding the maps it reads, and the one-line
warning of a client that falls back to the Python read path. Its behaviour is tested
beside the Python one's in test_directory.py, test_client_fast_path.py,
test_reads_without_requests.py and test_directory_stress.py; its C-level races in
test_native_races.py."""

from __future__ import annotations

import mmap
import os
import struct
import warnings
import weakref

import pytest

import plasma
from plasma._client_core import core as client_core
from plasma._client_core import fast_path
from plasma._native import native
from plasma.directory import (
    Directory,
    DirectoryReader,
    directory_size,
    pin_table_size,
)
from plasma.records import ObjectLocation
from tests.conftest import RunningCoordinator
from tests.helpers import oid

needs_native = pytest.mark.skipif(native is None, reason="the native read path is not built")


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI must have built it")
def test_ci_builds_the_native_read_path() -> None:
    """The README's install command built the extension (a silent fallback would pass every
    other test on the Python read path alone)."""
    assert native is not None, fast_path.fallback_warning()
    assert fast_path.READ_PATH is fast_path.NATIVE


@needs_native
def test_a_client_reads_the_directory_through_the_c_reader(coordinator: RunningCoordinator):
    with plasma.connect(coordinator.socket) as c:
        maps = c._core.maps
        assert isinstance(maps.reader, native.Reader)
        assert isinstance(maps.pins, native.PinTable)
        c.create_and_seal(oid(1), b"abc")
        c.flush()
    with plasma.connect(coordinator.socket, release_delay=0) as c:
        assert bytes(c.get(oid(1), timeout=5)) == b"abc"  # maps the segment
        ids = [oid(n) for n in range(2, 6)]
        with plasma.connect(coordinator.socket) as producer:
            for n, i in enumerate(ids):
                producer.create_and_seal(i, b"%d" % n)
            producer.flush()
        before = c.stats()["operations"].get("Get", 0)
        assert [bytes(c.get(i, timeout=0)) for i in ids] == [b"0", b"1", b"2", b"3"]
        assert c.stats()["operations"].get("Get", 0) == before  # no request among them
        assert c._core.maps.pins.count == 0  # every view gone: every pin given back


@needs_native
def test_a_plain_get_of_a_client_is_one_c_call_and_the_rest_its_method(
    coordinator: RunningCoordinator,
):
    with plasma.connect(coordinator.socket) as producer, plasma.connect(coordinator.socket) as c:
        assert type(c.get).__name__ == "Bound" and c.get.__wrapped__ is plasma.Client.get
        producer.create_and_seal(oid(1), b"abc")
        producer.create_and_seal(oid(2), b"def", b"meta")
        producer.flush()
        assert bytes(c.get(oid(1), timeout=5)) == b"abc"  # maps the segment (a request)
        before = c.stats()["operations"].get("Get", 0)
        view = c.get(oid(2))
        assert bytes(view) == b"def" and isinstance(c._core.refs.held[oid(2)], native.Pinned)
        data, meta = c.get(oid(2), with_metadata=True)  # held: the method, reusing it
        assert bytes(meta) == b"meta" and c.stats()["operations"].get("Get", 0) == before
        del view, data, meta
    with pytest.raises(plasma.PlasmaError):
        c.get(oid(1))  # closed: the method raises


def test_a_client_without_the_c_read_path_says_so_once(
    coordinator: RunningCoordinator, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(fast_path, "unavailable", "ImportError: no module _directory")
    monkeypatch.setattr(fast_path, "READ_PATH", fast_path.PYTHON)
    monkeypatch.setattr(client_core, "_fallback_warned", False)
    with pytest.warns(RuntimeWarning) as caught, plasma.connect(coordinator.socket) as c:
        assert isinstance(c._core.maps.reader, DirectoryReader)  # the fallback serves
    (warning,) = caught
    text = str(warning.message)
    assert "\n" not in text and "ImportError: no module _directory" in text
    assert "in Python" in text and "apt-get install gcc python3-dev" in text
    assert warning.filename == __file__  # pointed at the connect call
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with plasma.connect(coordinator.socket):  # once per process
            pass


def test_turned_off_on_purpose_it_says_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_path, "unavailable", None)
    assert fast_path.fallback_warning() is None


def test_on_a_cpu_that_does_not_order_memory_the_fallback_is_requests(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(fast_path, "unavailable", "ImportError: x")
    monkeypatch.setattr(fast_path, "ORDERED_MEMORY", False)
    text = fast_path.fallback_warning()
    assert text is not None and "every get is a request" in text


def directory(capacity: int = 16) -> tuple[Directory, bytearray]:
    buf = bytearray(directory_size(capacity))
    return Directory(buf, capacity), buf


@needs_native
@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:10], "shorter"),  # not even a header
        (lambda b: b[: directory_size(16) - 1], "shorter"),  # a header claiming more
        (lambda b: bytearray(len(b)), "not a version 2"),  # zeros
        (lambda b: b[:16] + struct.pack("<Q", 2**63) + b[24:], "shorter"),  # huge capacity
        (lambda b: b[:16] + struct.pack("<Q", 0) + b[24:], "power of two"),
        (lambda b: b"PLSMDIR1" + struct.pack("<II", 3, 64) + b[16:], "not a version 2"),
    ],
)
def test_a_bad_directory_file_is_an_error_not_a_crash(damage, message: str) -> None:
    assert native is not None
    _, buf = directory()
    with pytest.raises(ValueError, match=message):
        native.Reader(bytearray(damage(buf)))


@needs_native
def test_a_huge_max_probe_stays_within_the_directory() -> None:
    assert native is not None
    d, buf = directory()
    d.insert(oid(1), 5, ObjectLocation(1, 0, 8, 0, 0))
    struct.pack_into("<Q", buf, 32, 2**64 - 1)  # max probe
    reader = native.Reader(buf)
    assert reader.lookup(oid(1)) is not None and reader.lookup(oid(2)) is None


@needs_native
def test_bad_pin_tables_and_arguments_are_errors() -> None:
    assert native is not None
    with pytest.raises(ValueError, match="shorter"):
        native.PinTable(bytearray(10))
    with pytest.raises(BufferError):
        native.PinTable(b"\0" * pin_table_size(4))  # read-only
    pins = native.PinTable(bytearray(pin_table_size(2)))
    with pytest.raises(ValueError, match="not pinned"):
        pins.unpin(0)  # never pinned
    index = pins.pin(7)
    assert index == 0 and pins.pin(0) is None  # 0 means free: never a pin
    pins.unpin(index)
    with pytest.raises(ValueError, match="not pinned"):
        pins.unpin(index)  # twice: it would be handed out twice
    _, buf = directory()
    reader = native.Reader(buf)
    with pytest.raises(ValueError, match="20 bytes"):
        native.pin_from_directory(reader, pins, {}, b"short", None)
    with pytest.raises(TypeError):
        native.pin_from_directory(DirectoryReader(buf), pins, {}, oid(1), None)
    with pytest.raises(TypeError):
        reader.unchanged((1, 2))
    with pytest.raises(OverflowError):
        native.insert(buf, 16, 4, 1, oid(1), 0, 0, 0, 0, 2**16, 0)  # node
    with pytest.raises(TypeError):
        native.insert(buf, 16, 4, 1, bytearray(oid(1)), 0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="power of two"):
        native.insert(buf, 12, 4, 1, oid(1), 0, 0, 0, 0, 0, 0)
    with pytest.raises(ValueError, match="outside"):
        native.set_state(buf, 16, 16, 1)
    with pytest.raises(ValueError, match="no directory"):
        native.clear_slot(buf, 17, 0)


@needs_native
def test_a_failing_mapped_check_pins_nothing() -> None:
    assert native is not None
    d, buf = directory()
    d.insert(oid(1), 5, ObjectLocation(1, 0, 8, 0, 0))
    pins = native.PinTable(bytearray(pin_table_size(2)))

    class Broken:
        def __contains__(self, segment: object) -> bool:
            raise RuntimeError("broken")

    with pytest.raises(RuntimeError, match="broken"):
        native.pin_from_directory(native.Reader(buf), pins, Broken(), oid(1), None)
    assert pins.count == 0


@needs_native
def test_the_maps_it_reads_cannot_be_closed_under_it() -> None:
    """A map the C reader or pin table reads stays mapped while they live (its close is
    refused: the segment maps leave it to them), and closes once they are gone."""
    assert native is not None
    size = directory_size(16)
    mm, table = mmap.mmap(-1, size), mmap.mmap(-1, pin_table_size(4))
    d = Directory(mm, 16)
    d.insert(oid(1), 5, ObjectLocation(1, 0, 8, 0, 0))
    reader, pins = native.Reader(mm), native.PinTable(table)
    with pytest.raises(BufferError):
        mm.close()
    with pytest.raises(BufferError):
        table.close()
    assert native.pin_from_directory(reader, pins, {1}, oid(1), None) is not None
    del reader, pins
    mm.close()
    table.close()


@needs_native
def test_views_are_read_only_and_call_back_once_when_the_last_goes() -> None:
    assert native is not None
    mm = mmap.mmap(-1, 4096)
    mm[100:105] = b"hello"
    gone: list[bytes] = []
    data, meta = native.views(mm, 100, 3, 2, gone.append, b"key")
    assert (bytes(data), bytes(meta), data.readonly, data.format) == (b"hel", b"lo", True, "B")
    with pytest.raises(TypeError):
        data[0] = 1
    del data
    assert gone == []  # the metadata view is left
    with pytest.raises(BufferError):
        mm.close()  # the views hold the map
    del meta
    assert gone == [b"key"]
    empty = native.views(mm, 0, 0, 0, gone.append, b"empty")  # (an empty object too)
    assert [len(v) for v in empty] == [0, 0]
    del empty
    assert gone == [b"key", b"empty"]
    mm.close()


@needs_native
def test_a_view_outside_its_segment_is_an_error_and_a_failing_callback_is_unraisable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert native is not None
    mm = mmap.mmap(-1, 4096)
    for offset, length in [(4000, 97), (-1, 1), (4097, 0)]:
        with pytest.raises(ValueError, match="not in the segment"):
            native.views(mm, offset, length, 0, print, None)
    with pytest.raises(ValueError, match=">= 0"):
        native.views(mm, 0, 1, -1, print, None)

    def fail(key: object) -> None:
        raise RuntimeError("callback failed")

    seen: list[object] = []
    monkeypatch.setattr("sys.unraisablehook", lambda u: seen.append(u.exc_value))
    views = native.views(mm, 0, 0, 0, fail, None)
    del views
    assert [str(e) for e in seen] == ["callback failed"]


@needs_native
def test_the_c_writer_writes_the_bytes_the_python_writer_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every other directory test runs the C writer where it is built: the Python one (the
    coordinator's where the C library is not built) must write the same bytes (but the
    header's random token and its ordered word)."""
    import plasma.directory as directory_module

    def churn() -> bytearray:
        d, buf = directory()
        slots = [
            d.insert(oid(n), n << 32 | 7, ObjectLocation(n, 64 * n, n, n % 3, n % 2))
            for n in range(1, 9)
        ]
        d.set_state(slots[0], 2)
        d.remove(slots[1])
        d.insert(oid(2), 99, ObjectLocation(2**32 - 1, 2**64 - 1, 2**64 - 1, 2**32 - 1, 65535), 1)
        d.set_state(slots[2], 2)
        d.set_state(slots[2], 1)
        d.supersede()
        buf[48:64] = bytes(16)
        return buf

    c_written = churn()
    monkeypatch.setattr(directory_module, "native", None)
    assert churn() == c_written


@needs_native
def test_a_client_dropped_without_close_goes_at_once_and_its_get_serves_nothing(
    coordinator: RunningCoordinator,
):
    with plasma.connect(coordinator.socket) as producer:
        producer.create_and_seal(oid(1), b"abc")
        producer.create_and_seal(oid(2), b"def")
        producer.flush()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # (its socket, unclosed)
            c = plasma.connect(coordinator.socket)
            assert bytes(c.get(oid(1), timeout=5)) == b"abc"
            get, gone = c.get, weakref.ref(c)
            del c
            assert gone() is None  # no cycle through its get method keeps it (and its socket)
        with pytest.raises(ReferenceError):
            get(oid(2))  # not served from the directory of a client that is gone
