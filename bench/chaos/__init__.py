"""Fault-injection harness for plasma-coord: ``python -m bench.chaos {fuzz,kill,soak,fds,all}``.

Each subcommand starts its own coordinator (``python -m plasma serve``) in a temporary
directory, attacks it, checks invariants (the coordinator survives, reads are never corrupt,
no bytes leak, no internal errors) and stops it with SIGTERM. See bench/README.md.
"""
