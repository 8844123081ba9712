"""``dask worker --preload plasma.dask.preload --plasma-socket PATH`` (internal).

Installs :class:`~plasma.dask.PlasmaPlugin` on the worker being started (what
``plasma-coord dask-worker`` runs on each NUMA node); ``--plasma-place`` also registers
:class:`~plasma.dask.PlasmaScheduler` on the scheduler. A worker that cannot reach its
coordinator exits (status 1) with the reason, rather than run without its store.
"""

from __future__ import annotations

import click
from distributed import Worker

from plasma.dask._plugins import PlasmaPlugin
from plasma.dask._store import DEFAULT_THRESHOLD
from plasma.errors import PlasmaError


@click.command()
@click.option("--plasma-socket", required=True, help="the host's coordinator socket")
@click.option("--plasma-threshold", type=int, default=DEFAULT_THRESHOLD, show_default=True)
@click.option("--plasma-reap-interval", type=float, default=10.0, show_default=True)
@click.option("--plasma-place/--no-plasma-place", default=False, help="route tasks by node")
async def dask_setup(
    worker: Worker,
    plasma_socket: str,
    plasma_threshold: int,
    plasma_reap_interval: float,
    plasma_place: bool,
) -> None:
    plugin = PlasmaPlugin(
        plasma_socket,
        threshold=plasma_threshold,
        reap_interval=plasma_reap_interval,
        place_tasks=plasma_place,
    )
    try:
        await worker.plugin_add(plugin, catch_errors=False)
    except PlasmaError as exc:  # distributed logs and ignores preload errors: a worker with
        # no store must not run, so stop the process, saying why
        raise SystemExit(f"plasma.dask: the worker cannot use its store: {exc}") from exc
