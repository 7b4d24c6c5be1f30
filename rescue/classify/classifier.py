"""Decide the provider of each pending recipient (pure: DNS answers are passed in).

Order: the host named in the delay reason, the domain's MX hosts in DNS (by name,
else by the DNS records of the hosts: CNAME, PTR, NS; see mxhosts), the provider's
`domains`, then the reason text alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from rescue.classify.catalog import Catalog, Provider
from rescue.classify.reasons import reason_host
from rescue.model import Classification, Recipient

if TYPE_CHECKING:  # types only: at run time they would load asyncio and dnspython
    from rescue.classify.dns import MxAnswer
    from rescue.classify.mxhosts import HostOwner

REASON_HOST = "reason-host"
DNS_MX = "dns-mx"
DOMAINS = "domains"
REASON_TEXT = "reason-text"

# The note of a recipient whose domain's MX hosts belong to different providers; such a
# recipient has no provider and `classified_by` DNS_MX (DNS decided it is mixed).
SEVERAL_PROVIDERS = "MX hosts of several providers: "


def _result(
    provider: Provider, reason: str, how: str, mx: str | None, note: str = ""
) -> Classification:
    return Classification(
        provider=provider.name,
        mx=mx,
        classified_by=how,
        reason_matched=provider.selecting_pattern(reason) if reason else None,
        note=note,
    )


def _is_address(name: str) -> bool:
    """Postfix names a peer by its address when it has no name (e.g. a [1.2.3.4] nexthop)."""
    return name.replace(".", "").isdigit() or ":" in name


def classify_recipient(
    recipient: Recipient,
    catalog: Catalog,
    mx_answers: Mapping[str, MxAnswer],
    own_relays: Collection[str] = (),
    host_owners: Mapping[str, HostOwner | None] | None = None,
) -> Classification:
    """The provider of one recipient, and how it was decided.

    The reason text alone only decides when no host is known: once the delay
    reason or DNS names the destination's hosts and none belongs to a provider,
    the recipient is at no known provider, whatever its reply text resembles.
    `host_owners`: what DNS showed of MX hosts no pattern names (HostTracer).
    """
    reason = recipient.delay_reason
    notes = []
    hosts_known: list[str] = []

    peer = reason_host(reason) if reason else None
    if peer is not None:
        host = peer[0]
        if host in own_relays:
            notes.append(f"{host} is our own relay")
        else:
            provider = catalog.for_mx(host)
            if provider is not None:
                return _result(provider, reason, REASON_HOST, host)
            if not _is_address(host):
                hosts_known.append(host)

    answer = mx_answers.get(recipient.domain)
    if answer is not None and answer.error:
        notes.append(f"MX lookup for {recipient.domain} failed: {answer.error}")
    elif answer is not None:
        owners: dict[str, tuple[Provider, str]] = {}
        strangers = []
        for host in answer.hosts:
            provider = catalog.for_mx(host)
            if provider is None:
                strangers.append(host)
            else:
                owners.setdefault(provider.name, (provider, host))
        if len(owners) > 1:
            return _several(answer, owners)
        if owners:
            provider, host = next(iter(owners.values()))
            note = (
                f"also MX hosts of no known provider: {', '.join(strangers)}" if strangers else ""
            )
            return _result(provider, reason, DNS_MX, host, note)
        traced = _traced(strangers, catalog, host_owners or {})
        if len(traced) > 1:
            return _several(answer, traced)
        if traced:
            provider, owner = next(iter(traced.values()))
            return _result(provider, reason, owner.how, owner.host, owner.note)
        hosts_known.extend(strangers)

    provider = catalog.for_domain(recipient.domain)
    if provider is not None:
        return _result(provider, reason, DOMAINS, None, "; ".join(notes))

    if hosts_known:
        notes.append(f"{', '.join(dict.fromkeys(hosts_known))}: no known provider")
    elif reason:
        found = catalog.for_reason_text(reason)
        if found is not None:
            return _result(found[0], reason, REASON_TEXT, None, "; ".join(notes))

    return Classification(
        provider=None, mx=hosts_known[0] if hosts_known else None, note="; ".join(notes)
    )


def _traced(
    hosts: Sequence[str], catalog: Catalog, host_owners: Mapping[str, HostOwner | None]
) -> dict[str, tuple[Provider, HostOwner]]:
    """The providers DNS showed behind `hosts`, each with its first host, in MX order."""
    found: dict[str, tuple[Provider, HostOwner]] = {}
    for host in hosts:
        owner = host_owners.get(host)
        provider = catalog.by_name.get(owner.provider) if owner is not None else None
        if owner is not None and provider is not None:
            found.setdefault(provider.name, (provider, owner))
    return found


def mixed_providers(classification: Classification) -> tuple[str, ...]:
    """The providers a mixed-MX recipient's MX hosts belong to; () for any other result."""
    c = classification
    if c.provider is None and c.classified_by == DNS_MX and c.note.startswith(SEVERAL_PROVIDERS):
        return tuple(c.note[len(SEVERAL_PROVIDERS) :].split(", "))
    return ()


def _several(answer: MxAnswer, providers: Iterable[str]) -> Classification:
    """MX hosts of more than one provider: none is named."""
    return Classification(
        provider=None,
        mx=answer.hosts[0],
        classified_by=DNS_MX,
        note=SEVERAL_PROVIDERS + ", ".join(sorted(providers)),
    )
