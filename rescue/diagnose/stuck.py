"""The queue's side of a diagnosis (pure): which mail is stuck where, why, from whom."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from rescue.classify.catalog import Catalog, KnownReason
from rescue.classify.reasons import reason_host
from rescue.classify.shape import Item, provider_key, reason_key, sender_domain


@dataclass(frozen=True, slots=True)
class StuckGroup:
    """Deferred mail at one provider with one reason."""

    provider: str  # the provider's name, "mixed: ..." or "(unknown)"
    label: str  # the provider's label; else "HOST (no known provider)"
    reason: str  # the reply, addresses and ids masked
    known: KnownReason | None  # the catalog's entry for the reply, if any
    mails: int
    sender_domains: tuple[tuple[str, int], ...]  # most mails first; no null sender
    sender: str  # one stuck envelope sender ("" the null sender)
    recipient: str  # one stuck recipient
    peer: tuple[str, str] | None  # (host, address) Postfix last talked to, if it says

    @property
    def checks(self) -> tuple[str, ...]:
        return self.known.checks if self.known is not None else ()


@dataclass
class _Tally:
    first: Item
    mails: set[str] = field(default_factory=set)
    senders: dict[str, set[str]] = field(default_factory=dict)
    peer: tuple[str, str] | None = None
    sender: str | None = None

    def add(self, item: Item) -> None:
        message = item.message
        self.mails.add(message.queue_id)
        if message.sender:
            self.senders.setdefault(sender_domain(message.sender), set()).add(message.queue_id)
            self.sender = self.sender or message.sender
        if self.peer is None:
            self.peer = reason_host(item.recipient.delay_reason)


def _known(catalog: Catalog, provider: str | None, reason: str) -> KnownReason | None:
    """The catalog's entry for a reply: the provider's own, else one unambiguous text match."""
    if not reason:
        return None
    found = catalog.by_name.get(provider) if provider else None
    if found is not None:
        return found.explain(reason)
    match = catalog.for_reason_text(reason)
    return match[1] if match is not None else None


def stuck_groups(entries: Iterable[Item], catalog: Catalog) -> list[StuckGroup]:
    """One group per (provider, reason) of deferred recipients, most mails first."""
    tallies: dict[tuple[str, str], _Tally] = {}
    for item in entries:
        if not item.recipient.delay_reason:
            continue
        key = (provider_key(item.classification), reason_key(item.recipient.delay_reason))
        tally = tallies.get(key)
        if tally is None:
            tally = tallies[key] = _Tally(item)
        tally.add(item)
    groups = []
    for (provider, reason), tally in tallies.items():
        name = tally.first.classification.provider
        entry = catalog.by_name.get(name) if name else None
        senders = sorted(tally.senders.items(), key=lambda s: (-len(s[1]), s[0]))
        label = entry.label if entry is not None else provider
        if entry is None and tally.peer is not None:
            label = f"{tally.peer[0]} (no known provider)"
        groups.append(
            StuckGroup(
                provider=provider,
                label=label,
                reason=reason,
                known=_known(catalog, name, tally.first.recipient.delay_reason),
                mails=len(tally.mails),
                sender_domains=tuple((domain, len(ids)) for domain, ids in senders),
                sender=tally.sender or "",
                recipient=tally.first.recipient.address,
                peer=tally.peer,
            )
        )
    groups.sort(key=lambda g: (-g.mails, g.provider, g.reason))
    return groups


def sender_domains(entries: Iterable[Item]) -> list[str]:
    """The envelope sender domains of deferred mail, most stuck mails first."""
    mails: Counter[str] = Counter()
    seen: set[str] = set()
    for item in entries:
        message = item.message
        if message.queue_id in seen or not message.sender:
            continue
        seen.add(message.queue_id)
        mails[sender_domain(message.sender)] += 1
    return [domain for domain, _ in sorted(mails.items(), key=lambda m: (-m[1], m[0]))]
