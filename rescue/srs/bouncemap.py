"""SRS's two maps for Postfix, served over the socketmap protocol.

``forward`` rewrites a sender (``sender_canonical_maps``), ``reverse`` finds the
original sender of a bounce to one of our SRS addresses (``recipient_canonical_maps``).
Anything that is not an address we made, or whose hash or age does not hold, is
NOTFOUND: Postfix then keeps the address as it is, and the SRS domain relays for no one.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable

from rescue.errors import SrsError
from rescue.postfix.socketmap import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_SOCKET_MODE,
    NOTFOUND,
    Reply,
    serve,
)
from rescue.srs.rewriter import NotSrsError, SrsRewriter

log = logging.getLogger(__name__)


def answer(rewriter: SrsRewriter, payload: bytes) -> Reply:
    """The reply to one request payload (``NAME KEY``). Never raises."""
    name, space, raw_key = payload.partition(b" ")
    # Not UTF-8 is not an address we make: kept as it is so the rewriter refuses it.
    key = raw_key.decode(errors="surrogateescape")
    try:
        if not space or name not in (b"forward", b"reverse"):
            return Reply(
                "PERM", f"unknown map {name.decode(errors='replace')!r}; use forward or reverse"
            )
        if name == b"forward":
            result = rewriter.forward(key)
            # Unchanged means "keep it": the null sender, our own domain, an excluded one.
            return NOTFOUND if result == key else Reply("OK", result)
        return Reply("OK", rewriter.reverse(key))
    except NotSrsError as exc:
        # Postfix asks about every recipient at the SRS domain (postmaster@, ...).
        log.debug("%s: %s", name.decode(errors="replace"), exc)
        return NOTFOUND
    except SrsError as exc:
        # Forged, expired, unusable: never a rewrite, or the SRS domain would relay
        # mail for anyone.
        log.info("%s: %s", name.decode(errors="replace"), exc)
        return NOTFOUND
    except Exception:
        # A bug must not take the server down, nor make Postfix lose mail: TEMP defers it.
        log.exception("socketmap: unexpected error on a %s lookup", name.decode(errors="replace"))
        return Reply("TEMP", "internal error")


async def serve_srs(
    rewriter: SrsRewriter,
    listen: str,
    *,
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
    socket_mode: int = DEFAULT_SOCKET_MODE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> None:
    """Answer the ``forward`` and ``reverse`` maps on ``listen`` until ``stop`` is set."""
    await serve(
        functools.partial(answer, rewriter),
        listen,
        ready=ready,
        stop=stop,
        socket_mode=socket_mode,
        idle_timeout=idle_timeout,
        what="SRS socketmaps forward and reverse",
    )
