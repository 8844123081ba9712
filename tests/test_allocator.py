"""Allocator: unit tests, a hypothesis state machine against a bitmap model, a scale check."""

from __future__ import annotations

import random
import sys
import types
from collections.abc import Callable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from plasma.allocator import Allocator


def test_allocate_rounds_and_aligns() -> None:
    a = Allocator(1024)
    assert a.allocate(1) == 0
    assert a.allocate(65) == 64
    assert a.allocate(64) == 192
    assert a.free_bytes == 1024 - 256
    assert a.free_ranges() == [(256, 768)]


def test_size_rounded_down_and_full() -> None:
    a = Allocator(1000)
    assert a.size == 960
    assert a.allocate(960) == 0
    assert a.allocate(1) is None
    assert a.largest_free == 0
    assert Allocator(0).allocate(1) is None


def test_best_fit_prefers_smallest_then_lowest() -> None:
    a = Allocator(64 * 20)
    offs = [a.allocate(64) for _ in range(20)]
    # holes: 2 blocks at 0, 1 block at 5*64, 3 blocks at 10*64, 1 block at 15*64
    for i in (0, 1, 5, 10, 11, 12, 15):
        a.free(offs[i] or 0, 64)
    assert a.allocate(64) == 5 * 64
    assert a.allocate(64) == 15 * 64
    assert a.allocate(128) == 0
    assert a.allocate(192) == 10 * 64


def test_coalesces_both_sides() -> None:
    a = Allocator(64 * 3)
    x, y, z = (a.allocate(64) for _ in range(3))
    a.free(x or 0, 64)
    a.free(z or 0, 64)
    assert a.free_ranges() == [(0, 64), (128, 64)]
    a.free(y or 0, 64)
    assert a.free_ranges() == [(0, 192)]
    assert a.largest_free == 192


@pytest.mark.parametrize(
    ("offset", "size", "message"),
    [
        (0, 64, "double free"),  # already free
        (32, 64, "not aligned"),
        (-64, 64, "negative"),
        (960, 128, "outside"),
        (0, 0, "positive"),
    ],
)
def test_free_rejects_bad_ranges(offset: int, size: int, message: str) -> None:
    a = Allocator(1024)
    a.allocate(512)
    a.free(0, 64)
    before = (a.free_ranges(), a.free_bytes)
    with pytest.raises(ValueError, match=message):
        a.free(offset, size)
    assert (a.free_ranges(), a.free_bytes) == before


def test_free_rejects_partial_overlap_with_free_range() -> None:
    a = Allocator(1024)
    a.allocate(256)  # [0, 256) used, [256, 1024) free
    with pytest.raises(ValueError, match="double free"):
        a.free(192, 128)
    assert a.free_ranges() == [(256, 768)]


def test_reserve_splits_and_rejects_used() -> None:
    a = Allocator(1024)
    a.reserve(256, 100)
    assert a.free_ranges() == [(0, 256), (384, 640)]
    assert a.free_bytes == 1024 - 128
    with pytest.raises(ValueError, match="not entirely free"):
        a.reserve(320, 128)
    with pytest.raises(ValueError, match="not entirely free"):
        a.reserve(192, 128)
    a.reserve(0, 256)
    a.reserve(384, 640)
    assert a.free_bytes == 0
    assert a.allocate(64) is None
    a.free(256, 128)
    assert a.allocate(128) == 256


def test_bad_construction() -> None:
    with pytest.raises(ValueError, match="power of two"):
        Allocator(1024, alignment=48)
    with pytest.raises(ValueError, match="negative"):
        Allocator(-1)


