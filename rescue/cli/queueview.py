"""The queue as a command sees it: listed, classified, with what could not be read."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from rescue.classify.catalog import Catalog, load_catalog
from rescue.classify.inventory import Inventory, inventory_parts
from rescue.config import Config
from rescue.errors import PostfixError
from rescue.model import QueuedMessage
from rescue.postfix.commands import Postfix
from rescue.postfix.listing import BadLine
from rescue.postfix.queue import MailQueue

log = logging.getLogger("rescue")
T = TypeVar("T")


def own_relays(cfg: Config, postfix: Postfix, relayhost: str | None = None) -> tuple[str, ...]:
    """Relays of our own: the configured ones plus Postfix's relayhost (asked if not given)."""
    relays = list(cfg.postfix.own_relays)
    try:
        relayhost = postfix.postconf("relayhost") if relayhost is None else relayhost
    except PostfixError:
        relayhost = ""
    for word in relayhost.replace(",", " ").split():
        host = word.strip("[]").split("]")[0].split(":")[0].lower()
        if host:
            relays.append(host)
    return tuple(relays)


@dataclass(frozen=True)
class QueueView:
    """The queue as a command sees it: the inventory and how it was made."""

    inventory: Inventory
    catalog: Catalog
    postfix: Postfix
    queue: MailQueue  # where the inventory came from: `postfix`, or a copy or an export


Listing = Iterator[QueuedMessage | BadLine]


class QueueReader:
    """A queue's listing, started at once, and how its recipients are classified.

    Creating it starts the listing (Postfix's showq works while the caller goes
    on); `parts` and `whole` then classify it, reporting unreadable entries.
    `listing` is the queue's listing when the caller started it already, `relayhost`
    Postfix's when the caller asked postconf already.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        use_dns: bool = True,
        source: MailQueue | None = None,
        listing: Listing | None = None,
        relayhost: str | None = None,
    ) -> None:
        self.postfix = Postfix(cfg.postfix)
        self.queue: MailQueue = self.postfix if source is None else source
        self.listing = self.queue.listing() if listing is None else listing
        self.catalog = load_catalog(cfg.providers)
        # A copy or an export may come from another host: this host's relayhost says
        # nothing about where its mail was stuck (the configured own_relays still count).
        self.relays = (
            own_relays(cfg, self.postfix, relayhost) if source is None else cfg.postfix.own_relays
        )
        self._dns = cfg.dns if (use_dns and cfg.dns.enabled) else None

    async def parts(self, size: int | None) -> AsyncIterator[Inventory]:
        """The classified listing `size` entries at a time (None: all in one part)."""
        resolver = None
        if self._dns is not None:
            from rescue.classify.dns import MxResolver  # noqa: PLC0415  (asyncio, dnspython)

            resolver = MxResolver(self._dns)
        async for part in inventory_parts(self.listing, self.catalog, resolver, self.relays, size):
            if part.bad:
                report_bad(part)
            yield part

    def whole(self) -> QueueView:
        """The whole queue, classified (runs its own event loop)."""

        async def collect() -> Inventory:
            parts = [part async for part in self.parts(None)]
            return parts[0] if parts else Inventory()

        if self._dns is None:
            # Without DNS nothing is waited for: no event loop (nor asyncio) is needed.
            return QueueView(run_unwaiting(collect()), self.catalog, self.postfix, self.queue)
        from rescue.cli.common import run_async  # noqa: PLC0415  (click: not for a plain scan)

        return QueueView(run_async(collect()), self.catalog, self.postfix, self.queue)


def run_unwaiting(coro: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits for anything, run without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        result: T = done.value
        return result
    coro.close()
    raise RuntimeError("the coroutine waited for something: it needs an event loop")


def inventory_of(
    cfg: Config,
    *,
    use_dns: bool = True,
    source: MailQueue | None = None,
    listing: Listing | None = None,
    relayhost: str | None = None,
) -> QueueView:
    """Take stock of live Postfix, or of `source` (a spool copy or an export folder).

    `listing` is `source`'s (or Postfix's) listing when the caller started it
    already, so that showq works while the caller imports what it needs.
    """
    reader = QueueReader(cfg, use_dns=use_dns, source=source, listing=listing, relayhost=relayhost)
    return reader.whole()


def report_bad(inventory: Inventory) -> None:
    """One warning for each unreadable listing line or queue file."""
    from rescue.sources.spool import BadFile  # noqa: PLC0415  (spool copies only; kept off start-up)

    for bad in inventory.bad:
        if isinstance(bad, BadFile):
            where = f"{bad.queue_id}: " if bad.queue_id else ""
            log.warning("%sskipped %s: %s", where, bad.path, bad.problem)
            continue
        log.warning(
            "%s: unreadable line %d of the queue listing: %s",
            bad.queue_id or "?",
            bad.number,
            bad.problem,
        )
