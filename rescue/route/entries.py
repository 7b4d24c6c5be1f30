"""Which recipient domains the transport table lists, and where they go (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from rescue.route.breaker import ProviderRoute

# Why a domain is listed (journal values too).
CONFIGURED = "configured domain"
STUCK = "stuck mail"


@dataclass(frozen=True, slots=True)
class TableEntry:
    domain: str
    transport: str
    provider: str
    why: str


def relay_transport(listen: tuple[str, str, int], queue_directory: str | None = None) -> str:
    """The next hop Postfix is given for the relay endpoint.

    TCP: `smtp:[HOST]:PORT` (brackets: no MX lookup). A unix socket: LMTP (Postfix's
    smtp client speaks only TCP); a path inside the queue directory is given relative
    to it, which Postfix's lmtp client finds chrooted or not.
    """
    kind, where, port = listen
    if kind == "unix":
        if queue_directory and where.startswith(queue_directory.rstrip("/") + "/"):
            where = where[len(queue_directory.rstrip("/")) + 1 :]
        return f"lmtp:unix:{where}"
    return f"smtp:[{where}]:{port}"


def table_entries(
    routes: Iterable[ProviderRoute],
    domains: Mapping[str, Mapping[str, str]],
    configured: Mapping[str, Iterable[str]],
    transport: str,
    *,
    paused: str | None = None,
) -> list[TableEntry]:
    """One entry per recipient domain of each rerouting provider, sorted by domain.

    `domains`: provider -> {domain: why} remembered from its stuck mail; `configured`:
    provider -> its `domains` in the catalog. `paused` (the quota that is full, in words)
    empties the table: the mail then goes to the provider and waits there. A domain two
    providers claim goes with the first by name.
    """
    if paused is not None:
        return []
    chosen: dict[str, TableEntry] = {}
    for route in sorted(routes, key=lambda r: r.provider):
        if not route.rerouting:
            continue
        name = route.provider
        listed = {d.lower(): CONFIGURED for d in configured.get(name, ())}
        listed.update({d.lower(): why for d, why in domains.get(name, {}).items()})
        for domain, why in listed.items():
            if domain and domain not in chosen and _plain_domain(domain):
                chosen[domain] = TableEntry(
                    domain, transport, name, f"{name} {route.describe()}: {why}"
                )
    return [chosen[d] for d in sorted(chosen)]


def _plain_domain(domain: str) -> bool:
    """A name a transport table can key on (no globs, no spaces, no address)."""
    return not any(c.isspace() or c in "*?[]@#" for c in domain)
