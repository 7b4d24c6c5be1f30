"""Take stock of the queue: list it, classify every pending recipient, keep what is broken."""

from __future__ import annotations

import contextlib
import gc
import itertools
from collections.abc import AsyncIterator, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rescue.classify.catalog import Catalog
from rescue.classify.classifier import classify_recipient
from rescue.classify.reasons import reason_host
from rescue.model import Classification, QueuedMessage, Recipient
from rescue.postfix.listing import BadLine

if TYPE_CHECKING:
    # At run time imported only when DNS is asked (they load asyncio, ssl and dnspython:
    # a tenth of a scan's start-up that a scan without DNS does not need).
    from rescue.classify.dns import MxAnswer, MxResolver
    from rescue.classify.mxhosts import HostOwner


@dataclass(repr=False)
class Inventory:
    messages: list[QueuedMessage] = field(default_factory=list)
    classes: dict[str, tuple[Classification, ...]] = field(default_factory=dict)
    bad: list[BadLine] = field(default_factory=list)
    dns_queries: int = 0

    def __repr__(self) -> str:
        # Short: asyncio.run() (3.11) builds the repr of a coroutine's result when it puts
        # the SIGINT handler back, and a full one of 10,000 messages takes 0.1 s.
        return (
            f"Inventory({len(self.messages)} messages, {len(self.bad)} unreadable, "
            f"{self.dns_queries} DNS queries)"
        )


class _ReasonHosts:
    """Whether a delay reason already names a provider's host; asked once per distinct text.

    A large queue holds thousands of copies of a few reasons, so each is parsed once.
    """

    def __init__(self, catalog: Catalog, own_relays: Collection[str]) -> None:
        self._catalog = catalog
        self._relays = own_relays
        self._seen: dict[str, bool] = {}

    def decide(self, reason: str) -> bool:
        decided = self._seen.get(reason)
        if decided is None:
            peer = reason_host(reason) if reason else None
            decided = (
                peer is not None
                and peer[0] not in self._relays
                and self._catalog.for_mx(peer[0]) is not None
            )
            self._seen[reason] = decided
        return decided


class _Classifier:
    """classify_recipient, once per distinct (domain, delay reason): nothing else counts."""

    def __init__(
        self,
        catalog: Catalog,
        answers: Mapping[str, MxAnswer],
        own_relays: Collection[str],
        host_owners: Mapping[str, HostOwner | None],
    ) -> None:
        self._catalog = catalog
        self._answers = answers
        self._relays = own_relays
        self._owners = host_owners
        self._seen: dict[tuple[str, str], Classification] = {}

    def __call__(self, recipient: Recipient) -> Classification:
        key = (recipient.domain, recipient.delay_reason)
        found = self._seen.get(key)
        if found is None:
            found = classify_recipient(
                recipient, self._catalog, self._answers, self._relays, self._owners
            )
            self._seen[key] = found
        return found


def unnamed_hosts(answers: Iterable[MxAnswer], catalog: Catalog) -> set[str]:
    """MX hosts of domains none of whose MX hosts a provider pattern names."""
    hosts: set[str] = set()
    for answer in answers:
        if answer.error or any(catalog.for_mx(h) is not None for h in answer.hosts):
            continue
        hosts.update(answer.hosts)
    return hosts


@contextlib.contextmanager
def collection_paused() -> Iterator[None]:
    """No garbage collection while a listing is read.

    Its tens of thousands of objects all live on; the collector, triggered every
    few hundred new objects, would only walk them again and again (a tenth of a
    large scan's time). Cycles made meanwhile are collected once it is on again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def take_inventory(
    listing: Iterable[QueuedMessage | BadLine],
    catalog: Catalog,
    resolver: MxResolver | None,
    own_relays: Iterable[str] = (),
) -> Inventory:
    """Every listed message with a classification per pending recipient.

    DNS is asked only for domains whose delay reason does not already name a
    provider's MX host, once per distinct domain, all at once.
    """
    parts = [part async for part in inventory_parts(listing, catalog, resolver, own_relays)]
    return parts[0] if parts else Inventory()


def _read_part(
    entries: Iterator[QueuedMessage | BadLine],
    size: int | None,
    hosts: _ReasonHosts,
    want_domains: bool,
) -> tuple[Inventory, set[str]]:
    """The next `size` entries (None: all): the part, and the domains DNS must be asked."""
    part = Inventory()
    domains: set[str] = set()
    with collection_paused():
        for item in entries if size is None else itertools.islice(entries, size):
            if isinstance(item, BadLine):
                part.bad.append(item)
                continue
            if item.queue_id in part.classes:
                continue  # listed twice: it moved between queues while being listed
            part.classes[item.queue_id] = ()
            part.messages.append(item)
            if want_domains:
                undecided = (r for r in item.recipients if not hosts.decide(r.delay_reason))
                domains.update(r.domain for r in undecided)
    return part, domains


async def inventory_parts(
    listing: Iterable[QueuedMessage | BadLine],
    catalog: Catalog,
    resolver: MxResolver | None,
    own_relays: Iterable[str] = (),
    size: int | None = None,
) -> AsyncIterator[Inventory]:
    """The inventory `size` listing entries at a time (None: in one part).

    For a flush that streams the queue: memory holds a part, not the queue.
    Each domain is looked up once, when it first appears; later parts reuse
    the answer. A message listed twice is kept once within a part; across
    parts, the flush does not take a message twice (Flush._take).
    """
    relays = frozenset(h.lower() for h in own_relays)
    hosts = _ReasonHosts(catalog, relays)
    answers: dict[str, MxAnswer] = {}
    owners: dict[str, HostOwner | None] = {}
    tracer = None
    if resolver is not None and resolver.host_queries > 0:
        from rescue.classify.dns import Budget  # noqa: PLC0415  (see TYPE_CHECKING above)
        from rescue.classify.mxhosts import HostTracer  # noqa: PLC0415

        tracer = HostTracer(resolver, catalog, Budget(resolver.host_queries))
    classify = _Classifier(catalog, answers, relays, owners)
    entries = iter(listing)
    first = True
    while True:
        if first or size is None:
            # The first part in this thread: nothing else runs yet (a flush's read-ahead
            # helper forks after it, while this is the only thread).
            part, domains = _read_part(entries, size, hosts, resolver is not None)
        else:
            # Later parts in a worker thread: a flush's SMTP sessions go on meanwhile,
            # also while showq is slow to write the listing.
            import asyncio  # noqa: PLC0415  (only a flush reads in parts; see TYPE_CHECKING)

            part, domains = await asyncio.to_thread(
                _read_part, entries, size, hosts, resolver is not None
            )
        first = False
        if not part.messages and not part.bad:
            return
        new = domains.difference(answers)
        if resolver is not None and new:
            found = await resolver.lookup_all(new)
            answers.update(found)
            if tracer is not None:
                unnamed = unnamed_hosts(found.values(), catalog).difference(owners)
                owners.update(await tracer.trace_all(unnamed))
        part.dns_queries = resolver.queries if resolver is not None else 0
        for message in part.messages:
            part.classes[message.queue_id] = tuple(classify(r) for r in message.recipients)
        yield part
        if size is None:
            return
