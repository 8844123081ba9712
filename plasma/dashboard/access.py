"""Who may see the dashboard: its listening address and the bearer token (sans-I/O).

A loopback address is served to anyone on this host who can connect (like ``/metrics``);
any other address needs a token, and then every request must carry it as
``Authorization: Bearer TOKEN``. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import string

from plasma.addresses import parse_address
from plasma.errors import BadRequest

__all__ = ["MIN_TOKEN_LENGTH", "authorized", "dashboard_address", "is_loopback"]

MIN_TOKEN_LENGTH = 16
_TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "-._~+/=")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1); False for any other name."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def dashboard_address(text: str, token: str | None) -> tuple[str, int]:
    """``(host, port)`` of ``--dashboard`` (a bare PORT listens on 127.0.0.1).

    BadRequest for a malformed address, a token that is too short or not a bearer token's
    characters, and for a non-loopback address without a token.
    """
    host, port = parse_address(text, "dashboard address")
    if token is not None:
        if len(token) < MIN_TOKEN_LENGTH or not set(token) <= _TOKEN_CHARS:
            raise BadRequest(
                f"--dashboard-token must be at least {MIN_TOKEN_LENGTH} characters of "
                "A-Z a-z 0-9 - . _ ~ + / = (e.g. from `python3 -c 'import secrets; "
                "print(secrets.token_urlsafe())'`)"
            )
    elif not is_loopback(host):
        raise BadRequest(
            f"dashboard address {text!r} is not a loopback address: anyone who can reach it "
            "would see the store, so give --dashboard-token too (or listen on 127.0.0.1)"
        )
    return host, port


def authorized(authorization: str | None, token: str | None) -> bool:
    """Whether a request with this ``Authorization`` header may be served (always, without
    a token); the token is compared in constant time."""
    if token is None:
        return True
    if authorization is None:
        return False
    scheme, _, given = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())
