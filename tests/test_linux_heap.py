"""plasma.linux.heap: with the mmap threshold fixed, a freed large block leaves the
coordinator's private memory even when something lies above it in the heap (glibc's
dynamic threshold would have kept it there). Run in a fresh interpreter each: mallopt's
setting lasts for the process."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from plasma.linux._syscall import libc

CHILD = textwrap.dedent(
    """
    import sys
    from plasma.linux import heap

    def private_mib():
        with open("/proc/self/smaps_rollup") as f:
            return int(f.read().split("Private_Dirty:")[1].split("kB")[0]) // 1024

    if sys.argv[1] == "fixed":
        assert heap.map_large_blocks()
    first = bytearray(16 << 20)  # mapped; its free raises glibc's threshold to 16 MiB
    del first
    start = private_mib()
    blocks = [bytearray(2 << 20) for _ in range(40)]  # 80 MiB, below the raised threshold
    above = bytearray(200 << 10)  # (after them in the heap)
    del blocks
    print(private_mib() - start)
    """
)


def _kept_mib(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(not hasattr(libc(), "mallopt"), reason="no glibc mallopt here")
def test_freed_large_blocks_leave_private_memory_with_the_threshold_fixed() -> None:
    assert _kept_mib("dynamic") >= 60  # (what the fix is for: glibc keeps them)
    assert _kept_mib("fixed") < 20
