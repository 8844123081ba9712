"""The store in a container-like sandbox (docs/deploy.md): its own mount and pid namespaces
with an 8 MiB ``/dev/shm``, a client in another mount namespace through a bind-mounted socket
directory, and a 256 MiB object stored and served: segments are memfds, not ``/dev/shm``
files, so the size of ``/dev/shm`` does not limit the store.

Skipped, with the reason, where ``unshare`` is missing or not permitted.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

OBJECT = 256 << 20
TINY_SHM = 'mount -t tmpfs -o size=8m tmpfs /dev/shm && exec "$@"'
# the client's namespace: the socket directory bind-mounted at another path, the original
# path hidden under an empty tmpfs, so the only way in is the bind mount
CLIENT_NS = 'mount --bind "$1" "$2" && mount -t tmpfs tmpfs "$1" && shift 2 && exec "$@"'
SANDBOX = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private"]
CLIENT_SANDBOX = ["unshare", "--mount", "--propagation", "private", "sh", "-c", CLIENT_NS, "sh"]
FILL_SHM = 'head -c "$1" /dev/zero > /dev/shm/probe; s=$?; rm -f /dev/shm/probe; exit $s'
CLIENT = """
import hashlib, json, sys
import numpy as np
import plasma

client = plasma.connect(sys.argv[1])
data = np.random.default_rng(30).integers(0, 256, int(sys.argv[2]), dtype=np.uint8)
oid = client.put(data)
back = client.get_object(oid)
print(json.dumps({
    "put": hashlib.sha256(data).hexdigest(),
    "get": hashlib.sha256(back).hexdigest(),
    "nbytes": back.nbytes,
}))
client.close()
"""


def _unshare_works() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "true"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"unshare --mount --pid is not permitted here: {probe.stderr.strip()}"
    return None


def _namespace(pid: int | str, kind: str) -> str:
    return os.readlink(f"/proc/{pid}/ns/{kind}")


@pytest.mark.coordinator
def test_256_mib_object_through_a_bind_mounted_socket_with_an_8_mib_dev_shm(
    tmp_path: Path,
) -> None:
    reason = _unshare_works()
    if reason:
        pytest.skip(reason)
    run_dir, other = tmp_path / "run", tmp_path / "elsewhere"
    run_dir.mkdir()
    other.mkdir()
    socket = run_dir / "plasma.sock"
    log_path = tmp_path / "coordinator.log"
    serve = ["--socket", str(socket), "--memory", "320MiB", "--segment-size", "64MiB"]
    with open(log_path, "w") as log:
        sandbox = subprocess.Popen(
            [*SANDBOX, "sh", "-c", TINY_SHM, "sh", sys.executable, "-m", "plasma", "serve", *serve],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO,
        )
    assert sandbox.stdout is not None
    coordinator = None
    try:
        line = sandbox.stdout.readline()
        assert line.startswith("ready"), f"{line!r} {log_path.read_text()}"
        # unshare --fork waits for its child (pid 1 of the new namespace) and does not pass
        # SIGTERM on: the coordinator is that child
        (coordinator,) = (
            Path(f"/proc/{sandbox.pid}/task/{sandbox.pid}/children").read_text().split()
        )
        assert _namespace(coordinator, "pid") != _namespace("self", "pid")
        assert _namespace(coordinator, "mnt") != _namespace("self", "mnt")
        shm = [
            ln.split()
            for ln in Path(f"/proc/{coordinator}/mountinfo").read_text().splitlines()
            if ln.split()[4] == "/dev/shm"
        ][-1]  # the last mount on /dev/shm is the one in effect
        assert shm[-3] == "tmpfs" and "size=8192k" in shm[-1].split(","), shm
        # the control: in the coordinator's mount namespace /dev/shm really holds no 256 MiB
        fill = subprocess.run(
            ["nsenter", "-t", coordinator, "-m", "sh", "-c", FILL_SHM, "sh", str(OBJECT)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert fill.returncode != 0 and "No space left" in fill.stderr, fill

        client_args = [str(other / "plasma.sock"), str(OBJECT)]
        client = subprocess.run(
            [*CLIENT_SANDBOX, str(run_dir), str(other), sys.executable, "-c", CLIENT, *client_args],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert client.returncode == 0, client.stderr
        result = json.loads(client.stdout)
        assert result["nbytes"] == OBJECT
        assert result["get"] == result["put"]
        assert os.listdir(other) == []  # the bind mount was the client's alone
    finally:
        if coordinator is not None:
            os.kill(int(coordinator), signal.SIGTERM)
        else:
            sandbox.kill()  # never ready: --kill-child takes the coordinator with it
        status = sandbox.wait(timeout=30)
        sandbox.stdout.close()
    log_text = log_path.read_text()
    assert status == 0 and "Traceback" not in log_text, log_text
    assert not socket.exists()
