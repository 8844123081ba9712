"""The C read path (plasma/_native/directory.c) alone, as a C program: built warning-free as
C11 (and its header as C++), raced natively and as an arm64 program under qemu-aarch64.

``tests/native/races.c`` forks reader processes that get objects through the library
(lookup, pin, re-check, unpin) and check every field of each slot read and every byte of
each object twice, while a writer process publishes, replaces in place, deletes and frees
objects (grace period, pin scan, poisoned bytes) at full speed. The negative control erases
every pin as soon as it is taken: the writer then frees memory under the readers, and the
check must see it.

What the emulated run shows, and what it cannot (docs/protocol.md, "Memory ordering"):
qemu-user runs the aarch64 instructions the compiler emitted (acquire loads, release
stores) with the host's memory model, x86-64's: it proves that the arm64 build of the
library and its protocol work under real concurrency, not that an arm64 CPU's reordering
cannot break them. That rests on the acquire/release argument, and on the instructions:
the last test checks that the compiler emitted acquire loads and release stores for the
directory's words.
"""

from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, apt_install

NATIVE = REPO / "plasma" / "_native"
RACES = REPO / "tests" / "native" / "races.c"
SOURCES = [str(RACES), str(NATIVE / "directory.c")]
WARNINGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Wpedantic", "-Werror"]
SECONDS = 2.0  # each run (bounded in operations too)
READERS = 3
CROSS_PACKAGES = [
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "qemu-user",
    "binutils-aarch64-linux-gnu",
]
IS_ARM64 = platform.machine().lower() in {"aarch64", "arm64"}


def compile_c(compiler: str, out: Path, *extra: str) -> None:
    proc = subprocess.run(
        [compiler, *WARNINGS, *extra, "-o", str(out), *SOURCES],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr


def race(command: list[str], mode: str) -> dict[str, int]:
    """One run: its counts, once it exited as ``mode`` expects (0)."""
    proc = subprocess.run(
        [*command, mode, str(SECONDS), str(READERS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    words = proc.stdout.split()
    counts = {k: int(v) for k, v in zip(words[2::2], words[3::2], strict=True)}
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout} {proc.stderr}"
    return counts


def check(counts: dict[str, int], mode: str) -> None:
    if mode == "safe":
        # real churn under real reads, and not one wrong field or byte
        assert counts["checks"] > 1000 and counts["published"] > 100, counts
        assert counts["failed"] == 0 and counts["torn"] == 0, counts
    else:
        assert counts["failed"] > 0, counts  # the check catches freed memory


@pytest.fixture(scope="module")
def gcc() -> str:
    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("no gcc")
    return compiler


@pytest.fixture(scope="module")
def cross() -> tuple[str, str]:
    """The aarch64 cross compiler and qemu-aarch64 (apt-installed on first use)."""
    tools = ("aarch64-linux-gnu-gcc", "qemu-aarch64")
    if not all(shutil.which(t) for t in tools):
        reason = apt_install(CROSS_PACKAGES)
        if reason is not None:
            pytest.skip(reason)
    found = [shutil.which(t) for t in tools]
    if not all(found):
        pytest.skip(f"{tools} still missing after installing {CROSS_PACKAGES}")
    return found[0], found[1]  # type: ignore[return-value]


def test_the_library_is_warning_free_c11_and_its_header_is_cxx(gcc: str, tmp_path: Path):
    compile_c(gcc, tmp_path / "races")
    gxx = shutil.which("g++")
    if gxx is None:
        pytest.skip("no g++")
    source = tmp_path / "use.cc"
    source.write_text('#include "directory.h"\nint main() { pcd_reader r; (void)r; }\n')
    proc = subprocess.run(
        [gxx, "-std=c++11", "-Wall", "-Wextra", "-Werror", f"-I{NATIVE}", "-c", str(source)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("mode", ["safe", "hidepins"])
def test_races_natively(gcc: str, tmp_path: Path, mode: str):
    compile_c(gcc, tmp_path / "races")
    check(race([str(tmp_path / "races")], mode), mode)


@pytest.fixture(scope="module")
def arm64_races(cross: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arm64") / "races"
    compile_c(cross[0], out, "-static")
    return out


@pytest.mark.skipif(IS_ARM64, reason="native already is arm64")
@pytest.mark.parametrize("mode", ["safe", "hidepins"])
def test_races_as_an_arm64_program_under_qemu(cross: tuple[str, str], arm64_races: Path, mode: str):
    check(race([cross[1], str(arm64_races)], mode), mode)


def test_arm64_code_reads_and_writes_the_directory_with_acquire_and_release(
    cross: tuple[str, str], tmp_path: Path
):
    """Every shared word the lookup reads is an acquire load (ldar/ldapr), every word the
    writer stores a release store (stlr): none was compiled to a plain ldr or str."""
    obj = tmp_path / "directory.o"
    proc = subprocess.run(
        [cross[0], *WARNINGS, "-c", "-o", str(obj), str(NATIVE / "directory.c")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump is None:
        pytest.skip("no aarch64-linux-gnu-objdump")
    listing = subprocess.run([objdump, "-d", str(obj)], capture_output=True, text=True).stdout
    functions = dict(re.findall(r"<(\w+)>:\n(.*?)(?=\n\n|\Z)", listing, re.S))

    def count(name: str, pattern: str) -> int:
        return len(re.findall(pattern, functions[name]))

    # pcd_lookup: seq, state, flags, id (3 words), generation, segment, offset, sizes (2),
    # node, seq again, and the access byte: 14 acquire loads per probed slot
    assert count("pcd_lookup", r"\tldapr|\tldar") >= 14, functions["pcd_lookup"]
    # a whole slot's write (pcd_write_slot's, pcd_insert's): seq odd, 11 fields, seq even,
    # inlined or in a function of its own they call
    for writer in ("pcd_write_slot", "pcd_insert"):
        called = re.findall(r"\tbl\t[0-9a-f]+ <(\w+)>", functions[writer])
        stores = count(writer, r"\tstlr") + sum(count(f, r"\tstlr") for f in set(called))
        assert stores >= 13, functions[writer]
    assert count("pcd_pin", r"\tstlr") >= 2 and count("pcd_unpin", r"\tstlr") >= 1
    assert count("pcd_unchanged", r"\tldapr|\tldar") >= 2
