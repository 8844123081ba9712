"""Spilling, restoring and fallback segments with a real coordinator: a working set larger
than memory streamed through the store with every byte checked, restarts with --restore
(also after SIGKILL during a spill), a spill file removed by hand, a full disk, a reader
holding a view of an object the store would spill, fallback segments."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import msgspec
import numpy as np
import pytest

import plasma
from plasma import spill_files as files_module
from plasma.cli import build_parser
from plasma.cli.serve import config_from_args
from plasma.coordinator import Coordinator
from plasma.errors import ObjectLost, StoreFull
from plasma.protocol import ObjectLocation
from plasma.records import SpillEntry
from plasma.spiller import CACHED_RESTORE_MAX
from plasma.store import Restore
from tests.conftest import RunningCoordinator, wait_until
from tests.helpers import MIB

OBJECT = MIB  # bytes of each test object's data


def oid(n: int) -> plasma.ObjectID:
    return plasma.ObjectID.from_name(f"spill-{n}")


def content(n: int) -> np.ndarray:
    """Object n's data: derived from n everywhere, so a wrong or torn byte shows."""
    return (np.arange(OBJECT // 4, dtype=np.uint32) * 2654435761 + n).astype(np.uint32)


def put(client: plasma.Client, n: int) -> None:
    client.put(content(n), oid(n))


def intact(client: plasma.Client, n: int) -> bool:
    value = client.get_object(oid(n), timeout=30)
    try:
        return bool(np.array_equal(value, content(n)))
    finally:
        del value


@pytest.fixture
def running(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> Callable[..., RunningCoordinator]:
    """Start a coordinator with 16 MiB of memory (and ``args``); stopped after the test."""

    def start(*args: str, name: str = "s.sock") -> RunningCoordinator:
        return coordinator_factory("--memory", "16MiB", "--segment-size", "4MiB", *args, name=name)

    return start


def spill_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("spill-"))


def test_three_times_memory_streams_through_and_every_byte_comes_back(running, tmp_path):
    spill = tmp_path / "spill"
    coord = running("--spill-dir", str(spill))
    with plasma.connect(coord.socket) as client:
        for n in range(48):  # 48 MiB through 16 MiB of memory
            put(client, n)
        listed = client.list()
        states = [listed[oid(n)]["state"] for n in range(48)]
        assert states.count("spilled") >= 32 and "sealed" in states
        assert client.contains(oid(0))
        stats = client.stats()
        assert stats["evictions"] == 0 and stats["spill"]["objects"] == states.count("spilled")
        assert stats["spill"]["files"] < stats["spill"]["written_objects"]  # fused
        assert all(intact(client, n) for n in range(48))
        stats = client.stats()["spill"]
        assert stats["restored_objects"] >= 32
        assert stats["spill_bytes_per_second"] > 0 and stats["restore_bytes_per_second"] > 0
        client.delete([oid(n) for n in range(48)])
        assert client.stats()["spill"]["files"] == 0
    wait_until(lambda: not spill_files(spill), what="the spill files to be removed")
    assert coord.stop() == 0


def test_objects_larger_than_a_cached_restore_come_back_through_threads(running, tmp_path):
    """Objects over CACHED_RESTORE_MAX are read back in worker threads, in parts (the
    1 MiB objects above are read on the event loop from the page cache)."""
    size = CACHED_RESTORE_MAX + 3 * MIB // 2  # two parts of RESTORE_PART at most, here
    coord = running("--spill-dir", str(tmp_path / "spill"))
    with plasma.connect(coord.socket) as client:
        for n in range(12):  # 42 MiB through 16 MiB of memory
            client.put(np.full(size // 8, n, dtype=np.uint64), oid(n))
        assert client.stats()["spill"]["objects"] >= 6
        for n in range(12):
            value = client.get_object(oid(n), timeout=30)
            assert value.shape == (size // 8,) and (value == n).all()
            del value
        assert client.stats()["spill"]["restored_objects"] >= 6
    assert coord.stop() == 0


@pytest.mark.parametrize(
    "error", [BlockingIOError(errno.EAGAIN, "x"), OSError(errno.EOPNOTSUPP, "x")]
)
def test_a_restore_the_page_cache_cannot_serve_goes_to_the_threads(tmp_path, error):
    args = ["serve", "--socket", str(tmp_path / "s.sock"), "--memory", "16MiB"]
    argv = [*args, "--spill-dir", str(tmp_path / "d")]
    coordinator = Coordinator(config_from_args(build_parser("serve").parse_args(argv)))
    spiller = coordinator.spiller
    assert spiller is not None
    try:
        segment = coordinator.pool.new_segment(0, 4 * MIB)
        seg = coordinator.pool.get(segment)
        entry = SpillEntry(b"x" * 20, 100, 0, 0, 0.0, 8, 100, 0)
        event = Restore(1, entry.id, ObjectLocation(segment, 0, 100, 0, 0), 1, entry)
        target = memoryview(seg.mapping())[:100]
        with mock.patch.object(files_module, "read_into", side_effect=error):
            assert spiller._read_cached(event, seg, target) is None  # (then _read_parts)
        with mock.patch.object(files_module, "read_into", return_value=7) as read:
            assert spiller._read_cached(event, seg, target) == [(7, 100)]
        assert read.call_args.kwargs == {"cached_only": True}
        big = msgspec.structs.replace(entry, length=CACHED_RESTORE_MAX + 1)
        assert spiller._read_cached(msgspec.structs.replace(event, entry=big), seg, target) is None
        target.release()
    finally:
        spiller.close()
        coordinator.pool.close()
        coordinator.tables.close()


def test_a_restart_with_restore_brings_back_what_was_spilled(running, tmp_path):
    spill = tmp_path / "spill"
    coord = running("--spill-dir", str(spill))
    with plasma.connect(coord.socket) as client:
        for n in range(32):
            put(client, n)
        client.delete([oid(0)])  # deleted while its file lives on: must not come back
        on_disk = {o for o, v in client.list().items() if v["state"] == "spilled"}
    assert coord.stop() == 0
    files = spill_files(spill)
    assert len(files) >= 2
    with pytest.raises(RuntimeError, match="--restore"):
        running("--spill-dir", str(spill))  # spilled objects are never dropped silently
    damaged = spill / files[-1]
    with contextlib.closing(files_module.open_directory(str(spill))) as directory:
        entries = files_module.scan(directory)[0][int(files[-1][6:16])][0]
    (hit,) = [plasma.ObjectID(e.id) for e in entries if e.offset == 8]
    with open(damaged, "r+b") as f:  # one flipped byte in the last file's first payload
        f.seek(8)
        first = f.read(1)
        f.seek(8)
        f.write(bytes([first[0] ^ 0xFF]))
    coord = running("--spill-dir", str(spill), "--restore")
    with plasma.connect(coord.socket) as client:
        listed = client.list()
        assert hit in on_disk and hit not in listed  # quarantined, never served
        kept = {plasma.ObjectID(e.id) for e in entries} - {hit}
        assert kept and kept <= set(listed)  # the rest of its file is kept
        on_disk.discard(hit)
        # what was only on disk, and what was in memory with a copy on disk too
        assert on_disk <= set(listed) and oid(0) not in listed
        assert all(v["state"] == "spilled" for v in listed.values())
        assert all(intact(client, n) for n in range(1, 32) if oid(n) in listed)
    assert coord.stop() == 0
    assert f"object {hit.hex()} quarantined" in coord.log()


@pytest.mark.parametrize("survives", ["crash", "reboot"])
def test_sigkill_during_a_spill_loses_nothing_that_was_fully_spilled(running, tmp_path, survives):
    """Either way (with or without fsync: the page cache outlives the coordinator)."""
    spill = tmp_path / "spill"
    coord = running(
        "--spill-dir", str(spill), "--spill-threshold", "0.25", "--spill-survives", survives
    )
    with plasma.connect(coord.socket) as client:
        for n in range(12):
            put(client, n)
        fully_spilled = {o for o, v in client.list().items() if v["state"] == "spilled"}
        for n in range(12, 40):
            put(client, n)
            # (a batch into the page cache takes a few ms: look while it may be under way)
            if any(client.stats()["spill"]["in_flight"] for _ in range(20)):
                break
        else:
            pytest.fail("no spill was ever in flight to kill")
        fully_spilled |= {o for o, v in client.list().items() if v["state"] == "spilled"}
        assert coord.stop(signal.SIGKILL) == -signal.SIGKILL
    coord = running("--spill-dir", str(spill), "--restore")
    assert not [p for p in spill.iterdir() if p.name.endswith(".tmp")]
    with plasma.connect(coord.socket) as client:
        back = set(client.list())
        assert fully_spilled <= back
        names = {oid(n): n for n in range(40)}
        assert all(intact(client, names[o]) for o in back)


def test_a_spill_file_removed_by_hand_fails_only_its_objects(running, tmp_path):
    spill = tmp_path / "spill"
    coord = running("--spill-dir", str(spill))
    with plasma.connect(coord.socket) as client:
        for n in range(24):
            put(client, n)
        spilled = [n for n in range(24) if client.list()[oid(n)]["state"] == "spilled"]
        victim = spill / spill_files(spill)[0]
        victim.unlink()
        lost = [n for n in spilled if not _readable(client, n)]
        assert lost and len(lost) < len(spilled)
        assert all(oid(n) not in client.list() for n in lost)
        assert all(intact(client, n) for n in range(24) if n not in lost)
        assert client.stats()["spill"]["lost"] == len(lost)
    assert coord.stop() == 0
    assert "is gone" in coord.log()


def _readable(client: plasma.Client, n: int) -> bool:
    try:
        return intact(client, n)
    except ObjectLost as exc:
        assert oid(n).binary().hex() in str(exc) or "object_lost" in str(exc)
        return False


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs: a disk that fills up."""
    where = tmp_path / "disk"
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6M,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_keeps_every_object_in_memory_and_says_so(running, small_disk):
    coord = running("--spill-dir", str(small_disk))
    with plasma.connect(coord.socket) as client:
        created = 0
        with pytest.raises(StoreFull) as failure:
            for n in range(40):
                put(client, n)
                created += 1
        message = str(failure.value)
        assert "No space left on device" in message and "spilled to disk" in message
        assert created >= 16
        stats = client.stats()
        assert stats["spill"]["errors"] >= 1 and stats["evictions"] == 0
        # nothing lost: what could not be spilled is in memory, the rest on disk
        listed = client.list()
        assert all(oid(n) in listed for n in range(created))
        in_memory = [n for n in range(created) if listed[oid(n)]["state"] == "sealed"]
        assert all(intact(client, n) for n in in_memory)
        client.delete([oid(n) for n in in_memory])  # room to bring the others back
        assert all(intact(client, n) for n in range(created) if n not in in_memory)
    assert coord.stop() == 0
    assert "stay in memory" in coord.log()


def test_an_object_a_reader_holds_is_not_spilled_until_released(running, tmp_path):
    coord = running("--spill-dir", str(tmp_path / "spill"))
    with plasma.connect(coord.socket) as reader, plasma.connect(coord.socket) as writer:
        put(writer, 0)
        view = reader.get_object(oid(0))
        for n in range(1, 40):
            put(writer, n)
        assert writer.list()[oid(0)]["state"] == "sealed"
        assert np.array_equal(view, content(0))
        del view
        reader.release(oid(0))
        # released (its pin dropped when the coordinator sees the reader's unpin, and its
        # access bit giving it one more turn of the CLOCK): spilled as more objects come
        for n in range(40, 300):
            put(writer, n)
            if writer.list()[oid(0)]["state"] == "spilled":
                break
        assert writer.list()[oid(0)]["state"] == "spilled"
        assert intact(reader, 0)


def test_fallback_segments_serve_creates_when_everything_is_referenced(running, tmp_path):
    fallback = tmp_path / "fallback"
    fallback.mkdir()
    coord = running("--fallback-dir", str(fallback))
    with plasma.connect(coord.socket) as client, plasma.connect(coord.socket) as other:
        held = [client.create(oid(n), OBJECT) for n in range(16)]  # all of memory, unsealed
        buf = client.create(oid(99), OBJECT)
        buf[:] = content(99).view(np.uint8)
        client.seal(oid(99))
        stats = client.stats()
        assert stats["fallback"]["bytes"] >= OBJECT and stats["fallback"]["segments"] == 1
        data = other.get(oid(99), timeout=5)
        assert np.array_equal(np.frombuffer(data, dtype=np.uint32), content(99))
        assert not os.listdir(fallback)  # unnamed files: nothing to leak on a crash
        del data, buf, held
        other.release(oid(99))
        client.release(oid(99))
        client.delete([oid(99)])
        wait_until(lambda: client.stats()["fallback"]["segments"] == 0, what="fallback freed")
    assert coord.stop() == 0


def test_spill_options_are_checked_before_the_store_starts(running, tmp_path):
    for args, error in [
        (["--restore"], "need --spill-dir"),
        (["--spill-survives", "reboot"], "need --spill-dir"),
        (["--spill-dir", str(tmp_path), "--spill-threshold", "0"], "--spill-threshold"),
        (["--fallback-dir", str(tmp_path / "nowhere")], "not a directory"),
    ]:
        with pytest.raises(RuntimeError, match=error):
            running(*args)


@pytest.mark.parametrize(("argv", "sync"), [([], False), (["--spill-survives", "reboot"], True)])
def test_what_spills_survive_is_the_coordinators_choice(tmp_path, argv, sync):
    """The spiller of a coordinator built from ``serve`` fsyncs only when asked to survive
    a reboot (a crash of the coordinator needs no fsync: see the SIGKILL test above, which
    runs with the default)."""
    args = ["serve", "--socket", str(tmp_path / "s.sock"), "--memory", "16MiB"]
    config = config_from_args(
        build_parser("serve").parse_args([*args, "--spill-dir", str(tmp_path / "d"), *argv])
    )
    coordinator = Coordinator(config)
    try:
        assert coordinator.spiller is not None and coordinator.spiller.sync is sync
    finally:
        coordinator.spiller.close()
        coordinator.pool.close()
        coordinator.tables.close()


def test_two_coordinators_cannot_share_a_spill_directory(running, tmp_path):
    running("--spill-dir", str(tmp_path / "spill"))
    with pytest.raises(RuntimeError, match="in use by another coordinator"):
        running("--spill-dir", str(tmp_path / "spill"), name="t.sock")


def small(n: int) -> bytes:
    """Object n of the many-objects test: 1 KiB derived from n."""
    return n.to_bytes(4, "little") * 256


def test_many_spilled_objects_come_back_are_deleted_and_stay_deleted(
    coordinator_factory: Callable[..., RunningCoordinator], tmp_path: Path
) -> None:
    """More objects only on disk than the 4,096 records a coordinator keeps, so most are
    kept with no record (plasma/store/spilled.py): each read back is its own bytes (the
    place in its file kept right), each deleted one is marked dead in its file (not back
    after a restart), and a restart adopts them all again."""
    spill = tmp_path / "spill"
    args = ("--memory", "8MiB", "--segment-size", "4MiB", "--spill-dir", str(spill))
    n = 20_000
    deleted = [oid(i) for i in range(100, 400, 3)]  # (not a run: a wrong index shows)
    coord = coordinator_factory(*args)
    with plasma.connect(coord.socket) as client:
        for start in range(0, n, 1000):
            client.create_and_seal_many(
                (oid(i), small(i)) for i in range(start, min(n, start + 1000))
            )
        client.flush()
        spilled = sorted(o for o, v in client.list().items() if v["state"] == "spilled")
        assert len(spilled) > 10_000  # (8 MiB holds under 8,192 of them)
        assert all(bytes(client.get(oid(i), timeout=30)) == small(i) for i in range(0, 60, 3))
        client.delete(deleted)
        assert not any(client.contains(o) for o in deleted)
    assert coord.stop() == 0
    coord = coordinator_factory(*args, "--restore")
    with plasma.connect(coord.socket) as client:
        listed = client.list()  # (and what was in memory with a copy on disk too)
        assert set(spilled) - set(deleted) <= set(listed)
        assert not any(o in listed for o in deleted)
        back = [i for i in range(200, n) if oid(i) in listed][::500] + list(range(0, 60, 3))
        assert all(oid(i) in listed for i in range(0, 60, 3))  # (read back: copy kept)
        for i in back:
            assert bytes(client.get(oid(i), timeout=30)) == small(i), i
    assert coord.stop() == 0
