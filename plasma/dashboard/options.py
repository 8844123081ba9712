"""``--dashboard`` and ``--dashboard-token``, shared by ``serve`` and ``dag run``."""

from __future__ import annotations

import argparse
import os

from plasma.dashboard.access import dashboard_address
from plasma.errors import BadRequest

__all__ = ["TOKEN_ENV", "add_arguments", "from_args"]

TOKEN_ENV = "PLASMA_DASHBOARD_TOKEN"


def add_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Add the two options to ``parser``; ``what`` is what the page shows."""
    parser.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        help=f"serve a read-only web page of {what} here; a bare PORT listens on 127.0.0.1 "
        "(any other address needs --dashboard-token)",
    )
    parser.add_argument(
        "--dashboard-token",
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on every dashboard request "
        f"(default: ${TOKEN_ENV}, which other users cannot read in ps)",
    )


def from_args(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """``(address, token)``, checked now so a typo fails before anything starts."""
    token = args.dashboard_token or os.environ.get(TOKEN_ENV) or None
    if args.dashboard is None:
        if args.dashboard_token is not None:
            raise BadRequest("--dashboard-token needs --dashboard HOST:PORT")
        return None, None
    dashboard_address(args.dashboard, token)
    return args.dashboard, token
