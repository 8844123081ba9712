"""The dashboard (internal): one read-only page of the machine, the store and the runs.

``serve --dashboard`` and ``dag run --dashboard`` start :func:`plasma.dashboard.server.serve`
in their trio loop. The sans-I/O parts are :mod:`.access` (listening address, bearer token),
:mod:`.http` (request parsing, routing, response bytes) and :mod:`.state` (the JSON the page
shows, assembled from a ``stats`` dict, and its history); :mod:`.sources` reads a snapshot
from a coordinator in the same process or from a run and its client; the page itself is
plain files in ``static/`` (no build step, nothing fetched from elsewhere). Nothing here
may change the store or start a process: the page only reads.
"""
