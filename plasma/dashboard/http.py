"""The dashboard's HTTP, without I/O: parse a request head, route it, render the response.

Only what the page needs: ``GET`` and ``HEAD`` of a fixed set of paths, one request per
connection (``Connection: close``), no request bodies. Every response carries the security
headers (a Content-Security-Policy allowing only this origin, ``nosniff``, no framing, no
referrer); ``/api/state`` is never cached. The token is checked before anything else, so a
request without it learns nothing, not even which paths exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from plasma.dashboard.access import authorized

__all__ = [
    "MAX_HEAD",
    "HttpError",
    "Request",
    "Response",
    "parse_head",
    "route",
]

MAX_HEAD = 16 * 1024  # bytes of request line and headers
_METHOD = re.compile(r"[A-Z]{1,16}\Z")
_TARGET = re.compile(r"/[\x21-\x7e]*\Z")  # printable ASCII, no spaces
STATE_PATH = "/api/state"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Request:
    """A parsed request head: method, path (query dropped), headers by lower-case name."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Response:
    """Status, content type, body and extra headers; :meth:`encode` gives the bytes to send."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, *, head_only: bool = False) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {REASONS[self.status]}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
            *(f"{k}: {v}" for k, v in {**SECURITY_HEADERS, **self.headers}.items()),
        ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head if head_only else head + self.body


class HttpError(Exception):
    """A request that cannot be served, with the response that says why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.response = text_response(status, reason)


def text_response(status: int, text: str, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, "text/plain; charset=utf-8", f"{text}\n".encode(), dict(headers or {}))


def parse_head(data: bytes) -> Request:
    """The request in ``data`` (request line and headers, up to the blank line).

    HttpError 431 past :data:`MAX_HEAD`, 400 for anything that is not an HTTP/1.x request
    line with ``Name: value`` headers (a repeated ``Authorization`` too).
    """
    if len(data) > MAX_HEAD:
        raise HttpError(431, f"request head larger than {MAX_HEAD} bytes")
    text = data.decode("latin-1")
    lines = text.split("\r\n") if "\r\n" in text else text.split("\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.0", "HTTP/1.1") or not _METHOD.match(parts[0]):
        raise HttpError(400, "bad request line: expected METHOD /path HTTP/1.1")
    method, target, _ = parts
    if not _TARGET.match(target):
        raise HttpError(400, "bad request target: expected a path starting with /")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            break
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise HttpError(400, f"bad header line {line[:80]!r}")
        key = name.lower()
        if key == "authorization" and key in headers:
            raise HttpError(400, "more than one Authorization header")
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return Request(method, target.split("?", 1)[0].split("#", 1)[0], headers)


def route(
    request: Request,
    *,
    token: str | None,
    assets: Mapping[str, tuple[str, bytes]],
    state: Callable[[], tuple[int, bytes]],
) -> Response:
    """The response to ``request``: 401 without the token (before anything else), 405 for
    methods other than GET and HEAD, the asset at its path, ``state()`` at ``/api/state``
    as ``(status, JSON body)``, else 404. ``/`` is ``/index.html``."""
    if not authorized(request.headers.get("authorization"), token):
        return text_response(
            401,
            "unauthorized: send Authorization: Bearer TOKEN (the serve --dashboard-token)",
            {"WWW-Authenticate": 'Bearer realm="plasma-coord dashboard"'},
        )
    if request.method not in ("GET", "HEAD"):
        allow = {"Allow": "GET, HEAD"}
        return text_response(405, "the dashboard is read-only: GET and HEAD only", allow)
    if request.path == STATE_PATH:
        status, body = state()
        return Response(status, "application/json", body, {"Cache-Control": "no-store"})
    asset = assets.get("/index.html" if request.path == "/" else request.path)
    if asset is None:
        return text_response(404, f"not found: {request.path[:200]}")
    content_type, body = asset
    return Response(200, content_type, body, {"Cache-Control": "no-cache"})
