"""Parallel copies of large puts (plasma.parallel_copy): the chunk plan, exact bytes, errors
reaching the caller, forks, thread affinity, and both clients using it."""

from __future__ import annotations

import itertools
import os
import select
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import plasma
import plasma.aio
from plasma import parallel_copy as pc
from tests.conftest import RunningCoordinator
from tests.helpers import open_client

MIN = pc.MIN_CHUNK


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("plasma-copy-")]


@pytest.fixture
def fresh_pool() -> Iterator[None]:
    """No copy thread running before the test, none left after it."""
    pc.shutdown()
    yield
    pc.shutdown()
    assert not workers()


@pytest.fixture
def chunk_log(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, frozenset[int]]]:
    """Each chunk copied: (thread name, bytes, the thread's affinity)."""
    log: list[tuple[str, int, frozenset[int]]] = []
    real = pc._copy_chunk

    def logged(dst: np.ndarray, src: np.ndarray) -> None:
        affinity = frozenset(os.sched_getaffinity(0))
        log.append((threading.current_thread().name, dst.size, affinity))
        real(dst, src)

    monkeypatch.setattr(pc, "_copy_chunk", logged)
    return log


def random_bytes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


# ------------------------------------------------------------------ the plan


@given(
    nbytes=st.integers(0, 1 << 36),
    parts=st.integers(1, 64),
    align=st.sampled_from([1, 4096, 64 << 10]),
    pages=st.integers(1, 256),
)
def test_chunks_cover_the_range_in_order_aligned_and_no_smaller_than_the_minimum(
    nbytes, parts, align, pages
):
    min_chunk = align * pages
    chunks = pc.plan_chunks(nbytes, parts, min_chunk, align)
    assert len(chunks) == max(1, min(parts, nbytes // min_chunk))  # as many as allowed
    assert chunks[0][0] == 0 and chunks[-1][1] == nbytes
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert all(start % align == 0 for start, _ in chunks)
    sizes = [stop - start for start, stop in chunks]
    if len(chunks) > 1:
        assert min(sizes) >= min_chunk
        assert max(sizes) - min(sizes) < len(chunks) * (align + 1)  # balanced


@pytest.mark.parametrize(
    ("nbytes", "parts", "min_chunk", "align"),
    [(-1, 2, 8, 4), (10, 0, 8, 4), (10, 2, 6, 4), (10, 2, 2, 4), (10, 2, 8, 0)],
)
def test_a_bad_plan_is_refused(nbytes, parts, min_chunk, align):
    with pytest.raises(ValueError, match="plan_chunks"):
        pc.plan_chunks(nbytes, parts, min_chunk, align)


# ------------------------------------------------------------------ copies


@pytest.mark.parametrize(
    "size", [2 * MIN - 1, 2 * MIN, 2 * MIN + 1, 3 * MIN + pc.ALIGN + 7, 4 * MIN - 3]
)
@pytest.mark.parametrize("threads", [2, 3])
def test_copies_are_byte_exact_around_chunk_boundaries(size, threads, chunk_log):
    src = random_bytes(size, seed=size)
    dst = np.zeros(size + 2, np.uint8)  # a guard byte either side
    pc.copy(memoryview(dst)[1:-1], src, threads)
    assert dst[0] == 0 and dst[-1] == 0
    assert np.array_equal(dst[1:-1], src)
    expected = pc.plan_chunks(size, min(threads, len(os.sched_getaffinity(0))))
    assert sorted(n for _, n, _ in chunk_log) == sorted(b - a for a, b in expected)
    assert len({name for name, _, _ in chunk_log}) == len(expected)  # one thread per chunk


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_many_small_buffers_are_copied_in_parallel_as_one_run(chunk_log):
    """A state dict's tensors, each below a chunk: copy_many splits their bytes as one run,
    a chunk ending inside one buffer and the next starting there, every byte in place."""
    sizes = [MIN // 2 + 4097 * i for i in range(7)]  # 3.5 chunks, no boundary at a buffer's
    srcs = [random_bytes(n, seed=n) for n in sizes]
    dsts = [np.zeros(n + 2, np.uint8) for n in sizes]  # a guard byte either side
    pc.copy_many([(memoryview(d)[1:-1], s) for d, s in zip(dsts, srcs, strict=True)], 2)
    for d, s in zip(dsts, srcs, strict=True):
        assert d[0] == 0 and d[-1] == 0 and np.array_equal(d[1:-1], s)
    assert len({name for name, _, _ in chunk_log}) == 2  # this thread and one of the pool
    assert sum(n for _, n, _ in chunk_log) == sum(sizes)
    assert len(chunk_log) == len(sizes) + 1  # the buffer at the chunk boundary in two pieces
    with pytest.raises(ValueError, match="copy of 3 bytes"):
        pc.copy_many([(memoryview(bytearray(4)), b"abc")], 2)


def test_small_copies_and_one_thread_stay_in_the_callers_thread(fresh_pool, chunk_log):
    src = random_bytes(4 * MIN)
    dst = np.zeros_like(src)
    pc.copy(dst[: 2 * MIN - 1], src[: 2 * MIN - 1], threads=8)
    pc.copy(dst, src, threads=1)
    assert np.array_equal(dst, src)
    assert [name for name, _, _ in chunk_log] == [threading.current_thread().name] * 2
    assert not workers()


def test_sizes_must_match():
    with pytest.raises(ValueError, match="copy of 3 bytes into a buffer of 2"):
        pc.copy(bytearray(2), b"abc", threads=2)


@pytest.mark.parametrize("where", ["worker", "caller"])
def test_an_error_in_a_chunk_reaches_the_caller_after_every_chunk_is_done(
    where, fresh_pool, monkeypatch
):
    real = pc._copy_chunk
    worker_done = threading.Event()
    caller_failed = threading.Event()

    def failing(dst: np.ndarray, src: np.ndarray) -> None:
        in_worker = threading.current_thread().name.startswith("plasma-copy-")
        if in_worker and where == "caller":
            caller_failed.wait()  # the caller has raised: copy() must still wait for this
        if in_worker == (where == "worker"):
            caller_failed.set()
            raise RuntimeError(f"chunk failed in the {where}")
        real(dst, src)
        if in_worker:
            worker_done.set()

    monkeypatch.setattr(pc, "_copy_chunk", failing)
    src = random_bytes(2 * MIN)
    dst = np.zeros_like(src)
    with pytest.raises(RuntimeError, match=f"chunk failed in the {where}"):
        pc.copy(dst, src, threads=2)
    if where == "caller":
        assert worker_done.is_set()
        assert np.array_equal(dst[MIN:], src[MIN:])
    monkeypatch.setattr(pc, "_copy_chunk", real)
    pc.copy(dst, src, threads=2)  # the pool still works...
    assert np.array_equal(dst, src)
    stopper = threading.Thread(target=pc.shutdown)
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive() and not workers()  # ...and no thread is stuck


def test_a_forked_child_copies_with_threads_of_its_own(fresh_pool):
    src = random_bytes(2 * MIN, seed=7)
    dst = np.zeros_like(src)
    pc.copy(dst, src, threads=2)  # the parent's pool has a thread now
    assert workers()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, never return into pytest
        code = 1
        try:
            out = np.zeros_like(src)
            pc.copy(out, src, threads=2)
            code = 0 if np.array_equal(out, src) and workers() else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(0)
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 20)
        answer = os.read(read_end, 1) if ready else b""
    finally:
        os.close(read_end)
        if not answer:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert answer == b"\x00", "the child's copy hung or was wrong"


def test_copy_threads_pin_themselves_to_the_nodes_allowed_cpus(fresh_pool, chunk_log):
    allowed = frozenset(os.sched_getaffinity(0))
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    src = random_bytes(2 * MIN)
    dst = np.zeros_like(src)
    node_cpus = {min(allowed)}
    pc.copy(dst, src, threads=2, cpus=node_cpus)
    pc.copy(dst, src, threads=2, cpus={max(allowed) + 1000})  # none allowed: all allowed
    pc.copy(dst, src, threads=2)  # no node known: all allowed
    caller = threading.current_thread().name
    pinned = [affinity for name, _, affinity in chunk_log if name != caller]
    assert pinned == [node_cpus, allowed, allowed]
    assert os.sched_getaffinity(0) == allowed  # the caller's own affinity is left alone


def test_copy_threads_come_from_the_argument_the_environment_or_the_cpus(monkeypatch):
    monkeypatch.delenv(pc.ENV_THREADS, raising=False)
    assert pc.copy_threads() == min(len(os.sched_getaffinity(0)), pc.MAX_DEFAULT_THREADS)
    monkeypatch.setenv(pc.ENV_THREADS, " 3 ")
    assert pc.copy_threads() == 3
    assert pc.copy_threads(5) == 5
    monkeypatch.setenv(pc.ENV_THREADS, "many")
    with pytest.raises(plasma.BadRequest, match="PLASMA_COPY_THREADS must be a whole number"):
        pc.copy_threads()
    for bad in (0, -2, 2.0, True):
        with pytest.raises(plasma.BadRequest, match="copy_threads must be a whole number"):
            pc.copy_threads(bad)  # type: ignore[arg-type]


# ------------------------------------------------------------------ through the clients


@pytest.mark.parametrize("kind", ["blocking", "trio"])
async def test_large_values_round_trip_through_threaded_copies(
    coordinator: RunningCoordinator, kind: str, chunk_log
):
    big = np.random.default_rng(1).random(MIN // 4 + 5)  # 16 MiB + 40 bytes of float64
    fortran = np.asfortranarray(big[:-5].reshape(1024, -1))
    values: list[tuple[Any, Callable[[Any], bool]]] = [
        (big, lambda got: np.array_equal(got, big)),
        (fortran, lambda got: np.array_equal(got, fortran) and got.flags.f_contiguous),
        (big.tobytes(), lambda got: bytes(got) == big.tobytes()),
        ({"array": big, "n": 1}, lambda got: np.array_equal(got["array"], big)),
    ]
    async with open_client(kind, coordinator.socket, copy_threads=2) as c:
        for value, matches in values:
            chunk_log.clear()
            got = await c.get_object(await c.put(value), timeout=5)
            assert matches(got)
            assert len({name for name, _, _ in chunk_log}) == 2  # caller and a pool thread
            del got
        chunk_log.clear()
        await c.create_and_seal(plasma.ObjectID.from_name("raw"), big.tobytes())
        assert bytes(await c.get(plasma.ObjectID.from_name("raw"), timeout=5)) == big.tobytes()
        assert len({name for name, _, _ in chunk_log}) == 2
        strided = big[::2]  # not contiguous: numpy writes it as before, no chunk copied
        chunk_log.clear()
        assert np.array_equal(await c.get_object(await c.put(strided), timeout=5), strided)
        assert not chunk_log
        maps = list(c.raw._core.maps.segments.values())
    assert all(mm.closed for mm in maps)  # the copy threads keep no view of a segment


@pytest.mark.parametrize("kind", ["blocking", "trio"])
async def test_one_copy_thread_copies_in_the_callers_thread(
    coordinator: RunningCoordinator, kind: str, chunk_log
):
    big = np.random.default_rng(2).random(MIN // 4)
    async with open_client(kind, coordinator.socket, copy_threads=1) as c:
        assert np.array_equal(await c.get_object(await c.put(big), timeout=5), big)
    assert [name for name, _, _ in chunk_log] == [threading.current_thread().name]


@pytest.mark.parametrize("kind", ["blocking", "trio"])
async def test_a_bad_copy_threads_fails_before_connecting(tmp_path, kind: str):
    with pytest.raises(plasma.BadRequest, match="copy_threads"):
        async with open_client(kind, str(tmp_path / "absent.sock"), copy_threads=0):
            pass