def _churn(n: int) -> tuple[Allocator, dict[int, int]]:
    """``n`` live blocks, half of them freed at random (~n/2 free ranges), then ``n/2``
    more allocated into the holes."""
    a = Allocator(64 * n * 3)
    rng = random.Random(1)
    blocks = {}
    for _ in range(n):
        size = rng.choice((64, 128, 192))
        off = a.allocate(size)
        assert off is not None
        blocks[off] = size
    offs = list(blocks)
    rng.shuffle(offs)
    for off in offs[: n // 2]:  # fragment
        a.free(off, blocks.pop(off))
    for _ in range(n // 2):
        off = a.allocate(64)
        assert off is not None
        blocks[off] = 64
    return a, blocks


def _allocator_lines(n: int) -> int:
    """Lines of plasma/allocator.py run by :func:`_churn` of ``n`` blocks: its Python-level
    work, the same on a loaded machine as on an idle one (what C does inside a bisect or a
    list insert is not counted: that is the O(log n) + memmove the allocator allows)."""
    lines = 0
    path = sys.modules[Allocator.__module__].__file__

    def local(frame: types.FrameType, event: str, arg: object) -> Callable[..., object]:
        nonlocal lines
        lines += event == "line"
        return local

    def tracer(frame: types.FrameType, event: str, arg: object) -> Callable[..., object] | None:
        return local if frame.f_code.co_filename == path else None

    sys.settrace(tracer)
    try:
        _churn(n)
    finally:
        sys.settrace(None)
    return lines


def test_many_live_blocks_cost_constant_work_per_operation() -> None:
    a, blocks = _churn(100_000)
    assert a.free_bytes == a.size - sum(blocks.values())
    # 4x the blocks: 4x the allocator's Python-level work, within rounding (a walk over
    # the free ranges per operation would make it 16x)
    small, big = _allocator_lines(4000), _allocator_lines(16000)
    assert big < 5 * small, (small, big)


class AllocatorMachine(RuleBasedStateMachine):
    """Random allocate / free / reserve against a bitmap of used bytes (in 64-byte units)."""

    UNITS = 48

    def __init__(self) -> None:
        super().__init__()
        self.a = Allocator(self.UNITS * 64 + 17)  # the odd tail is rounded away
        self.used = [False] * self.UNITS
        self.blocks: dict[int, int] = {}  # offset -> size in bytes (as requested)

    def _units(self, size: int) -> int:
        return -(-size // 64)

    @rule(size=st.integers(1, 16 * 64))
    def allocate(self, size: int) -> None:
        off = self.a.allocate(size)
        k = self._units(size)
        fits = any(not any(self.used[i : i + k]) for i in range(0, self.UNITS - k + 1))
        if off is None:
            assert not fits
            return
        assert off % 64 == 0
        u = off // 64
        assert u + k <= self.UNITS
        assert not any(self.used[u : u + k]), "overlap"
        for i in range(u, u + k):
            self.used[i] = True
        self.blocks[off] = size

    @precondition(lambda self: self.blocks)
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        off = data.draw(st.sampled_from(sorted(self.blocks)))
        size = self.blocks.pop(off)
        self.a.free(off, size)
        for i in range(off // 64, off // 64 + self._units(size)):
            self.used[i] = False

    @rule(unit=st.integers(0, UNITS - 1), k=st.integers(1, 8))
    def reserve(self, unit: int, k: int) -> None:
        k = min(k, self.UNITS - unit)
        free = not any(self.used[unit : unit + k])
        if not free:
            with pytest.raises(ValueError):
                self.a.reserve(unit * 64, k * 64)
            return
        self.a.reserve(unit * 64, k * 64)
        for i in range(unit, unit + k):
            self.used[i] = True
        self.blocks[unit * 64] = k * 64

    @precondition(lambda self: self.blocks)
    @rule(data=st.data())
    def double_free(self, data: st.DataObject) -> None:
        free_units = [i for i, u in enumerate(self.used) if not u]
        if not free_units:
            return
        unit = data.draw(st.sampled_from(free_units))
        before = self.a.free_ranges()
        with pytest.raises(ValueError):
            self.a.free(unit * 64, 64)
        assert self.a.free_ranges() == before

    @invariant()
    def matches_model(self) -> None:
        assert self.a.free_bytes == self.used.count(False) * 64
        expected: list[tuple[int, int]] = []  # maximal runs of free units: full coalescing
        for i, u in enumerate(self.used):
            if u:
                continue
            if expected and expected[-1][0] + expected[-1][1] == i * 64:
                expected[-1] = (expected[-1][0], expected[-1][1] + 64)
            else:
                expected.append((i * 64, 64))
        assert self.a.free_ranges() == expected
        assert self.a.largest_free == max((s for _, s in expected), default=0)

    def teardown(self) -> None:
        for off, size in self.blocks.items():
            self.a.free(off, size)
        assert self.a.free_ranges() == [(0, self.UNITS * 64)]


TestAllocatorMachine = AllocatorMachine.TestCase
TestAllocatorMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
