"""Listening addresses given on the command line (internal), parsed without importing the
servers that use them (the coordinator imports prometheus_client only when it serves
``/metrics``)."""

from __future__ import annotations

from plasma.errors import BadRequest

DEFAULT_HOST = "127.0.0.1"


def parse_address(text: str, what: str = "metrics address") -> tuple[str, int]:
    """``HOST:PORT``, ``[IPv6]:PORT`` or a bare ``PORT`` (on 127.0.0.1) as ``(host, port)``;
    ``what`` names the address in the error."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = DEFAULT_HOST
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif not host or ":" in host:
        raise BadRequest(f"{what} {text!r}: write HOST:PORT, [IPv6]:PORT or PORT")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise BadRequest(f"{what} {text!r}: port must be 0..65535 (e.g. 9464)")
    return host, port
