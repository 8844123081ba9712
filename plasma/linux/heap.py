"""The coordinator's heap: large blocks given back to the system when they are freed.

glibc serves a block of at least ``M_MMAP_THRESHOLD`` bytes (128 KiB) with a mapping of its
own, unmapped when it is freed. But the first time it frees such a block it raises the
threshold to that block's size (up to 32 MiB), and from then on blocks below it come from
the heap, where a freed one stays in the process's private memory as long as anything lies
above it. The store's largest blocks are just that kind: the slot table beside the directory
and the generation index (arrays of several MiB at a million objects), replaced by larger
ones at every directory rebuild. A coordinator grown to a million objects kept about 90 MiB
of freed arrays that way (``python -m bench.run --scenarios scale``). Setting the threshold
explicitly turns the adjustment off (mallopt(3)).
"""

from __future__ import annotations

from plasma.linux._syscall import libc

M_MMAP_THRESHOLD = -3  # (glibc's malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed


def map_large_blocks(threshold: int = MMAP_THRESHOLD) -> bool:
    """Serve every block of ``threshold`` bytes or more with a mapping of its own, for the
    life of the process. False where the C library does not take the setting (not glibc:
    musl maps large blocks on its own, always)."""
    mallopt = getattr(libc(), "mallopt", None)
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, threshold))
