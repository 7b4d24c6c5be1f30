"""Decide the provider of each pending recipient (pure: DNS answers are passed in).

Order: the host named in the delay reason, the domain's MX hosts in DNS, the
provider's `domains`, then the reason text alone.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from rescue.classify.catalog import Catalog, Provider
from rescue.classify.dns import MxAnswer
from rescue.classify.reasons import reason_host
from rescue.model import Classification, Recipient

REASON_HOST = "reason-host"
DNS_MX = "dns-mx"
DOMAINS = "domains"
REASON_TEXT = "reason-text"


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


def classify_recipient(
    recipient: Recipient,
    catalog: Catalog,
    mx_answers: Mapping[str, MxAnswer],
    own_relays: Collection[str] = (),
) -> Classification:
    reason = recipient.delay_reason
    notes = []

    peer = reason_host(reason) if reason else None
    if peer is not None:
        host = peer[0]
        if host in own_relays:
            notes.append(f"{host} is our own relay")
        else:
            provider = catalog.for_mx(host)
            if provider is not None:
                return _result(provider, reason, REASON_HOST, host)

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
            return Classification(
                provider=None,
                mx=answer.hosts[0],
                classified_by=DNS_MX,
                note="MX hosts of several providers: " + ", ".join(sorted(owners)),
            )
        if owners:
            provider, host = next(iter(owners.values()))
            note = (
                f"also MX hosts of no known provider: {', '.join(strangers)}" if strangers else ""
            )
            return _result(provider, reason, DNS_MX, host, note)

    provider = catalog.for_domain(recipient.domain)
    if provider is not None:
        return _result(provider, reason, DOMAINS, None, "; ".join(notes))

    if reason:
        found = catalog.for_reason_text(reason)
        if found is not None:
            return _result(found[0], reason, REASON_TEXT, None, "; ".join(notes))

    return Classification(provider=None, note="; ".join(notes))
