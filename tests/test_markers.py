"""The ``coordinator`` marker: every test that starts a real coordinator carries it, so that
``pytest -m "not coordinator"`` runs the fast unit tests alone (see conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import COLLECTED, COORDINATOR_FIXTURES, start_coordinator

# ways a module starts a coordinator other than through the conftest fixtures
DIRECTLY = ("start_coordinator(", "start_plasma_store(", "run_pipeline(", '"dag", "run"')


def test_an_unmarked_test_that_starts_a_coordinator_fails(tmp_path: Path) -> None:
    with pytest.raises(pytest.fail.Exception, match="is not marked"):
        start_coordinator(str(tmp_path / "plasma.sock"), "--memory", "16MiB")


def test_every_test_using_the_coordinator_fixtures_is_marked() -> None:
    users = [i for i in COLLECTED if COORDINATOR_FIXTURES & set(getattr(i, "fixturenames", ()))]
    assert not [i.nodeid for i in users if not i.get_closest_marker("coordinator")]


def test_every_module_that_starts_coordinators_directly_is_marked() -> None:
    marked: dict[Path, bool] = {}
    for item in COLLECTED:
        marked[item.path] = marked.get(item.path, False) or bool(
            item.get_closest_marker("coordinator")
        )
    unmarked = [
        path.name
        for path, is_marked in marked.items()
        if path.name != Path(__file__).name
        and not is_marked
        and any(way in path.read_text() for way in DIRECTLY)
    ]
    assert not unmarked, f"modules that start coordinators without the marker: {unmarked}"
