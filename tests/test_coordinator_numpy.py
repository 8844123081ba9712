"""The coordinator does not import numpy (issue 29): 15 MiB of an empty coordinator's private
memory. Its bulk work (pin scans, a directory rebuild's placement, the generation index's
compaction) is C (plasma/_native/bulk.c); clients still use numpy. Nor does one that does
not spill import the spiller's checksum package (with importlib.metadata, 1.7 MiB)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

import plasma
from plasma._native import native
from plasma.directory import MAX_LOAD, MIN_CAPACITY
from plasma.store.generations import COMPACT_MIN
from tests.conftest import RunningCoordinator
from tests.helpers import object_id as oid

pytestmark = pytest.mark.coordinator


def package_maps(pid: int, package: str = "numpy") -> list[str]:
    """The files of ``package`` that process ``pid`` maps (its extension modules)."""
    with open(f"/proc/{pid}/maps") as maps:
        return sorted({line.split()[-1] for line in maps if f"/{package}/" in line})


def test_a_coordinator_that_rebuilt_scanned_and_compacted_never_imported_numpy(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    """A real coordinator (its own process, not forked from the tests' zygote) publishes
    enough objects to rebuild its directory, answers deletes of pinned objects (pin scans),
    frees most objects (the generation index compacts), lists and counts pins: numpy's
    modules are never mapped in it (without the extension it falls back to numpy)."""
    if native is None:
        pytest.skip("the C extension is not built or turned off")
    coord = coordinator_factory("--memory", "64MiB", "--segment-size", "4MiB", wrapper=["env"])
    n = int(MIN_CAPACITY * MAX_LOAD) + 100  # past the first directory's load limit
    assert n - 10 > 2 * COMPACT_MIN
    with (
        plasma.connect(coord.socket) as producer,
        plasma.connect(coord.socket, release_delay=0) as reader,
    ):
        for start in range(0, n, 1000):
            producer.create_and_seal_many(
                (oid(i), b"x%d" % i) for i in range(start, min(n, start + 1000))
            )
        producer.flush()
        views = [reader.get(oid(i), timeout=0) for i in range(10)]  # pinned, no request
        assert [bytes(v) for v in views] == [b"x%d" % i for i in range(10)]
        listed = producer.list()  # (with each object's pins counted)
        assert len(listed) == n and sum(o["ref_count"] for o in listed.values()) >= 9
        producer.delete([oid(i) for i in range(n)])  # the first 10 wait for their pins
        stats = producer.stats()
        assert stats["directory"]["rebuilds"] >= 1 and stats["pins"] >= 9, stats
        assert stats["dying"] >= 9, stats
        del views  # (unpinned: the coordinator scans again)
        reader.flush()
        assert producer.stats()["pins"] == 0
        assert package_maps(coord.proc.pid) == []
        assert package_maps(coord.proc.pid, "crc32c") == []  # (it spills nothing)
    assert coord.stop() == 0


def test_a_coordinator_that_spills_loads_its_checksums(
    coordinator_factory: Callable[..., RunningCoordinator], tmp_path: Path
) -> None:
    """With ``--spill-dir`` the checksum package is loaded at start (what the test above
    looks for is there to be found)."""
    spill = tmp_path / "spill"
    spill.mkdir(mode=0o700)
    coord = coordinator_factory("--memory", "64MiB", "--spill-dir", str(spill), wrapper=["env"])
    assert package_maps(coord.proc.pid, "crc32c") != []
    assert coord.stop() == 0
