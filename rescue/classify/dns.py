"""Asynchronous MX lookups: one per distinct domain, concurrent, cached for their TTL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.resolver

from rescue.config import DnsConfig

# How long a failed lookup is remembered, so a dead domain is not asked once a message.
NEGATIVE_TTL = 60.0


@dataclass(frozen=True, slots=True)
class MxAnswer:
    domain: str
    hosts: tuple[str, ...] = ()  # most preferred first
    error: str | None = None
    expires: float = 0.0


def _make_resolver(cfg: DnsConfig) -> dns.asyncresolver.Resolver:
    if cfg.nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = list(cfg.nameservers)
        resolver.port = cfg.port
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = cfg.timeout
    resolver.timeout = cfg.timeout
    return resolver


class MxResolver:
    """Looks up MX records; the cache lives as long as the resolver (a run, or the service)."""

    def __init__(self, cfg: DnsConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._resolver = _make_resolver(cfg)
        self._limit = asyncio.Semaphore(cfg.concurrency)
        self._clock = clock
        self._cache: dict[str, MxAnswer] = {}
        self.queries = 0

    async def lookup(self, domain: str) -> MxAnswer:
        domain = domain.lower().rstrip(".")
        cached = self._cache.get(domain)
        if cached is not None and cached.expires > self._clock():
            return cached
        async with self._limit:
            answer = await self._query(domain)
        self._cache[domain] = answer
        return answer

    async def lookup_all(self, domains: Iterable[str]) -> dict[str, MxAnswer]:
        unique = sorted({d.lower().rstrip(".") for d in domains if d})
        answers = await asyncio.gather(*(self.lookup(d) for d in unique))
        return dict(zip(unique, answers, strict=True))

    async def _query(self, domain: str) -> MxAnswer:
        self.queries += 1
        now = self._clock()
        try:
            answer = await self._resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            return MxAnswer(domain, error="no such domain (NXDOMAIN)", expires=now + NEGATIVE_TTL)
        except dns.resolver.NoAnswer:
            # RFC 5321 section 5.1: no MX means the domain itself is the mail host.
            return MxAnswer(domain, hosts=(domain,), expires=now + NEGATIVE_TTL)
        except dns.resolver.NoNameservers as exc:
            return MxAnswer(domain, error=f"DNS failure: {exc}", expires=now + NEGATIVE_TTL)
        except dns.exception.Timeout:
            return MxAnswer(domain, error="DNS timeout", expires=now + NEGATIVE_TTL)
        except dns.exception.DNSException as exc:
            return MxAnswer(domain, error=f"DNS error: {exc}", expires=now + NEGATIVE_TTL)
        records = sorted(answer, key=lambda r: (r.preference, str(r.exchange)))
        hosts = tuple(
            str(r.exchange).rstrip(".").lower() for r in records if str(r.exchange) != "."
        )
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        if not hosts:  # RFC 7505 null MX: the domain takes no mail
            return MxAnswer(domain, error="null MX: the domain accepts no mail", expires=now + ttl)
        return MxAnswer(domain, hosts=hosts, expires=now + ttl)
