"""Linux syscalls through ctypes (internal subpackage): NUMA memory policy, memfd/hugetlb,
segment maps, CPU affinity, descriptor passing, the fd limit, peer credentials,
perf_event_open, cgroup v2 cells, the processes under ``/proc`` and the heap's mmap
threshold.

Every wrapper raises :class:`plasma.errors.Unsupported` (naming the call and the reason)
when the syscall or platform is unsupported, and ``OSError`` with the real errno for any
other failure. Import the submodules directly: ``from plasma.linux import numa``.
"""
