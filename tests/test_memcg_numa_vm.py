"""``serve``'s memory-limit check on a real cgroup2 kernel, inside ``numa-vm --nodes 2``:
in a cgroup with ``memory.max`` 100 MiB a 64 MiB budget (plus 64 MiB of overhead) is refused
in one line naming both numbers and the file, and a 16 MiB one starts and stops cleanly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.conftest import run_guest_script

pytestmark = pytest.mark.coordinator  # starts coordinators without the conftest fixtures

GUEST_SCRIPT = textwrap.dedent(
    r"""
    import json, os, subprocess, sys
    from pathlib import Path

    top = Path("/sys/fs/cgroup")
    if "memory" not in (top / "cgroup.subtree_control").read_text().split():
        (top / "cgroup.subtree_control").write_text("+memory")
    group = top / "plasma-memtest"
    group.mkdir()
    (group / "memory.max").write_text(str(100 << 20))
    enter = ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"]
    serve = [sys.executable, "-m", "plasma", "serve", "--socket", "/tmp/m.sock"]
    refused = subprocess.run([*enter, *serve, "--memory", "64MiB"], capture_output=True,
                             text=True, timeout=120)
    proc = subprocess.Popen([*enter, *serve, "--memory", "16MiB", "--segment-size", "4MiB"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ready = proc.stdout.readline()
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    group.rmdir()
    print("RESULT " + json.dumps({
        "refused_status": refused.returncode, "refused": refused.stderr,
        "ready": ready, "status": proc.returncode, "stderr": err,
        "file": str(group / "memory.max"),
    }), flush=True)
    """
)


@pytest.mark.numa_vm
def test_serve_refuses_a_budget_over_a_real_cgroup2_memory_max(tmp_path: Path) -> None:
    r = run_guest_script(GUEST_SCRIPT, nodes=2, cwd=tmp_path)
    assert r["refused_status"] == 1, r
    line = r["refused"].strip()
    assert "\n" not in line, line
    assert str(64 << 20) in line and str(100 << 20) in line and r["file"] in line, line
    assert r["ready"].startswith("ready"), r
    assert r["status"] == 0, r
