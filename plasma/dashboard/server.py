"""The dashboard's HTTP server, in the trio loop of the process it shows (internal).

:func:`serve` samples its source every ``interval`` seconds (one read however many pages
are open; the charts' history fills even while nobody looks) and answers each connection
with one response: the static page, or the latest ``/api/state`` (503 with the reason
while the source cannot be read). Bad clients are bounded: a request head of at most
:data:`~plasma.dashboard.http.MAX_HEAD` bytes, :data:`IDLE_TIMEOUT` seconds of silence
while it comes, ``request_timeout`` seconds per connection in all, :data:`DRAIN_TIMEOUT`
seconds to close after the response, and ``max_connections`` connections at once (by
default :data:`MAX_CONNECTIONS`, at most a sixteenth of the process's descriptors): past
that the server stops accepting (:func:`plasma.listeners.serve_bounded`), so they wait
in the listen backlog, not in the descriptor table the coordinator's store clients need.
:func:`serve_coordinator` is the ``serve --dashboard`` hook, :func:`serve_run` the
``dag run --dashboard`` one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import trio

from plasma.dashboard.access import dashboard_address
from plasma.dashboard.http import MAX_HEAD, HttpError, parse_head, route
from plasma.dashboard.sources import client_snapshot, coordinator_snapshot
from plasma.dashboard.state import History, Snapshot, assemble, error_state
from plasma.errors import PlasmaError
from plasma.linux.fdlimit import side_connection_limit
from plasma.listeners import open_bounded_listeners, serve_bounded
from plasma.topology import Topology

if TYPE_CHECKING:
    from plasma.coordinator import Coordinator
    from plasma.dag.runner import Runner

__all__ = [
    "DRAIN_TIMEOUT",
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "REQUEST_TIMEOUT",
    "load_assets",
    "serve",
    "serve_coordinator",
    "serve_run",
]

MAX_CONNECTIONS = 64
REQUEST_TIMEOUT = 10.0  # seconds a client gets to send its request and read the response
IDLE_TIMEOUT = 5.0  # seconds a connection may stay silent while sending its request
DRAIN_TIMEOUT = 1.0  # seconds after the response for the client to close its side
_DRAIN_LIMIT = 4 * MAX_HEAD  # bytes read and dropped after the response, before closing
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

log = logging.getLogger("plasma.dashboard")


def load_assets() -> dict[str, tuple[str, bytes]]:
    """``/name -> (content type, bytes)`` of every file in the package's ``static/``."""
    static = resources.files("plasma.dashboard").joinpath("static")
    assets = {}
    for f in static.iterdir():
        content_type = _TYPES.get(PurePath(f.name).suffix)
        if content_type is not None:
            assets[f"/{f.name}"] = (content_type, f.read_bytes())
    return assets


class _Dashboard:
    """The latest state (status and JSON body) and its history, and the connection handler."""

    def __init__(
        self,
        read: Callable[[], Awaitable[Snapshot]],
        token: str | None,
        topology: Topology | None,
        source: str,
        request_timeout: float,
    ) -> None:
        self.read = read
        self.token = token
        self.topology = topology
        self.source = source
        self.request_timeout = request_timeout
        self.assets = load_assets()
        self.history = History()
        self.current = (503, json.dumps(error_state("starting", time.time(), source)).encode())

    async def sample(self) -> None:
        """Read the source once; keep its state, or the reason it cannot be read."""
        now = time.time()
        try:
            snapshot = await self.read()
        except (PlasmaError, OSError) as exc:
            reason = f"the coordinator cannot be read: {type(exc).__name__}: {exc}"
            self.current = (503, json.dumps(error_state(reason, now, self.source)).encode())
            return
        except Exception as exc:  # a dashboard bug must never stop the store it shows
            log.exception("dashboard: reading the state failed")
            reason = f"reading the state failed: {type(exc).__name__}: {exc}"
            self.current = (503, json.dumps(error_state(reason, now, self.source)).encode())
            return
        self.history.add(now, snapshot.stats)
        state = assemble(
            snapshot, history=self.history, now=now, topology=self.topology, source=self.source
        )
        self.current = (200, json.dumps(state, default=str).encode())

    async def handle(self, stream: trio.SocketStream) -> None:
        """Answer one connection within ``request_timeout`` (serve_bounded bounds how many)."""
        async with stream:
            with trio.move_on_after(self.request_timeout):
                await self._answer(stream)

    async def _answer(self, stream: trio.SocketStream) -> None:
        head = await _read_head(stream, min(IDLE_TIMEOUT, self.request_timeout))
        if head is None:
            return
        try:
            request = parse_head(head)
        except HttpError as exc:
            await _send(stream, exc.response.encode())
            return
        response = route(request, token=self.token, assets=self.assets, state=lambda: self.current)
        await _send(stream, response.encode(head_only=request.method == "HEAD"))


