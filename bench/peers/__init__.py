"""The systems compared by the harness, one adapter module per peer.

Each adapter runs in its own process (its peer venv's python) as ``python -m
bench.peers.MODULE`` and speaks JSON lines on stdin/stdout (see :mod:`bench.peers.base`).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """How to install and start one peer."""

    name: str
    module: str  # worker module, run as ``python -m``
    requirements: tuple[str, ...] = ()  # empty: runs from the harness's own interpreter
    description: str = ""


PEERS: dict[str, PeerSpec] = {
    spec.name: spec
    for spec in (
        PeerSpec(
            "plasma-coord",
            "bench.peers.plasma_coord",
            description="this project (repo venv)",
        ),
        PeerSpec(
            "arrow-plasma",
            "bench.peers.arrow_plasma",
            ("pyarrow==11.0.0", "numpy<2"),
            "pyarrow 11 plasma-store-server (C++)",
        ),
        PeerSpec(
            "ray",
            "bench.peers.ray_store",
            ("ray==2.*", "numpy"),
            "ray.put / ray.get, local, 1 CPU, no dashboard",
        ),
        PeerSpec(
            "vineyard",
            "bench.peers.vineyard_store",
            ("vineyard", "numpy"),
            "vineyardd --meta local",
        ),
        PeerSpec(
            "shared_memory",
            "bench.peers.shared_memory",
            description="multiprocessing.shared_memory + pickle protocol 5 (no server)",
        ),
    )
}
