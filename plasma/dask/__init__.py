"""Dask distributed workers that share each host's store (design section 12).

Install with ``pip install 'plasma-coord[dask]'``. On every host, one coordinator; on every
worker, :class:`PlasmaPlugin`::

    client.register_plugin(PlasmaPlugin("/tmp/plasma-coord.sock"))

Task results of at least ``threshold`` bytes (1 MiB) then live in the host's store, as
zero-copy read-only views; smaller ones in the worker's memory. A worker fetching a key from
a worker of the same coordinator receives its object id and reads the object from the store,
not its bytes; workers of other hosts get the bytes, as without the plugin. Deleting a key
deletes its object; the objects of a worker that died are deleted by the next worker of its
host that looks (:func:`reap`). :class:`PlasmaData` is the data store alone
(``Worker(data=PlasmaData(path))``: results in the store, transfers by bytes).
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
