"""What a coordinator is asked to serve (plasma.coordinator.config), without a coordinator:
memory budgets per node, and the refusal of nodes this machine cannot bind to."""

from __future__ import annotations

import pytest

from plasma import errors
from plasma.coordinator import config
from plasma.coordinator.config import check_nodes, node_budgets


def test_memory_is_split_evenly_or_given_per_node():
    assert node_budgets("4MiB", [0, 1]) == {0: 2 << 20, 1: 2 << 20}
    assert node_budgets("1=3MiB", [0, 1]) == {1: 3 << 20}
    with pytest.raises(errors.BadRequest, match="not served"):
        node_budgets("2=1MiB", [0, 1])


def test_nodes_this_process_cannot_use_are_refused_in_one_line(monkeypatch):
    monkeypatch.setattr(config.numa, "usable_nodes", lambda: {0})
    check_nodes({0: 1 << 20})
    with pytest.raises(errors.BadRequest, match=r"NUMA node\(s\) \[3\]") as refused:
        check_nodes({0: 1 << 20, 3: 1 << 20})
    assert "--no-bind" in str(refused.value) and "\n" not in str(refused.value)
