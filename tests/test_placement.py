"""Placement policies on the captured 8-node and SMT machines."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.topologies import unpack
from plasma.errors import BadRequest, PlacementImpossible
from plasma.placement import Placement, PlacementRequest, Placer
from plasma.topology import Topology


@pytest.fixture(scope="module")
def machines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Topology]:
    base = tmp_path_factory.mktemp("machines")
    names = ["64amd64-4s2n4ca2co", "16em64t-4s2c2t", "offline-cpu0-node0", "fakeheteromemtiers"]
    return {name: Topology.from_sysfs(unpack(name, base)) for name in names + MORE_MACHINES}


# more captured machines, for the properties that hold on any of them
MORE_MACHINES = ["8em64t-2s2ca2c", "48amd64-4pa2n6c-sparse", "128arm-2pa2n8cluster4co"]


@pytest.fixture
def amd64(machines: dict[str, Topology]) -> Placer:
    """64 CPUs, 8 nodes of 8 CPUs (one L3 each), distances 10/16/22."""
    return Placer(machines["64amd64-4s2n4ca2co"])


@pytest.fixture
def smt(machines: dict[str, Topology]) -> Placer:
    """16 CPUs on one node: 4 packages x 2 cores x 2 threads (siblings n and n+8)."""
    return Placer(machines["16em64t-4s2c2t"])


def nodes_of(placer: Placer, p: Placement) -> set[int]:
    return {placer.topology.node_of_cpu(c) for c in p.cpus}


def test_single_numa_node_lands_on_one_node(amd64: Placer) -> None:
    for _ in range(8):
        p = amd64.place(PlacementRequest(8, "single-numa-node"))
        assert len(nodes_of(amd64, p)) == 1 and p.nodes == list(nodes_of(amd64, p))
        assert set(p.cpus) == amd64.topology.nodes[p.nodes[0]].cpus
    with pytest.raises(PlacementImpossible, match="free"):
        amd64.place(PlacementRequest(1, "single-numa-node"))


def test_single_numa_node_fails_when_no_node_fits(amd64: Placer) -> None:
    with pytest.raises(PlacementImpossible, match="no single node has 9"):
        amd64.place(PlacementRequest(9, "single-numa-node"))
    assert not amd64.allocated


def test_best_effort_spills_to_nearest_nodes(amd64: Placer) -> None:
    p = amd64.place(PlacementRequest(12, "best-effort"))
    assert len(p.cpus) == 12 and len(p.nodes) == 2
    assert amd64.topology.distance(p.nodes[0], p.nodes[1]) == 16  # 16 before 22
    assert any("spill" in line for line in p.explanation)
    big = amd64.place(PlacementRequest(30, "best-effort"))
    home = big.nodes[0]
    topo = amd64.topology
    spilled = [topo.distance(home, n) for n in big.nodes[1:]]
    assert spilled == sorted(spilled)
    unused = set(topo.nodes) - set(big.nodes) - set(p.nodes)
    assert all(topo.distance(home, n) >= max(spilled) for n in unused)


def test_same_numa_prefers_largest_node_then_spills(amd64: Placer) -> None:
    amd64.place(PlacementRequest(3, numa=0))
    p = amd64.place(PlacementRequest(6, "same-numa"))
    assert p.nodes == [1]  # node 0 has only 5 free; largest that fits, lower id
    spill = amd64.place(PlacementRequest(10, "same-numa"))
    assert spill.nodes[0] == 2 and len(spill.nodes) == 2


def test_whole_l3_group_before_split_ones(amd64: Placer) -> None:
    amd64.place(PlacementRequest(1, numa=0))
    p = amd64.place(PlacementRequest(8))
    assert p.cpus == list(range(8, 16))  # a whole free node/L3, not 7 + 1
    q = amd64.place(PlacementRequest(2))
    assert nodes_of(amd64, q) == {0}  # best fit: the already split group


def test_anti_affinity_and_affinity(amd64: Placer) -> None:
    for _ in range(4):
        p = amd64.place(PlacementRequest(8, anti_affinity=[0, 1, 2, 3]))
        assert nodes_of(amd64, p).isdisjoint({0, 1, 2, 3})
    with pytest.raises(PlacementImpossible):
        amd64.place(PlacementRequest(1, anti_affinity=[0, 1, 2, 3]))
    p = amd64.place(PlacementRequest(12, affinity=[2, 3]))
    assert nodes_of(amd64, p) == {2, 3}
    with pytest.raises(PlacementImpossible, match="node 5 is not usable"):
        amd64.place(PlacementRequest(1, numa=5, anti_affinity=[5]))


def test_numa_option(amd64: Placer) -> None:
    p = amd64.place(PlacementRequest(4, "single-numa-node", numa=6))
    assert p.nodes == [6] and nodes_of(amd64, p) == {6}
    spill = amd64.place(PlacementRequest(10, "best-effort", numa=6))
    assert spill.nodes[0] == 6 and amd64.topology.distance(6, spill.nodes[1]) == 16
    with pytest.raises(BadRequest, match="no NUMA node 9"):
        amd64.place(PlacementRequest(1, numa=9))


def test_prefer_data_picks_node_with_most_bytes(amd64: Placer) -> None:
    p = amd64.place(PlacementRequest(2, prefer_data={3: 2 << 30, 5: 1 << 30}))
    assert p.nodes == [3]
    assert any("input data" in line for line in p.explanation)


def test_prefer_data_on_cpu_less_node(machines: dict[str, Topology]) -> None:
    placer = Placer(machines["fakeheteromemtiers"])
    p = placer.place(PlacementRequest(1, prefer_data={4: 1 << 30}))  # HBM node without CPUs
    assert p.nodes and placer.topology.nodes[p.nodes[0]].cpus


def test_gang_isolated_gives_each_member_its_own_node(amd64: Placer) -> None:
    members = amd64.place_gang([PlacementRequest(4)] * 8, spread="isolated")
    assert sorted(n for m in members for n in m.nodes) == list(range(8))
    for m in members:
        amd64.release(m)
    with pytest.raises(PlacementImpossible, match="gang member 8"):
        amd64.place_gang([PlacementRequest(1)] * 9, spread="isolated")
    assert not amd64.allocated  # all or nothing


def test_gang_packed_and_balanced(amd64: Placer) -> None:
    packed = amd64.place_gang([PlacementRequest(2)] * 4, spread="packed")
    assert {n for m in packed for n in m.nodes} == {0}
    balanced = amd64.place_gang([PlacementRequest(1)] * 4, spread="balanced")
    assert len({m.nodes[0] for m in balanced}) == 4
    with pytest.raises(BadRequest, match="unknown spread"):
        amd64.place_gang([PlacementRequest(1)], spread="scattered")


def test_whole_cores_before_lone_threads(smt: Placer) -> None:
    topo = smt.topology
    pair = smt.place(PlacementRequest(2))
    assert frozenset(pair.cpus) == topo.cpus[pair.cpus[0]].siblings
    three = smt.place(PlacementRequest(3))
    cores = {topo.cpus[c].siblings for c in three.cpus}
    assert sum(core <= set(three.cpus) for core in cores) == 1  # one whole core + 1 thread
    lone = smt.place(PlacementRequest(1))
    partner = topo.cpus[lone.cpus[0]].siblings - {lone.cpus[0]}
    assert partner <= set(three.cpus)  # filled the half-used core, did not split a new one


def test_full_cores_rejects_odd_counts(smt: Placer) -> None:
    with pytest.raises(PlacementImpossible, match="whole number of 2-thread cores"):
        smt.place(PlacementRequest(3, full_cores=True))


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(sizes=st.lists(st.sampled_from([1, 2, 3, 4, 6]), max_size=12), data=st.data())
@pytest.mark.parametrize(
    "machine", ["16em64t-4s2c2t", "64amd64-4s2n4ca2co", "offline-cpu0-node0", *MORE_MACHINES]
)
def test_full_cores_never_split_and_accounting_holds(
    machines: dict[str, Topology], machine: str, sizes: list[int], data: st.DataObject
) -> None:
    placer = Placer(machines[machine])
    topo = placer.topology
    held: list[Placement] = []
    for size in sizes:
        full = data.draw(st.booleans())
        try:
            p = placer.place(PlacementRequest(size, full_cores=full))
        except PlacementImpossible:
            # (a CPU of no node, as on offline-cpu0-node0, is placed only without a policy)
            assert full or size > sum(len(placer.free_cpus(n)) for n in topo.nodes)
            continue
        assert len(p.cpus) == size
        if full:
            assert all(topo.cpus[c].siblings <= set(p.cpus) for c in p.cpus)
        held.append(p)
        release: bool = data.draw(st.booleans(), label="release one")
        if release:
            placer.release(held.pop(data.draw(st.integers(0, len(held) - 1))))
        given_out = [c for h in held for c in h.cpus]
        assert len(given_out) == len(set(given_out))  # never given twice
        assert placer.allocated == set(given_out)


def test_release_returns_cpus_and_rejects_double_release(amd64: Placer) -> None:
    p = amd64.place(PlacementRequest(64))
    with pytest.raises(PlacementImpossible, match="only 0 of 64"):
        amd64.place(PlacementRequest(1))
    amd64.release(p)
    assert not amd64.allocated
    with pytest.raises(BadRequest, match="not held"):
        amd64.release(p)


def test_deterministic(machines: dict[str, Topology]) -> None:
    requests = [PlacementRequest(n, pol) for n in (3, 9, 1, 5) for pol in ("same-numa", "none")]
    runs = []
    for _ in range(2):
        placer = Placer(machines["64amd64-4s2n4ca2co"])
        runs.append([placer.place(r).cpus for r in requests])
    assert runs[0] == runs[1]


def test_none_policy_uses_cpus_without_a_node(machines: dict[str, Topology]) -> None:
    placer = Placer(machines["offline-cpu0-node0"])
    p = placer.place(PlacementRequest(17, "none"))
    assert p.cpus == sorted(placer.topology.allowed_cpus) and p.nodes == [1]
    other = Placer(machines["offline-cpu0-node0"])
    with pytest.raises(PlacementImpossible):  # node 1 only has 8 online CPUs
        other.place(PlacementRequest(9, "single-numa-node"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpus": 0}, "positive"),
        ({"cpus": 1, "policy": "fastest"}, "unknown policy"),
        ({"cpus": 1, "numa": -1}, "node id"),
        ({"cpus": 1, "anti_affinity": ["a"]}, "NUMA node ids"),
        ({"cpus": 1, "prefer_data": {0: -5}}, "node -> bytes"),
    ],
)
def test_bad_requests(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        PlacementRequest(**kwargs)  # type: ignore[arg-type]


def test_to_json(amd64: Placer) -> None:
    data = amd64.place(PlacementRequest(2)).to_json()
    assert data["cpus"] == [0, 1] and data["nodes"] == [0]
    assert isinstance(data["explanation"], list) and data["policy"] == "best-effort"
