"""Smoke tests of the benchmark harness machinery (no peer installs; one test runs a
plasma-coord coordinator)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bench import install, report, run, scenarios
from bench.peers import PEERS, PeerSpec
from bench.peers.base import read_memory


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
    assert put[-2:] == ["≥ 0.9x memcpy", "**no**"]
    assert "| ray | missing: pip install ray failed (1): no / wheel |" in md


def test_write_json_markdown_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
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


def test_memcpy_and_memory_reading() -> None:
    assert scenarios.memcpy(1 << 20, quick=True)["GB_per_s"] > 0
    mem = read_memory(1)
    assert mem["VmRSS"] >= mem["RssShmem"] >= 0
