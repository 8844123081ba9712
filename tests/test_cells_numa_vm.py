"""Cells on a real cgroup v2 kernel, inside ``numa-vm --nodes 2`` (one boot for every check).

The guest (4 CPUs: 0-1 on node 0, 2-3 on node 1) mounts cgroup2 with the cpuset controller
and supports isolated partitions. The guest script drives the real ``plasma-coord`` commands
in order and prints one ``RESULT`` line; the test asserts on it.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_guest_script

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

GUEST_SCRIPT = textwrap.dedent(
    r"""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path

    ROOT = Path("/sys/fs/cgroup/plasma-coord")
    PLASMA = [sys.executable, "-m", "plasma"]
    # What a process and a child it forks report: /proc/self/status and /proc/self/cgroup,
    # and the affinity the child gets when it asks for every CPU (the cpuset keeps it in).
    PROBE = '''
    import json, os
    def me(tag):
        status = dict(l.split(":\t") for l in open("/proc/self/status").read().splitlines()
                      if ":\t" in l)
        return {"tag": tag, "cpus": status["Cpus_allowed_list"].strip(),
                "mems": status["Mems_allowed_list"].strip(),
                "cgroup": open("/proc/self/cgroup").read().strip()}
    rows = [me("parent")]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.sched_setaffinity(0, range(os.cpu_count()))
        except OSError:
            pass
        row = me("child")
        row["widened"] = sorted(os.sched_getaffinity(0))
        os.write(w, json.dumps(row).encode())
        os._exit(0)
    os.close(w)
    rows.append(json.loads(os.read(r, 65536)))
    os.waitpid(pid, 0)
    print("PROBE " + json.dumps(rows), flush=True)
    '''

    def plasma(*args, check=True):
        proc = subprocess.run([*PLASMA, *args], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise SystemExit(f"plasma-coord {' '.join(args)} failed: {proc.stdout}{proc.stderr}")
        return proc

    def probe_lines(text):
        return [json.loads(l[l.index("PROBE ") + 6:]) for l in text.splitlines() if "PROBE " in l]

    def effective(path):
        return (path / "cpuset.cpus.effective").read_text().strip()

    def cells():
        return sorted(p.name for p in ROOT.iterdir() if p.is_dir()) if ROOT.exists() else []

    result = {}
    t0 = time.monotonic()
    result["n1"] = json.loads(plasma("cell", "create", "n1", "--cpus", "2", "--numa", "1",
                                     "--json").stdout)
    result["cell_run"] = probe_lines(plasma("cell", "run", "n1", "--", sys.executable, "-c",
                                            PROBE).stdout)

    # evict-foreign: a process outside the cell pinned onto its CPU 3
    sleeper = subprocess.Popen(["sleep", "60"])
    os.sched_setaffinity(sleeper.pid, {3})
    listed = json.loads(plasma("cell", "evict-foreign", "n1", "--json").stdout)
    result["evict_listed"] = {"sleeper": sleeper.pid, "rows": listed}
    stopped = plasma("cell", "evict-foreign", "n1", "--signal", "STOP").stdout
    os.waitid(os.P_PID, sleeper.pid, os.WSTOPPED)
    result["evict_stopped"] = {"out": stopped,
                               "state": Path(f"/proc/{sleeper.pid}/stat").read_text()
                               .rsplit(")", 1)[1].split()[0]}
    sleeper.kill()
    sleeper.wait()

    # an exclusive cell: its CPU leaves a sibling's (and the machine's) effective set
    bare = ROOT / "bare"
    bare.mkdir()
    before = {"bare": effective(bare), "top": effective(ROOT.parent)}
    iso = json.loads(plasma("cell", "create", "iso", "--cpus", "1", "--numa", "0",
                            "--exclusive", "--json").stdout)
    during = {"bare": effective(bare), "top": effective(ROOT.parent),
              "root_partition": (ROOT / "cpuset.cpus.partition").read_text().strip()}
    listing = json.loads(plasma("cell", "list", "--json").stdout)
    plasma("cell", "destroy", "iso")
    after = {"bare": effective(bare), "top": effective(ROOT.parent),
             "root_partition": (ROOT / "cpuset.cpus.partition").read_text().strip()}
    bare.rmdir()
    result["exclusive"] = {"iso": iso, "before": before, "during": during, "after": after,
                           "listed": [c["name"] for c in listing]}
    plasma("cell", "destroy", "n1")  # empty by now: the cell run ended
    result["cells_after_destroy"] = cells()

    # run --cell: a cell of the placement for the command's life
    run = plasma("run", "--cpus", "1", "--numa", "1", "--cell", "--", sys.executable, "-c", PROBE)
    result["run_cell"] = probe_lines(run.stdout)
    result["cells_after_run"] = cells()

    # a DAG task in a cell, and its forked child
    Path("probe.py").write_text(PROBE)
    Path("p.yaml").write_text(
        "tasks:\n"
        "  - {name: boxed, cmd: [python, probe.py], cell: true, numa: 1}\n"
        "  - {name: loose, cmd: [python, probe.py], numa: 0}\n"
    )
    dag = plasma("dag", "run", "p.yaml", "--memory", "32MiB", "--no-perf", "--record",
                 "rec.json", check=False)
    result["dag"] = {"status": dag.returncode, "err": dag.stderr[-2000:],
                     "record": json.loads(Path("rec.json").read_text()),
                     "probes": {l.split("]")[0].lstrip("["): probe_lines(l)[0]
                                for l in dag.stdout.splitlines() if "PROBE " in l}}
    result["cells_after_dag"] = cells()
    result["seconds"] = time.monotonic() - t0
    print("RESULT " + json.dumps(result), flush=True)
    """
)


@pytest.mark.numa_vm
def test_cells_confine_isolate_evict_and_clean_up(tmp_path: Path) -> None:
    r = run_guest_script(GUEST_SCRIPT, nodes=2, cwd=tmp_path)

    # a cell on node 1 confines a process and the child it forks, which cannot widen out
    assert (r["n1"]["cpus_effective"], r["n1"]["mems_effective"]) == ("2-3", "1")
    parent, child = r["cell_run"][0]
    for row in (parent, child):
        assert (row["cpus"], row["mems"], row["cgroup"]) == ("2-3", "1", "0::/plasma-coord/n1")
    assert child["widened"] == [2, 3]

    # evict-foreign finds the process pinned onto the cell's CPU, and stops it
    sleeper = r["evict_listed"]["sleeper"]
    assert {"pid": sleeper, "cpus": "3", "result": "listed"} in r["evict_listed"]["rows"]
    assert f"{sleeper}\tcpus 3\tsent SIGSTOP" in r["evict_stopped"]["out"]
    assert r["evict_stopped"]["state"] == "T"

    # an exclusive cell's CPU leaves the sibling's and the machine's effective sets
    ex = r["exclusive"]
    cpu = int(ex["iso"]["cpus_effective"])
    assert ex["iso"]["partition"] == "isolated" and cpu in (0, 1)
    assert ex["before"] == {"bare": "0-3", "top": "0-3"}
    assert str(cpu) not in ex["during"]["bare"].replace("-", ",").split(",")
    assert ex["during"]["bare"] == "2-3"  # the root partition holds 2-3 (n1) and the iso CPU
    assert ex["during"]["top"] == str(1 - cpu) and ex["during"]["root_partition"] == "root"
    assert ex["after"] == {"bare": "0-3", "top": "0-3", "root_partition": "member"}
    assert ex["listed"] == ["bare", "iso", "n1"]
    assert r["cells_after_destroy"] == []

    # run --cell: the command and its child inside a cell of the placement, removed after
    parent, child = r["run_cell"][0]
    assert parent["cgroup"].startswith("0::/plasma-coord/run-") and parent["mems"] == "1"
    assert parent["cpus"] in ("2", "3") and child["widened"] == [int(parent["cpus"])]
    assert child["cgroup"] == parent["cgroup"]
    assert r["cells_after_run"] == []

    # a DAG task in a cell: it and its forked child stay inside; the cell is gone after
    dag = r["dag"]
    assert dag["status"] == 0, dag["err"]
    tasks = {t["id"]: t for t in dag["record"]["tasks"]}
    boxed, loose = tasks["boxed"], tasks["loose"]
    assert boxed["cell"] and loose["cell"] is None
    parent, child = dag["probes"]["boxed"]
    cpus = ",".join(map(str, boxed["cpus"]))
    for row in (parent, child):
        assert row["cgroup"] == f"0::/plasma-coord/{boxed['cell']}"
        assert (row["cpus"], row["mems"]) == (cpus, "1")
    assert child["widened"] == boxed["cpus"]
    loose_child = dag["probes"]["loose"][1]
    assert loose_child["cgroup"] == "0::/" and len(loose_child["widened"]) == 4  # pinning only
    assert r["cells_after_dag"] == []
