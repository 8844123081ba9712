"""TCP accept loops bounded by a connection limit, for the side servers (internal).

``trio.serve_listeners`` accepts every connection as it comes: each takes a descriptor of
the process, so enough of them (any local user can open them, also one the store socket
refuses) leave the coordinator none for its store clients; and accepting only to close
again still spends a descriptor per connection for as long as the close takes.
:func:`serve_bounded` instead stops accepting while ``limit`` connections are being
served: the rest wait in the kernel's listen backlog (``limit`` deep, then the kernel drops
their SYNs and the clients retry), which costs the process no descriptor. The dashboard and
``/metrics`` use it, with limits from :func:`plasma.linux.fdlimit.side_connection_limit`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from plasma.linux.fdlimit import EXHAUSTED

__all__ = ["open_bounded_listeners", "serve_bounded"]

EXHAUSTED_PAUSE = 0.1  # seconds between accepts while the process is out of descriptors

log = logging.getLogger("plasma.listeners")


async def open_bounded_listeners(port: int, host: str, limit: int) -> list[trio.SocketListener]:
    """``trio.open_tcp_listeners`` with a listen backlog of ``limit``: connections beyond
    those being served wait there, not in our descriptor table."""
    return await trio.open_tcp_listeners(port, host=host, backlog=max(1, limit))


async def serve_bounded(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    listeners: list[trio.SocketListener],
    limit: int,
    name: str,
) -> None:
    """Serve each connection of ``listeners`` with ``handler`` (which must bound its own
    time), at most ``limit`` at once over all of them, until cancelled."""
    slots = trio.Semaphore(max(1, limit))
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, handler, listener, slots, nursery, name)


async def _accept_loop(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    listener: trio.SocketListener,
    slots: trio.Semaphore,
    nursery: trio.Nursery,
    name: str,
) -> None:
    exhausted = False
    while True:
        await slots.acquire()  # a free slot first: past the limit, nothing is accepted
        try:
            stream = await listener.accept()
        except OSError as exc:
            slots.release()
            if exc.errno in EXHAUSTED:
                if not exhausted:
                    log.warning("%s: out of descriptors (%s): not accepting for now", name, exc)
                    exhausted = True
            else:
                log.warning("%s: accept failed: %s", name, exc)
            await trio.sleep(EXHAUSTED_PAUSE)
            continue
        except BaseException:
            slots.release()
            raise
        exhausted = False
        nursery.start_soon(_run, handler, stream, slots)


async def _run(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    stream: trio.SocketStream,
    slots: trio.Semaphore,
) -> None:
    try:
        async with stream:
            await handler(stream)
    except Exception:  # a side server's bug must never stop the store beside it
        log.exception("a connection handler failed")
    finally:
        slots.release()
