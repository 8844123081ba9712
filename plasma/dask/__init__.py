"""Dask distributed workers that share each host's store (design section 12).

Install with ``pip install 'plasma-coord[dask]'``. On every host, one coordinator; on every
worker, :class:`PlasmaPlugin`::

    client.register_plugin(PlasmaPlugin("/tmp/plasma-coord.sock"))

Task results stay in their worker's memory, as without the plugin, until a worker of the same
coordinator asks for one of at least ``threshold`` bytes (1 MiB): it then moves into the
host's store once, the worker keeps a zero-copy read-only view of it, and that worker and
every later one receive its object id, not its bytes; workers of other hosts get the bytes.
Deleting a key deletes its object; the objects of a worker that died are deleted by the next
worker of its host that looks (:func:`reap`). :class:`PlasmaData` is the worker data mapping
the plugin installs (alone, ``Worker(data=PlasmaData(path))`` keeps every result in memory:
only the plugin's ``get_data`` moves them).
:class:`PlasmaScheduler` sends each task to the workers on the NUMA node of most of its
input bytes (:func:`choose_worker`); ``plasma-coord dask-worker`` starts one pinned worker
per node with both. See docs/dask.md.
"""

from plasma.dask._placement import Choice, Input, choose_worker
from plasma.dask._plugins import PlasmaPlugin, PlasmaScheduler
from plasma.dask._reaper import reap, stale_objects
from plasma.dask._store import PlasmaData

__all__ = [
    "Choice",
    "Input",
    "PlasmaData",
    "PlasmaPlugin",
    "PlasmaScheduler",
    "choose_worker",
    "reap",
    "stale_objects",
]
