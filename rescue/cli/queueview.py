"""The queue as a command sees it: listed, classified, with what could not be read."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from rescue.classify.catalog import Catalog, load_catalog
from rescue.classify.dns import MxResolver
from rescue.cli.common import run_async
from rescue.config import Config
from rescue.errors import PostfixError
from rescue.inventory import Inventory, take_inventory
from rescue.model import QueuedMessage
from rescue.postfix.commands import Postfix
from rescue.postfix.listing import BadLine
from rescue.queue import MailQueue

log = logging.getLogger("rescue")


def own_relays(cfg: Config, postfix: Postfix) -> tuple[str, ...]:
    """Relays of our own: the configured ones plus Postfix's relayhost."""
    relays = list(cfg.postfix.own_relays)
    try:
        relayhost = postfix.postconf("relayhost")
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


def inventory_of(
    cfg: Config,
    *,
    use_dns: bool = True,
    source: MailQueue | None = None,
    listing: Listing | None = None,
) -> QueueView:
    """Take stock of live Postfix, or of `source` (a spool copy or an export folder).

    `listing` is `source`'s (or Postfix's) listing when the caller started it
    already, so that showq works while the caller imports what it needs.
    """
    postfix = Postfix(cfg.postfix)
    queue: MailQueue = postfix if source is None else source
    if listing is None:
        listing = queue.listing()  # first: Postfix's showq works while we load the rest
    catalog = load_catalog(cfg.providers)
    # A copy or an export may come from another host: this host's relayhost says nothing
    # about where its mail was stuck (the configured own_relays still count).
    relays = own_relays(cfg, postfix) if source is None else cfg.postfix.own_relays

    async def collect() -> Inventory:
        resolver = MxResolver(cfg.dns) if (use_dns and cfg.dns.enabled) else None
        return await take_inventory(listing, catalog, resolver, relays)

    inventory = run_async(collect())
    if inventory.bad:
        report_bad(inventory)
    return QueueView(inventory, catalog, postfix, queue)


def report_bad(inventory: Inventory) -> None:
    """One warning for each unreadable listing line or queue file."""
    from rescue.spool import BadFile  # noqa: PLC0415  (spool copies only; kept off start-up)

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
