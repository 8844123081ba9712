"""The placement decision of plasma.dask: a plain function of where the inputs live."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")

from plasma.dask import Input, choose_worker
from plasma.dask._placement import describe_inputs
from tests.helpers import MIB

HOST_A, HOST_B = "boot-a:1:10", "boot-b:1:10"
WORKERS = {"w-a0": (HOST_A, 0), "w-a1": (HOST_A, 1), "w-b0": (HOST_B, 0)}


def test_the_node_with_most_input_bytes_wins() -> None:
    inputs = [Input(8 * MIB, (HOST_A, 1)), Input(2 * MIB, (HOST_A, 0))]
    choice = choose_worker(inputs, WORKERS)
    assert choice is not None
    assert choice.workers == {"w-a1"} and choice.location == (HOST_A, 1)
    assert choice.share == pytest.approx(0.8)
    assert "80% of its 10.0 MiB of input is on node 1" in choice.reason and "w-a1" in choice.reason


def test_node_numbers_are_per_host() -> None:
    inputs = [Input(MIB, (HOST_B, 0)), Input(3 * MIB, (HOST_B, 0)), Input(MIB, (HOST_A, 0))]
    assert choose_worker(inputs, WORKERS).workers == {"w-b0"}  # type: ignore[union-attr]


def test_every_worker_of_the_location_qualifies() -> None:
    workers = {"w1": (HOST_A, 0), "w2": (HOST_A, 0), "w3": (HOST_B, 0)}
    assert choose_worker([Input(MIB, (HOST_A, 0))], workers).workers == {"w1", "w2"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("inputs", "kwargs"),
    [
        ([], {}),  # no inputs
        ([Input(100, (HOST_A, 0))], {"min_bytes": MIB}),  # too small to matter
        ([Input(MIB, (HOST_A, 0)), Input(MIB, (HOST_A, 1)), Input(MIB, (HOST_B, 0))], {}),
        ([Input(MIB, (HOST_B, 1))], {}),  # no worker where the data is
    ],
    ids=["nothing", "small", "no-majority", "no-worker-there"],
)
def test_no_choice(inputs: list[Input], kwargs: dict[str, int]) -> None:
    assert choose_worker(inputs, WORKERS, **kwargs) is None


def test_ties_are_deterministic() -> None:
    inputs = [Input(MIB, (HOST_A, 0)), Input(MIB, (HOST_A, 1))]
    assert choose_worker(inputs, WORKERS, min_share=0.5).workers == {"w-a1"}  # type: ignore[union-attr]


def test_describe_inputs() -> None:
    text = describe_inputs({1: 8 * MIB, 0: MIB}, 4096, own_node=1)
    assert text == "8.0 MiB on node 1 (this worker's), 1.0 MiB on node 0, 4.0 KiB in worker memory"
    assert describe_inputs({}, 0, own_node=None) == "no inputs"
