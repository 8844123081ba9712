"""Linux syscalls through ctypes: NUMA memory policy, memfd/hugetlb, CPU affinity,
peer credentials and perf_event_open.

Every wrapper raises :class:`plasma.errors.Unsupported` (naming the call and the reason)
when the syscall or platform is unsupported, and ``OSError`` with the real errno for any
other failure. Import the submodules directly: ``from plasma.linux import numa``.
"""
