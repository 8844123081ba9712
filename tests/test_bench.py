"""Smoke tests of the benchmark harness machinery (no peer installs; one test runs a
plasma-coord coordinator)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench import echo_server, install, memcpy, report, rpc, run, scale, scenarios, spill, store_ops
from bench.peers import PEERS, PeerSpec
from bench.peers.base import read_memory, store_memory
from bench.peers.plasma_coord import PlasmaCoordPeer
from bench.peers.shared_memory import SharedMemoryPeer


def _case(scenario: str, param: int, peer: str, **metrics: float) -> dict:
    return {"scenario": scenario, "param": param, "peer": peer, "metrics": metrics}


def _fake_results() -> dict:
    big = 256 << 20
    return {
        "meta": {"command": "python -m bench.run", "date": "today", "machine": "m"}
        | {"quick": True, "repeats": 1},
        "peers": {
            "plasma-coord": {"status": "ok", "facts": {"batch": "create_and_seal_many"}},
            "arrow-plasma": {"status": "ok", "facts": {"version": "pyarrow 11.0.0"}},
            "ray": {"status": "missing", "reason": "pip install ray failed (1): no | wheel"},
        },
        "cases": [
            _case("create_seal", 64, "plasma-coord", ops_per_s=60_000.0),
            _case("create_seal", 64, "arrow-plasma", ops_per_s=30_000.0),
            _case("get", 64, "plasma-coord", p50_us=20.0, p99_us=80.0),
            _case("get", 64, "arrow-plasma", p50_us=40.0, p99_us=90.0),
            _case("put_large", big, "plasma-coord", GB_per_s=4.0),
            _case("put_large", big, "memcpy", GB_per_s=10.0),
            {"scenario": "put_large", "param": big, "peer": "arrow-plasma", "error": "boom | bang"},
        ],
    }


def _row(md: str, prefix: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {prefix}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_markdown_ratios_targets_and_missing_peers() -> None:
    md = report.markdown(_fake_results())
    header = _row(md, "scenario")
    assert header == ["scenario", "plasma-coord", "arrow-plasma", "ray", "memcpy", "target", "met"]
    create = _row(md, "create+seal, one by one, 64 B")
    assert create[1:4] == ["60,000", "30,000 (2.00x)", "missing"]
    assert create[-2:] == ["≥ 1.5x arrow-plasma", "yes"]
    p50 = _row(md, "get of a sealed object, 64 B (p50 µs)")
    assert p50[1:3] == ["20.0", "40.0 (2.00x)"]  # lower is better: plasma-coord 2x ahead
    assert p50[-1] == "yes"
    put = _row(md, "put of a numpy array, 256 MiB")
    assert put[2].startswith("error: boom / bang")
    assert put[4] == "10.0 (0.40x)"
    assert put[-2:] == ["≥ 1.3x memcpy", "**no**"]
    assert "| ray | missing: pip install ray failed (1): no / wheel |" in md


def _scale_case(n: int, peer: str, private: float, rate: float) -> dict:
    rates = {f"{op}_ops_per_s": rate for op in ("create", "get", "delete")}
    return _case("scale", n, peer, private_MiB=private, shmem_MiB=1.0, **rates)


def _baseline_results() -> dict:
    """Two peers run scale and rpc, a third does not; every baseline column has a value."""
    big = 256 << 20
    results = _fake_results()
    results["meta"]["memcpy_threads"] = 2
    results["peers"]["ray"] = {"status": "ok"}
    results["cases"] = [
        _scale_case(10_000, "plasma-coord", 10.0, 100_000.0),
        _scale_case(10_000, "arrow-plasma", 20.0, 40_000.0),
        _scale_case(100_000, "plasma-coord", 50.0, 90_000.0),
        _scale_case(100_000, "arrow-plasma", 40.0, 40_000.0),
        _scale_case(1_000_000, "plasma-coord", 100.0, 70_000.0),
        _scale_case(1_000_000, "arrow-plasma", 400.0, 40_000.0),
        _case("rpc", rpc.CONTAINS, "plasma-coord", p50_us=13.0, p99_us=30.0),
        _case("rpc", rpc.CONTAINS, "echo", p50_us=10.0, p99_us=20.0),
        _case("rpc", rpc.SEAL, "plasma-coord", p50_us=30.0, p99_us=60.0),
        _case("rpc", rpc.SEAL, "echo", p50_us=10.0, p99_us=20.0),
        _case("put_large", big, "plasma-coord", GB_per_s=13.0),
        _case("put_large", big, "memcpy", GB_per_s=10.0),
        _case("put_large", big, "memcpy-mt", GB_per_s=16.0),
        _case("put_large", big, "memcpy-fresh", GB_per_s=2.0),
    ]
    return results


def test_baseline_columns_na_and_scale_targets() -> None:
    md = report.markdown(_baseline_results())
    assert _row(md, "scenario") == [
        "scenario",
        *("plasma-coord", "arrow-plasma", "ray"),
        *("memcpy", "memcpy-mt", "memcpy-fresh", "echo"),
        *("target", "met"),
    ]
    assert "memcpy-mt = the same split over 2 threads." in md
    put = _row(md, "put of a numpy array, 256 MiB")
    assert put[4:7] == ["10.0 (1.30x)", "16.0 (0.81x)", "2.00 (6.50x)"]
    assert put[-2:] == ["≥ 1.3x memcpy", "yes"]
    private = _row(md, "store as it grows, 64 B objects, objects=100,000 (private MiB)")
    assert private[1:4] == ["50.0", "40.0 (0.80x)", "n/a"]  # ray does not run scale
    assert private[-2:] == ["≤ arrow-plasma", "**no**"]
    private = _row(md, "store as it grows, 64 B objects, objects=1,000,000 (private MiB)")
    assert private[-2:] == ["≤ 0.5x arrow-plasma", "yes"]
    create = _row(md, "store as it grows, 64 B objects, objects=1,000,000 (create ops/s)")
    assert create[-2:] == ["≥ 0.8x objects=10,000", "**no**"]  # 70,000 < 0.8 x 100,000
    contains = _row(md, "request/reply round trip, contains (p50 µs)")
    assert contains[1:4] == ["13.0", "-", "n/a"]
    assert contains[7] == "10.0 (0.77x)"  # the echo: plasma-coord takes 1.3x as long
    assert contains[-2:] == ["≤ 1.3x echo", "yes"]
    seal = _row(md, "request/reply round trip, acknowledged seal (p50 µs)")
    assert seal[-2:] == ["≤ 1.3x echo", "**no**"]
    assert _row(md, "request/reply round trip, contains (p99 µs)")[-2:] == ["", ""]


def test_worker_baseline_metrics_become_their_own_column() -> None:
    case = _case("rpc", rpc.CONTAINS, "plasma-coord", p50_us=13.0, **{"echo:p50_us": 10.0})
    case["runs"] = [dict(case["metrics"])]
    own, echo = run.split_columns(case)
    assert own["metrics"] == {"p50_us": 13.0} and own["runs"] == case["runs"]
    assert echo == {
        "scenario": "rpc",
        "param": rpc.CONTAINS,
        "peer": "echo",
        "measured_by": "plasma-coord",
        "metrics": {"p50_us": 10.0},
    }
    assert run.split_columns({"scenario": "rpc", "param": 1, "peer": "x", "error": "e"}) == [
        {"scenario": "rpc", "param": 1, "peer": "x", "error": "e"}
    ]


def test_sessions_give_own_store_scenarios_a_store_each() -> None:
    args = run.parse_args(["--scenarios", "get,memory,scale,spill", "--memory", str(64 << 20)])
    plan = [(n, p) for n in args.scenario_names for p in scenarios.SCENARIOS[n].params(False)]
    scale_plan = [c for c in plan if c[0] == "scale"]
    spill_plan = [("spill", 1 << 20), ("spill", 16 << 20)]
    arrow = run.sessions("arrow-plasma", plan, args)
    assert arrow == [
        (64 << 20, (), [("get", 64), ("get", 1 << 20)]),
        (64 << 20, (), [("memory", 100_000)]),
        (scale.store_bytes("arrow-plasma", 1_000_000), (), scale_plan),
    ]  # spill runs on plasma-coord and ray only
    assert scale.store_bytes("arrow-plasma", 1_000_000) > 2 * 1_000_000 * 128
    assert run.sessions("ray", plan, args) == [
        (64 << 20, (), [("get", 64), ("get", 1 << 20)]),
        (64 << 20, (), [("memory", 100_000)]),
        (256 << 20, ("--spill-dir", "{workdir}/spill"), spill_plan),
    ]  # scale runs on plasma-coord and arrow-plasma only
    big = run.parse_args(["--scenarios", "spill", "--quick"])  # --memory: 1 GiB
    quick_plan = [("spill", p) for p in scenarios.SCENARIOS["spill"].quick]
    assert run.sessions("plasma-coord", quick_plan, big) == [
        (spill.MIN_STORE, ("--spill-dir", "{workdir}/spill"), quick_plan)
    ]  # exactly its own size: the working set is 3x that


def test_write_json_markdown_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report.write(_baseline_results(), tmp_path)
    assert (tmp_path / "scale_private_MiB.png").read_bytes().startswith(b"\x89PNG")  # lines
    written = report.write(_fake_results(), tmp_path)
    assert (
        json.loads((tmp_path / "results.json").read_text())["peers"]["ray"]["status"] == "missing"
    )
    assert (tmp_path / "results.md").read_text().startswith("Command: `python -m bench.run`")
    pngs = [p for p in written if p.suffix == ".png"]
    assert tmp_path / "create_seal_ops_per_s.png" in pngs
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)


def test_readme_table_is_replaced_between_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# bench\n{report.README_START}\nold table\n{report.README_END}\nend\n")
    report.update_readme(readme, "new table\n")
    report.update_readme(readme, "newer table\n")
    assert readme.read_text() == (
        f"# bench\n{report.README_START}\nnewer table\n{report.README_END}\nend\n"
    )
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="lacks the"):
        report.update_readme(readme, "x")


def test_shared_memory_peer_end_to_end(tmp_path: Path) -> None:
    argv = ["--quick", "--peers", "shared_memory", "--scenarios", "create_seal,get_large"]
    assert run.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["peers"]["shared_memory"]["status"] == "ok"
    cases = {
        (c["scenario"], c["param"]): c for c in results["cases"] if c["peer"] == "shared_memory"
    }
    assert set(cases) == {("create_seal", p) for p in scenarios.SCENARIOS["create_seal"].quick} | {
        ("get_large", p) for p in scenarios.SCENARIOS["get_large"].quick
    }
    assert all("error" not in c and c["metrics"] for c in cases.values())
    assert cases[("create_seal", 64)]["metrics"]["ops_per_s"] > 0
    assert not list(Path("/dev/shm").glob("bench*_*")), "shared_memory peer leaked segments"


def test_targets_against_another_case_and_combined() -> None:
    def results(gets: dict[int, float], cpu: float, p50: float) -> dict:
        cases = [_case("readers", n, "plasma-coord", gets_per_s=v) for n, v in gets.items()]
        cases[-1]["metrics"] |= {"store_cpu_s": 0.01, "store_cpu_pct": cpu}
        cases += [
            _case("get_first", 64, "plasma-coord", p50_us=p50, p99_us=20.0),
            _case("get_first", 64, "arrow-plasma", p50_us=30.0, p99_us=90.0),
        ]
        return {"meta": _fake_results()["meta"], "peers": {"plasma-coord": {}}, "cases": cases}

    met = {
        (r["scenario"].name, r["param"], r["metric"]): r["met"]
        for r in report.table_rows(results({1: 100.0, 8: 160.0}, 1.0, 9.0))
    }
    assert met[("readers", 8, "gets_per_s")] is True  # 1.6x its own value at N=1
    assert met[("readers", 8, "store_cpu_pct")] is True
    assert met[("readers", 1, "store_cpu_pct")] is None  # no value: cannot tell
    assert met[("get_first", 64, "p50_us")] is True  # ≤ 10 µs and 30 / 9 ≥ 2.5
    met = {
        (r["scenario"].name, r["param"], r["metric"]): r["met"]
        for r in report.table_rows(results({1: 100.0, 8: 140.0}, 6.0, 12.5))
    }
    assert met[("readers", 8, "gets_per_s")] is False
    assert met[("readers", 8, "store_cpu_pct")] is False
    assert met[("get_first", 64, "p50_us")] is False  # 2.4x arrow-plasma, over 10 µs
    only_n8 = report.table_rows(results({8: 140.0}, 1.0, 9.0))
    assert next(r["met"] for r in only_n8 if r["metric"] == "gets_per_s") is None


@pytest.mark.coordinator
@pytest.mark.timeout(240)
def test_readers_scenario_for_plasma_coord(tmp_path: Path) -> None:
    argv = ["--quick", "--peers", "plasma-coord", "--scenarios", "readers"]
    assert run.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["peers"]["plasma-coord"]["status"] == "ok"
    cases = {c["param"]: c for c in results["cases"] if c["peer"] == "plasma-coord"}
    assert set(cases) == set(scenarios.SCENARIOS["readers"].quick) == {1, 8}
    for case in cases.values():
        assert "error" not in case, case
        metrics = case["metrics"]
        assert set(metrics) == {"gets_per_s", "store_cpu_s", "store_cpu_pct"}
        assert metrics["gets_per_s"] > 0
        assert metrics["store_cpu_s"] >= 0 and 0 <= metrics["store_cpu_pct"] <= 100
    md = (tmp_path / "results.md").read_text()
    row = _row(md, "N reader processes getting 64 B objects, N=8 (store CPU % of wall)")
    assert row[-2] == "≤ 5 % of the wall time" and row[-1] in ("yes", "**no**")


def test_worker_reports_errors_and_survives() -> None:
    spec = PEERS["shared_memory"]
    with open("/dev/null", "w") as log:
        worker = run.Worker(Path(sys.executable), spec, log)
        try:
            with pytest.raises(run.WorkerError, match="run before start"):
                worker.request(op="run", scenario="get", params={"param": 64})
            worker.request(op="start", workdir="/tmp", memory=1 << 20)
            with pytest.raises(run.WorkerError, match="unknown scenario 'nope'"):
                worker.request(op="run", scenario="nope", params={"param": 1})
            metrics = worker.request(op="run", scenario="get", params={"param": 64, "quick": True})
            assert 0 < metrics["p50_us"] <= metrics["p99_us"]
        finally:
            worker.close()
    assert worker.proc.returncode == 0


def test_unknown_names_are_rejected() -> None:
    with pytest.raises(SystemExit, match="unknown peer: nope"):
        run.parse_args(["--peers", "nope"])
    with pytest.raises(SystemExit, match="unknown scenario: x"):
        run.parse_args(["--scenarios", "get,x"])
    assert run.parse_args(["--quick"]).repeats == 1
    assert run.parse_args([]).repeats == 3


def test_failed_install_is_remembered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(install, "PEERS_DIR", tmp_path)
    spec = PeerSpec("fake", "bench.peers.fake", ("fake==1",))
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / ".bench-failed").write_text("pip install fake==1 failed (1): no wheel")
    with pytest.raises(install.InstallError, match="no wheel"):
        install.peer_python(spec, log=False)
    assert install.peer_python(PEERS["shared_memory"]) == Path(sys.executable)


def test_memcpy_baselines_and_memory_reading() -> None:
    with memcpy.ThreadedCopy(3) as copier:
        columns = memcpy.columns(copier)
        assert list(columns) == [name for name in report.BASELINES if name.startswith("memcpy")]
        assert all(measure(1 << 20, True)["GB_per_s"] > 0 for measure in columns.values())
        src = np.arange(1001, dtype=np.float64)  # chunks of 333 and 334 elements
        dest = np.zeros_like(src)
        copier.copy(dest, src)
        assert np.array_equal(dest, src)
    assert not any(worker.is_alive() for worker in copier._workers)
    mem = read_memory(1)
    assert mem["VmRSS"] >= mem["RssShmem"] >= 0
    both = store_memory([1, os.getpid()])
    assert both["private"] == both["vmrss"] - both["shmem"] > 0


def test_echo_server_echoes_whole_frames(tmp_path: Path) -> None:
    frame = rpc.contains_frame()
    assert struct.unpack_from("<I", frame)[0] == len(frame) - 4
    assert echo_server.complete_frames(frame + frame + frame[:5]) == 2 * len(frame)
    assert echo_server.complete_frames(frame[:3]) == 0
    with rpc.EchoServer(tmp_path) as server:
        assert server.frame == frame and server.round_trip() > 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(server.path))
            big = struct.pack("<I", 100_000) + bytes(100_000)  # more than one recv
            sock.sendall(frame[:2])  # a frame in pieces, one longer than a recv, part of one
            sock.sendall(frame[2:] + big + frame[:5])
            expected = frame + big
            got = b""
            while len(got) < len(expected):
                got += sock.recv(1 << 20)
            assert got == expected
            sock.sendall(frame[5:])
            assert sock.recv(1 << 20) == frame


@pytest.mark.coordinator
@pytest.mark.timeout(120)
def test_scale_and_rpc_for_plasma_coord(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = dataclasses.replace(scenarios.SCENARIOS["scale"], quick=(1000, 3000))
    monkeypatch.setitem(scenarios.SCENARIOS, "scale", tiny)
    argv = ["--quick", "--peers", "plasma-coord", "--scenarios", "scale,rpc"]
    assert run.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    cases = {(c["scenario"], c["param"], c["peer"]): c for c in results["cases"]}
    assert set(cases) == {("scale", n, "plasma-coord") for n in (1000, 3000)} | {
        ("rpc", call, peer) for call in rpc.CALLS for peer in ("plasma-coord", "echo")
    }
    assert all("error" not in c for c in cases.values()), cases
    for n in (1000, 3000):
        metrics = cases[("scale", n, "plasma-coord")]["metrics"]
        assert set(metrics) == set(tiny.metrics) and all(v > 0 for v in metrics.values())
    for call in rpc.CALLS:
        for peer in ("plasma-coord", "echo"):
            metrics = cases[("rpc", call, peer)]["metrics"]
            assert set(metrics) == {"p50_us", "p99_us"}
            assert 0 < metrics["p50_us"] <= metrics["p99_us"]
    md = (tmp_path / "results.md").read_text()
    row = _row(md, "request/reply round trip, contains (p50 µs)")
    assert row[-2] == "≤ 1.3x echo" and row[-1] in ("yes", "**no**")
    assert _row(md, "store as it grows, 64 B objects, objects=3,000 (get ops/s)")[1] != "-"


@pytest.mark.coordinator
@pytest.mark.timeout(120)
def test_put_get_dict_is_na_for_a_peer_that_cannot_store_a_dict(tmp_path: Path) -> None:
    """Arrow Plasma stores buffers, not Python values: the harness never asks it to put a
    dict (its adapter would fail with an AttributeError) and its cells read n/a."""
    args = run.parse_args(["--scenarios", "put_get_dict", "--quick"])
    plan = [("put_get_dict", 10 << 20)]
    assert run.sessions("arrow-plasma", plan, args) == []
    assert run.sessions("shared_memory", plan, args) == [(1 << 30, (), plan)]
    results = _fake_results()
    results["cases"] = [
        _case("put_get_dict", 10 << 20, "plasma-coord", both_GB_per_s=2.0, get_us=50.0)
    ]
    md = report.markdown(results)
    row = _row(md, "put + get of a dict of ten numpy arrays, 10 MiB (")
    assert row[1:4] == ["2.00", "n/a", "missing"]
    shared = SharedMemoryPeer(tmp_path, 0)  # a peer that can, end to end
    try:
        value = {"a": np.arange(1000.0), "b": np.ones(10)}
        got = shared.get_value(shared.put_value(value))
        assert sorted(got) == ["a", "b"] and np.array_equal(got["a"], value["a"])
        del got
    finally:
        shared.stop()  # (its names are this process's: the next peer here reuses them)


def test_put_first_restarts_the_store_and_has_memcpy_columns(tmp_path: Path) -> None:
    argv = ["--quick", "--peers", "plasma-coord", "--scenarios", "put_first", "--repeats", "2"]
    assert run.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    cases = {c["peer"]: c for c in results["cases"]}
    assert set(cases) == {"plasma-coord", "memcpy", "memcpy-shm", "memcpy-mt", "memcpy-fresh"}
    for case in cases.values():
        assert case["scenario"] == "put_first" and case["param"] == 16 << 20, case
        assert "error" not in case and case["metrics"]["GB_per_s"] > 0, case
    assert len(cases["plasma-coord"]["runs"]) == 2  # a fresh store each
    row = _row((tmp_path / "results.md").read_text(), "first put of a numpy array")
    assert row[-2] == ""  # the target is at 256 MiB (not run in quick mode)
    assert scenarios.SCENARIOS["put_first"].serve_args == ("--prefault", "budget")


def test_spill_scenario_for_plasma_coord(tmp_path: Path) -> None:
    argv = ["--quick", "--peers", "plasma-coord", "--scenarios", "spill"]
    assert run.main([*argv, "--out", str(tmp_path), "--no-plots"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    (case,) = [c for c in results["cases"] if c["peer"] == "plasma-coord"]
    assert case["param"] == 1 << 20 and "error" not in case, case
    metrics = case["metrics"]
    assert set(metrics) == set(scenarios.SCENARIOS["spill"].metrics)
    assert all(v > 0 for v in metrics.values())
    assert metrics["verified_GB"] == spill.VOLUME * spill.MIN_STORE / 1e9  # every object


@pytest.mark.coordinator
@pytest.mark.timeout(180)
@pytest.mark.skipif(not (shutil.which("make") and shutil.which("cc")), reason="no make or cc")
def test_handoff_times_c_consumers_beside_the_python_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """plasma-coord's hand-off, bounded: its Python consumers' timings, then Python consumers
    that only read a buffer of their own (the python-floor column), then (built from
    clients/c) its C consumers' as the c-consumer column."""
    monkeypatch.setattr(scenarios, "HANDOFF_OBJECTS", ((20, 20), (20, 20)))
    peer = PlasmaCoordPeer(tmp_path, 64 << 20)
    peer.start()
    try:
        metrics = scenarios.handoff(peer, "bench.peers.plasma_coord", 1, True, c_consumers=True)
        assert peer.client.list() == {}  # every object handed off was deleted
    finally:
        peer.stop()
    columns = ("", "python-floor:", "c-consumer:")
    assert set(metrics) == {f"{column}{m}" for column in columns for m in ("p50_us", "p99_us")}
    for column in columns:
        assert 0 < metrics[f"{column}p50_us"] <= metrics[f"{column}p99_us"]


