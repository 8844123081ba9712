"""The coordinator's Prometheus ``/metrics`` HTTP server (internal), in its trio loop.

The metric families themselves (names, help texts, :class:`StatsCollector`,
:func:`write_textfile`, :func:`make_registry`) are in :mod:`plasma.metric_families`, which
does not import trio; the three are re-exported here, for the coordinator and docs/metrics.md.
:func:`serve_metrics` is a small HTTP server running in the coordinator's own trio loop, so
a scrape reads the store's state on the thread that owns it.
"""

from __future__ import annotations

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from plasma.linux.fdlimit import side_connection_limit
from plasma.listeners import open_bounded_listeners, serve_bounded
from plasma.metric_families import StatsCollector as StatsCollector
from plasma.metric_families import make_registry as make_registry
from plasma.metric_families import write_textfile as write_textfile

MAX_REQUEST_HEAD = 16 * 1024
REQUEST_TIMEOUT = 10.0  # seconds a scraper gets to send its request and read the answer
MAX_CONNECTIONS = 16  # scrapes served at once (more wait to be accepted)

# ---------------------------------------------------------------- HTTP


async def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``GET /metrics`` on ``host:port`` until cancelled; started with the bound address.

    At most :data:`MAX_CONNECTIONS` connections at once (and never more than a sixteenth of
    the descriptors RLIMIT_NOFILE allows), each for at most REQUEST_TIMEOUT seconds: past
    that the server stops accepting, and the store keeps its descriptors."""
    limit = side_connection_limit(MAX_CONNECTIONS)
    listeners = await open_bounded_listeners(port, host, limit)
    address = listeners[0].socket.getsockname()
    task_status.started((address[0], address[1]))

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(REQUEST_TIMEOUT):
                head = await _read_head(stream)
                if head is not None:
                    await stream.send_all(_respond(registry, head))

    await serve_bounded(handle, listeners, limit, "metrics")


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request line and headers, or None if the peer closed or sent too much."""
    data = b""
    while b"\r\n\r\n" not in data and b"\n\n" not in data:
        if len(data) > MAX_REQUEST_HEAD:
            return None
        try:
            chunk = await stream.receive_some(4096)
        except trio.BrokenResourceError:
            return None
        if not chunk:
            return data or None
        data += chunk
    return data


def _respond(registry: CollectorRegistry, head: bytes) -> bytes:
    lines = head.decode("latin-1").splitlines()
    parts = lines[0].split() if lines else []
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return _response(400, "text/plain", b"bad request\n")
    method, target = parts[0], parts[1]
    if target.split("?", 1)[0] != "/metrics":
        return _response(404, "text/plain", b"not found: the metrics are at /metrics\n")
    if method not in ("GET", "HEAD"):
        return _response(405, "text/plain", b"only GET and HEAD\n")
    accept = ""
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "accept":
            accept = value.strip()
    encoder, content_type = choose_encoder(accept)
    body = encoder(registry)
    return _response(200, content_type, body, head_only=method == "HEAD")


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _response(status: int, content_type: str, body: bytes, *, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)
