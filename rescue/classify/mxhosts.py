"""MX hosts recognised through DNS when no provider pattern names them.

A company's own `mx.customer.example` in front of a provider names no provider. Its
DNS often does: the host is a CNAME to the provider's host, or its addresses' PTR
names are the provider's, or its zone is served by the provider's name servers (a
weaker hint, asked last). Each name found is matched against the catalog.

The matching is pure (`owner_by_*`); `HostTracer` asks DNS, each question once per
run (MxResolver's cache) and no more questions than its budget allows.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rescue.classify.catalog import Catalog
from rescue.classify.dns import Budget, MxResolver
from rescue.classify.suffix import registered_domain

BY_CNAME = "dns-mx-cname"
BY_PTR = "dns-mx-ptr"
BY_NS = "dns-mx-ns"
# A longer CNAME chain is a loop or a misconfiguration; resolvers give up too.
MAX_CHAIN = 8
# The addresses of one host whose PTR names are asked.
MAX_ADDRESSES = 4


@dataclass(frozen=True, slots=True)
class HostOwner:
    """The provider behind an MX host, and the DNS name that showed it."""

    host: str
    provider: str
    how: str  # BY_CNAME | BY_PTR | BY_NS
    via: str  # the CNAME target, PTR name or name server that matched

    @property
    def note(self) -> str:
        record = {BY_CNAME: "CNAME", BY_PTR: "PTR", BY_NS: "NS"}[self.how]
        return f"{self.host}: {record} {self.via}"


def owner_by_names(host: str, names: Iterable[str], catalog: Catalog, how: str) -> HostOwner | None:
    """The first of `names` (CNAME targets or PTR names) a provider's MX globs match."""
    for name in names:
        provider = catalog.for_mx(name)
        if provider is not None:
            return HostOwner(host, provider.name, how, name)
    return None


def owner_by_ns(host: str, servers: Iterable[str], catalog: Catalog) -> HostOwner | None:
    """The first name server of the host's zone (sorted: DNS shuffles them) a provider's
    `ns` globs match."""
    for server in sorted(servers):
        provider = catalog.for_ns(server)
        if provider is not None:
            return HostOwner(host, provider.name, BY_NS, server)
    return None


def reverse_name(address: str) -> str | None:
    """The in-addr.arpa/ip6.arpa name of an address; None for what is not one."""
    try:
        return ipaddress.ip_address(address).reverse_pointer
    except ValueError:
        return None


class HostTracer:
    """Asks DNS who is behind MX hosts, within a budget of queries for the run."""

    def __init__(self, resolver: MxResolver, catalog: Catalog, budget: Budget) -> None:
        self._resolver = resolver
        self._catalog = catalog
        self.budget = budget

    async def trace_all(self, hosts: Iterable[str]) -> dict[str, HostOwner | None]:
        unique = sorted({h.lower().rstrip(".") for h in hosts if h})
        found = await asyncio.gather(*(self.trace(h) for h in unique))
        return dict(zip(unique, found, strict=True))

    async def trace(self, host: str) -> HostOwner | None:
        chain = await self._cname_chain(host)
        owner = owner_by_names(host, chain, self._catalog, BY_CNAME)
        if owner is not None:
            return owner
        owner = owner_by_names(
            host, await self._ptr_names(chain[-1] if chain else host), self._catalog, BY_PTR
        )
        if owner is not None:
            return owner
        zone = registered_domain(host)
        servers = await self._ask(zone, "NS")
        return owner_by_ns(host, servers, self._catalog)

    async def _ask(self, name: str, rdtype: str) -> tuple[str, ...]:
        return (await self._resolver.records(name, rdtype, self.budget)).values

    async def _cname_chain(self, host: str) -> list[str]:
        chain: list[str] = []
        name = host
        for _ in range(MAX_CHAIN):
            targets = await self._ask(name, "CNAME")
            if not targets or targets[0] in chain or targets[0] == host:
                break
            chain.append(targets[0])
            if self._catalog.for_mx(targets[0]) is not None:
                break  # found: the rest of the chain need not be asked
            name = targets[0]
        return chain

    async def _ptr_names(self, name: str) -> list[str]:
        v4, v6 = await asyncio.gather(self._ask(name, "A"), self._ask(name, "AAAA"))
        addresses: Sequence[str] = (*v4, *v6)[:MAX_ADDRESSES]
        reverse = [r for r in map(reverse_name, addresses) if r is not None]
        answers = await asyncio.gather(*(self._ask(r, "PTR") for r in reverse))
        return [name for names in answers for name in names]
