"""Smoke tests of the benchmark harness machinery (no peer installs, no servers)."""

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
