"""Take stock of the queue: list it, classify every pending recipient, keep what is broken."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rescue.classify.catalog import Catalog
from rescue.classify.classifier import classify_recipient
from rescue.classify.dns import MxAnswer, MxResolver
from rescue.classify.reasons import reason_host
from rescue.model import Classification, QueuedMessage
from rescue.postfix.listing import BadLine


@dataclass
class Inventory:
    messages: list[QueuedMessage] = field(default_factory=list)
    classes: dict[str, tuple[Classification, ...]] = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)
    dns_queries: int = 0


def _needs_dns(message: QueuedMessage, catalog: Catalog, own_relays: frozenset[str]) -> list[str]:
    """Domains whose delay reason does not already name a provider's host."""
    domains = []
    for rcpt in message.recipients:
        peer = reason_host(rcpt.delay_reason) if rcpt.delay_reason else None
        if peer is None or peer[0] in own_relays or catalog.for_mx(peer[0]) is None:
            domains.append(rcpt.domain)
    return domains


async def take_inventory(
    listing: Iterable[QueuedMessage | BadLine],
    catalog: Catalog,
    resolver: MxResolver | None,
    own_relays: Iterable[str] = (),
) -> Inventory:
    relays = frozenset(h.lower() for h in own_relays)
    inv = Inventory()
    domains: set[str] = set()
    for item in listing:
        if isinstance(item, BadLine):
            inv.bad.append(item)
            continue
        inv.messages.append(item)
        if resolver is not None:
            domains.update(_needs_dns(item, catalog, relays))
    answers: dict[str, MxAnswer] = {}
    if resolver is not None and domains:
        answers = await resolver.lookup_all(domains)
        inv.dns_queries = resolver.queries
    for message in inv.messages:
        inv.classes[message.queue_id] = tuple(
            classify_recipient(r, catalog, answers, relays) for r in message.recipients
        )
    return inv
