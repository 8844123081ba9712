"""The worker plugin's own decisions, without a cluster: when it sends dropped views' releases."""

from __future__ import annotations

import types

import pytest

pytest.importorskip("distributed")

from plasma.dask import _plugins
from plasma.dask._plugins import PlasmaPlugin


class Store:
    """Stands in for the plugin's PlasmaData: counts flushes."""

    def __init__(self) -> None:
        self.holds_objects = False
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def test_releases_go_every_tick_while_objects_are_held_and_rarely_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _plugins._IDLE_FLUSH_INTERVAL == 1.0  # 8 ticks of 0.125 s below
    clock = types.SimpleNamespace(now=100.0)
    monkeypatch.setattr(_plugins.time, "monotonic", lambda: clock.now)
    plugin = PlasmaPlugin("unused.sock")
    plugin.store = store = Store()  # type: ignore[assignment]
    plugin._flushed, plugin._held = float("-inf"), False

    def ticks(n: int) -> int:
        before = store.flushes
        for _ in range(n):
            plugin._flush()
            clock.now += 0.125  # a tick (exact in binary: the sums stay exact)
        return store.flushes - before

    assert ticks(1) == 1  # the first tick
    assert ticks(7) == 0  # results in memory only: nothing to release for a second
    assert ticks(1) == 1  # ... then one, for views its tasks may have kept
    store.holds_objects = True
    assert ticks(5) == 5  # objects held: every tick
    store.holds_objects = False
    assert ticks(1) == 1  # the last one went: its release goes at once
    assert ticks(5) == 0