def _torn(got: np.ndarray, key: str) -> np.ndarray:
    """A copy of object 4 (the fifth created) with one byte flipped."""
    got = got.copy()
    if key.endswith("_5"):
        got.view(np.uint8)[12345] ^= 1
    return got


def _stale(got: np.ndarray, key: str) -> np.ndarray:
    """Object 4's key yields the contents of object 3 (a stale or misdirected read)."""
    return spill.contents(got.copy(), 3) if key.endswith("_5") else got


@pytest.mark.parametrize("corrupt", [_torn, _stale])
def test_spill_fails_when_a_byte_read_back_differs(
    corrupt: Callable[[np.ndarray, str], np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    peer = SharedMemoryPeer(Path("/tmp"), 4 << 20)  # 12 objects of 1 MiB, keys ..._1 to _12
    real = peer.get_array
    monkeypatch.setattr(peer, "get_array", lambda key: corrupt(real(key), key))
    try:
        with pytest.raises(AssertionError, match=r"1 of 12 objects .* differ .*first: object 4"):
            spill.spill(peer, 1 << 20)
    finally:
        peer.stop()


def test_store_ops_times_the_stores_per_object_work(capsys: pytest.CaptureFixture[str]) -> None:
    """bench.store_ops runs the store alone and prints one figure per case."""
    assert store_ops.main(["--objects", "2000", "--rounds", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "create+seal+release",
        "seal_arena",
        "delete",
        "free after the pin scan",
    ]
    assert all(float(line.split()[-4]) > 0 for line in lines)
