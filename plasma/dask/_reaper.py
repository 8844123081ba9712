"""Deleting the objects of workers that died without closing their store (internal).

A worker's objects are sealed, so they outlive its connection (the coordinator only aborts
unsealed ones). Every id :mod:`plasma.dask._store` makes starts with ``PREFIX``, and the
coordinator records each object's creator (``owner``) and lists the clients connected now:
an object with the prefix whose creator is gone belongs to a dead worker. Any live client of
the coordinator may reap; the worker plugin does at start and every few seconds, and
``plasma-coord dask-worker`` whenever one of its workers exits.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from plasma.client import Client
from plasma.dask._store import PREFIX, _delete
from plasma.ids import ObjectID


def stale_objects(
    listing: Mapping[ObjectID, Mapping[str, Any]], live_clients: Collection[int]
) -> list[ObjectID]:
    """The sealed ``plasma.dask`` objects of ``listing`` whose creator is not connected."""
    return [
        oid
        for oid, info in listing.items()
        if oid.binary().startswith(PREFIX)
        and info["state"] != "created"
        and info["owner"] not in live_clients
    ]


def reap(client: Client) -> int:
    """Delete the objects of dead ``plasma.dask`` workers; returns how many were deleted."""
    listing = client.list()  # before the clients: a client that connects later is no victim
    live = {c["id"] for c in client.stats()["clients"]}
    stale = stale_objects(listing, live)
    if stale:
        _delete(client, [oid.binary() for oid in stale])
    return len(stale)
