"""Hugepage reservation (fake sysfs trees), hugepage segments and the placement report."""

from __future__ import annotations

import json
import mmap
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import plasma
from plasma.cli import main as cli_main
from plasma.errors import BadRequest, PermissionDenied, StoreFull, Unsupported
from plasma.hugepages import hugepage_counts, hugepages_dir, reserve_hugepages
from plasma.placement_report import placement_report
from plasma.segments import BASE_PAGE, SegmentPool
from tests.conftest import RunningCoordinator
from tests.helpers import HUGE

MiB = 1 << 20
GIG = 1 << 30


def fake_sysfs(root: Path, nodes: int = 2, sizes_kb: tuple[int, ...] = (2048, 1048576)) -> Path:
    """A sysfs tree with ``nodes`` nodes, each (and the global pool) holding no hugepages."""
    pools = [root / "sys/kernel/mm/hugepages"]
    pools += [root / f"sys/devices/system/node/node{n}/hugepages" for n in range(nodes)]
    for pool in pools:
        for kb in sizes_kb:
            d = pool / f"hugepages-{kb}kB"
            d.mkdir(parents=True)
            (d / "nr_hugepages").write_text("0\n")
            (d / "free_hugepages").write_text("0\n")
    return root


class StingyKernel:
    """Stands in for the kernel's sysfs write: grants at most ``limit`` pages per pool."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
        real_write: Callable[..., int] = Path.write_text

        def write_text(path: Path, text: str, *args: object, **kwargs: object) -> int:
            if path.name == "nr_hugepages":
                granted = min(int(text), limit)
                (path.parent / "free_hugepages").write_text(f"{granted}\n")
                text = f"{granted}\n"
            return real_write(path, text, *args, **kwargs)

        monkeypatch.setattr(Path, "write_text", write_text)


# ---------------------------------------------------------------- sysfs reservation


def test_reserve_per_node_writes_that_node_only(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path)
    result = reserve_hugepages(HUGE, 8, node=1, sysfs_root=root)
    assert (result.node, result.requested, result.granted, result.complete) == (1, 8, 8, True)
    node1 = root / "sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages"
    assert node1.read_text() == "8\n"
    assert hugepage_counts(HUGE, 0, root) == (0, 0)
    assert hugepage_counts(HUGE, None, root) == (0, 0)
    assert "node 1: 2048 kB hugepages: requested 8, granted 8" in result.describe()


def test_reserve_without_node_uses_global_pool(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path)
    result = reserve_hugepages(GIG, 2, sysfs_root=root)
    assert result.node is None and result.granted == 2
    assert (root / "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages").read_text() == "2\n"
    assert result.describe().startswith("all nodes: 1048576 kB hugepages")


def test_reserve_reports_what_the_kernel_granted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = fake_sysfs(tmp_path)
    StingyKernel(monkeypatch, limit=3)
    result = reserve_hugepages(HUGE, 10, node=0, sysfs_root=root)
    assert (result.requested, result.granted, result.free, result.complete) == (10, 3, 3, False)
    assert "the kernel found only 3" in result.describe()


@given(requested=st.integers(0, 100), limit=st.integers(0, 100))
def test_granted_is_always_the_read_back(requested: int, limit: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch, tempfile.TemporaryDirectory() as tmp:
        root = fake_sysfs(Path(tmp), nodes=1, sizes_kb=(2048,))
        StingyKernel(monkeypatch, limit)
        result = reserve_hugepages(HUGE, requested, node=0, sysfs_root=root)
        assert result.granted == min(requested, limit)
        assert result.complete == (requested <= limit)


@pytest.mark.parametrize(
    ("size", "count", "node", "error", "text"),
    [
        (3 * MiB, 1, 0, BadRequest, "power of two"),
        (BASE_PAGE, 1, 0, BadRequest, "power of two above"),
        (HUGE, -1, 0, BadRequest, "non-negative"),
        (HUGE, 1, 7, BadRequest, "NUMA node 7 does not exist"),
        (HUGE, 1, -1, BadRequest, "must not be negative"),
        (16 * GIG, 1, 0, Unsupported, "no 16777216 kB hugepages"),
    ],
)
def test_bad_requests_are_clear(
    tmp_path: Path, size: int, count: int, node: int, error: type[Exception], text: str
) -> None:
    root = fake_sysfs(tmp_path)
    with pytest.raises(error, match=text):
        reserve_hugepages(size, count, node, root)


def test_unsupported_size_lists_available_ones(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, sizes_kb=(2048,))
    with pytest.raises(Unsupported, match="available: 2048kB"):
        hugepages_dir(GIG, 1, root)


def test_permission_denied_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = fake_sysfs(tmp_path)

    def refuse(path: Path, *args: object, **kwargs: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "write_text", refuse)
    with pytest.raises(PermissionDenied, match=r"nr_hugepages.*needs root"):
        reserve_hugepages(HUGE, 1, 0, root)


def test_live_sysfs_counts_are_readable() -> None:
    nr, free = hugepage_counts(HUGE)
    assert 0 <= free <= nr or nr == 0


# ---------------------------------------------------------------- command line


def test_cli_reserves_each_node_and_prints_grants(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fake_sysfs(tmp_path)
    argv = ["hugepages", "--size", "2M", "--count", "4", "--node", "0", "--node", "1"]
    assert cli_main([*argv, "--sysfs-root", str(root), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["node"], r["granted"]) for r in rows] == [(0, 4), (1, 4)]
    assert hugepage_counts(HUGE, 1, root)[0] == 4


def test_cli_short_grant_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = fake_sysfs(tmp_path)
    StingyKernel(monkeypatch, limit=1)
    status = cli_main(["hugepages", "--size", "1G", "--count", "2", "--sysfs-root", str(root)])
    out, err = capsys.readouterr()
    assert status == 1
    assert "all nodes: 1048576 kB hugepages: requested 2, granted 1" in out
    assert "fewer hugepages than requested" in err


def test_cli_bad_size_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = fake_sysfs(tmp_path)
    status = cli_main(["hugepages", "--size", "two", "--count", "1", "--sysfs-root", str(root)])
    assert status == 1
    assert "error [bad_request]: --size: not a size: 'two'" in capsys.readouterr().err


# ---------------------------------------------------------------- segments on this host


def free_hugepages_or_skip() -> int:
    """Free 2 MiB hugepages on this host; skips when there are too many to exhaust cheaply."""
    try:
        free = hugepage_counts(HUGE)[1]
    except Unsupported as exc:
        pytest.skip(str(exc))
    if free > 8:
        pytest.skip(f"{free} free 2 MiB hugepages here: too many to exhaust in a test")
    return free


def mapped_memfds() -> str:
    return Path("/proc/self/maps").read_text()


def test_placement_report_of_normal_segments_maps_nothing_afterwards() -> None:
    pool = SegmentPool()
    try:
        first = pool.new_segment(0, 4 * MiB)
        pool.new_segment(0, 2 * MiB)
        name = f"plasma-{os.getpid()}-{first}"
        assert name not in mapped_memfds()
        rows = placement_report(pool)
        assert name not in mapped_memfds(), "the report left a segment mapped"
    finally:
        pool.close()
    pages = [4 * MiB // BASE_PAGE, 2 * MiB // BASE_PAGE]
    assert [r["pages"] for r in rows] == pages
    for row, n in zip(rows, pages, strict=True):
        assert row["node"] == 0 and row["page_size"] == BASE_PAGE
        assert row["pages_per_node"] == {0: n}
        assert row["misplaced"] == row["unresolved"] == 0


def test_placement_report_of_empty_pool() -> None:
    assert placement_report(SegmentPool()) == []


def test_hugepage_shortage_is_store_full_not_sigbus() -> None:
    free = free_hugepages_or_skip()
    pool = SegmentPool(hugepage_size=HUGE)
    try:
        with pytest.raises(StoreFull, match="not enough 2 MiB hugepages on node 0"):
            pool.new_segment(0, (free + 1) * HUGE)
        assert list(pool) == []
    finally:
        pool.close()


def test_hugepage_fallback_gives_normal_pages() -> None:
    free = free_hugepages_or_skip()
    pool = SegmentPool(hugepage_size=HUGE, hugepage_fallback=True)
    try:
        seg = pool.get(pool.new_segment(0, (free + 1) * HUGE))
        assert seg.page_size == BASE_PAGE
        [row] = placement_report(pool)
        assert row["page_size"] == BASE_PAGE and row["pages_per_node"] == {0: row["pages"]}
    finally:
        pool.close()


def test_a_hugepage_spare_is_reserved_ahead_or_says_why_not() -> None:
    """A spare of hugepages is reserved with fallocate (in the pool's worker thread) like a
    segment: a shortage is the spare's error (the create then says it again), and with
    fallback the spare is made of normal pages."""
    free = free_hugepages_or_skip()
    pool = SegmentPool(hugepage_size=HUGE)
    try:
        pool.prepare_spare(0, (free + 1) * HUGE)
        pool.collect_spare(0)
        assert pool.spares() == {} and "not enough 2 MiB hugepages on node 0" in pool.spare_error
        with pytest.raises(StoreFull, match="not enough 2 MiB hugepages"):
            pool.new_segment(0, (free + 1) * HUGE)
    finally:
        pool.close()
    pool = SegmentPool(hugepage_size=HUGE, hugepage_fallback=True)
    try:
        pool.prepare_spare(0, (free + 1) * HUGE)
        pool.collect_spare(0)
        assert pool.spares() == {0: (free + 1) * HUGE} and not pool.spare_error
        seg = pool.get(pool.new_segment(0, (free + 1) * HUGE))
        assert seg.page_size == BASE_PAGE and os.fstat(seg.fd).st_blocks * 512 >= seg.size
    finally:
        pool.close()


def test_coordinator_hugepage_shortage_is_a_clear_error(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    free = free_hugepages_or_skip()
    size = (free + 1) * HUGE
    coord = coordinator_factory(
        "--memory", str(2 * size), "--segment-size", str(size), "--hugepages", "2M"
    )
    with plasma.connect(coord.socket) as client:
        with pytest.raises(StoreFull, match="hugepages on node 0"):
            client.create(plasma.ObjectID.from_random(), size - MiB, node=0)
        assert client.list() == {}
    assert coord.stop() == 0


def test_coordinator_hugepage_fallback_serves_normal_pages(
    coordinator_factory: Callable[..., RunningCoordinator],
) -> None:
    free = free_hugepages_or_skip()
    size = (free + 1) * HUGE
    coord = coordinator_factory(
        "--memory",
        str(size),
        "--segment-size",
        str(size),
        "--hugepages",
        "2M",
        "--hugepages-fallback",
    )
    with plasma.connect(coord.socket) as client:
        oid = client.put(b"x" * MiB, node=0)
        assert bytes(client.get(oid)) == b"x" * MiB
        assert [s["page_size"] for s in client.stats()["segments"]] == [mmap.PAGESIZE]
    assert coord.stop() == 0