async def _read_head(stream: trio.SocketStream, idle: float) -> bytes | None:
    """The request line and headers; more than MAX_HEAD bytes are returned as they are
    (parse_head refuses them); None if the peer closed or broke before the blank line, or
    sent nothing for ``idle`` seconds (an idle connection holds a slot for no one)."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_HEAD:
            return data
        try:
            with trio.move_on_after(idle) as waiting:
                chunk = await stream.receive_some(4096)
        except trio.BrokenResourceError:
            return None
        if waiting.cancelled_caught:
            return None
        if not chunk:
            return None
        data += chunk
    return data.split(b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n", 1)[0]


async def _send(stream: trio.SocketStream, data: bytes) -> None:
    """Send the response, then end our side and read what the client still sends (up to a
    bound, for at most DRAIN_TIMEOUT seconds) until it closes: closing with unread bytes
    would reset the connection and could destroy the response before the client reads it."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)
        await stream.send_eof()
    with (
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        trio.move_on_after(DRAIN_TIMEOUT),
    ):
        left = _DRAIN_LIMIT
        while left > 0 and (chunk := await stream.receive_some(4096)):
            left -= len(chunk)


async def serve(
    read: Callable[[], Awaitable[Snapshot]],
    host: str,
    port: int,
    *,
    token: str | None = None,
    topology: Topology | None = None,
    source: str = "coordinator",
    interval: float = 1.0,
    request_timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard of ``read()``'s snapshots on ``host:port`` until cancelled;
    started with the bound address, once the first snapshot was taken. At most
    ``max_connections`` connections are served at once (and never more than a sixteenth of
    the descriptors RLIMIT_NOFILE allows); more wait to be accepted."""
    dashboard = _Dashboard(read, token, topology, source, request_timeout)
    limit = side_connection_limit(max_connections)
    listeners = await open_bounded_listeners(port, host, limit)
    await dashboard.sample()
    address = listeners[0].socket.getsockname()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_bounded, dashboard.handle, listeners, limit, "dashboard")
        task_status.started((address[0], address[1]))
        while True:
            await trio.sleep(interval)
            await dashboard.sample()


async def serve_coordinator(
    coordinator: Coordinator,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``serve --dashboard``: the dashboard of ``coordinator``, in its own loop."""
    config = coordinator.config
    assert config.dashboard is not None
    host, port = dashboard_address(config.dashboard, config.dashboard_token)

    async def read() -> Snapshot:
        return coordinator_snapshot(coordinator)

    await serve(
        read,
        host,
        port,
        token=config.dashboard_token,
        topology=Topology.from_sysfs(config.sysfs_root),
        task_status=task_status,
    )


async def serve_run(
    runner: Runner,
    client: Any,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``dag run --dashboard``: the dashboard of ``runner``'s live run and of its coordinator
    (read through ``client``, a ``plasma.aio`` client); logs the page's address."""
    options = runner.options
    assert options.dashboard is not None
    host, port = dashboard_address(options.dashboard, options.dashboard_token)
    dashboard = functools.partial(
        serve,
        lambda: client_snapshot(client, lambda: _run_record(runner)),
        host,
        port,
        token=options.dashboard_token,
        topology=runner.topology,
        source=f"dag run {runner.run_id}",
    )
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(dashboard)
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        options.log(f"[runner] dashboard: http://{shown}:{bound[1]}/")
        task_status.started(bound)


def _run_record(runner: Runner) -> dict[str, Any]:
    """The run record so far, each task with the tasks its spec runs ``after``."""
    record = runner.record()
    for row in record["tasks"]:
        row["after"] = runner.sched.tasks[row["id"]].spec.after
    return record
