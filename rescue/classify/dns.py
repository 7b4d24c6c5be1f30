"""Asynchronous DNS lookups, concurrent up to a limit, cached per TTL.

MX records: one lookup per distinct recipient domain. Other records (CNAME, A, AAAA,
PTR, NS; see mxhosts): one per distinct name and type, within a budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from rescue.config import DnsConfig
from rescue.errors import RescueError

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.resolver

R = TypeVar("R", bound="dns.resolver.BaseResolver")

# How long a failed or empty lookup is remembered, so a dead domain is not asked once a
# message. Our answers come without the SOA that RFC 2308 takes a negative TTL from.
NEGATIVE_TTL = 60.0


@dataclass(frozen=True, slots=True)
class MxAnswer:
    domain: str
    hosts: tuple[str, ...] = ()  # most preferred first
    error: str | None = None
    expires: float = 0.0


@dataclass(frozen=True, slots=True)
class Records:
    """The names (or addresses) one question got: CNAME target, PTR names, NS names, A."""

    name: str
    rdtype: str
    values: tuple[str, ...] = ()
    error: str | None = None  # NXDOMAIN, no answer, a failure, or "not asked (budget)"
    expires: float = 0.0


class Budget:
    """How many more queries a run may send for one purpose (MX host recognition)."""

    def __init__(self, queries: int) -> None:
        self.left = queries
        self.refused = 0  # questions not asked because the budget was spent

    def take(self) -> bool:
        if self.left <= 0:
            self.refused += 1
            return False
        self.left -= 1
        return True


def normal_domain(domain: str) -> str:
    return domain.lower().rstrip(".")


def _make_resolver(cfg: DnsConfig) -> dns.asyncresolver.Resolver:
    # dnspython is imported when the first lookup is made, not at every start: it
    # costs a tenth of a second, and most runs need no lookup (the delay reason
    # names the provider's MX host).
    import dns.asyncresolver  # noqa: PLC0415

    return build_resolver(
        dns.asyncresolver.Resolver, cfg, "set [dns] nameservers, or scan with --no-dns"
    )


def build_resolver(kind: type[R], cfg: DnsConfig, hint: str) -> R:
    """A dnspython resolver (`kind`: sync or async) that asks [dns] nameservers, else
    resolv.conf's; `hint` says what to do when there are none."""
    import dns.resolver  # noqa: PLC0415

    if cfg.nameservers:
        resolver = kind(configure=False)
        resolver.nameservers = list(cfg.nameservers)
        resolver.port = cfg.port
    else:
        try:
            resolver = kind()
        except dns.resolver.NoResolverConfiguration as exc:
            raise RescueError(f"no DNS resolver: {exc}; {hint}") from exc
    # lifetime bounds the whole lookup, retries included; timeout one query.
    resolver.lifetime = cfg.timeout
    resolver.timeout = cfg.timeout
    return resolver


def _failure_text(exc: dns.resolver.NoNameservers) -> str:
    """Each server and what it answered, e.g. "Do53:127.0.0.1@53 answered SERVFAIL"."""
    errors = exc.kwargs.get("errors") or []
    said = "; ".join(f"{err[0]} answered {err[3]}" for err in errors)
    return f"DNS failure: {said}" if said else "DNS failure: no name server answered"


class MxResolver:
    """Looks up MX records; the cache lives as long as the resolver (a run, or the service)."""

    def __init__(self, cfg: DnsConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._cfg = cfg
        self._resolver: dns.asyncresolver.Resolver | None = None
        self._timeout = cfg.timeout
        self._limit = asyncio.Semaphore(cfg.concurrency)
        self._clock = clock
        self.host_queries = cfg.host_queries  # the budget of a run for MX host recognition
        self._cache: dict[str, MxAnswer] = {}
        self._records: dict[tuple[str, str], Records] = {}
        self._asking: dict[tuple[str, str], asyncio.Future[Records]] = {}
        self.queries = 0

    async def lookup(self, domain: str) -> MxAnswer:
        domain = normal_domain(domain)
        cached = self._cache.get(domain)
        if cached is not None and cached.expires > self._clock():
            return cached
        async with self._limit:
            answer = await self._query(domain)
        self._cache[domain] = answer
        return answer

    async def lookup_all(self, domains: Iterable[str]) -> dict[str, MxAnswer]:
        """Answers for every distinct domain (lower case, no final dot), asked concurrently."""
        self._forget_expired()
        unique = sorted({normal_domain(d) for d in domains if d})
        answers = await asyncio.gather(*(self.lookup(d) for d in unique))
        return dict(zip(unique, answers, strict=True))

    def _forget_expired(self) -> None:
        now = self._clock()
        for domain in [d for d, a in self._cache.items() if a.expires <= now]:
            del self._cache[domain]
        for key in [k for k, r in self._records.items() if r.expires <= now]:
            del self._records[key]

    async def records(self, name: str, rdtype: str, budget: Budget) -> Records:
        """One question, asked once while its answer lives; none past the budget.

        Concurrent callers of the same question share one query.
        """
        key = (normal_domain(name), rdtype)
        cached = self._records.get(key)
        if cached is not None and cached.expires > self._clock():
            return cached
        asking = self._asking.get(key)
        if asking is not None:
            return await asking
        if not budget.take():
            return Records(key[0], rdtype, error="not asked: DNS budget spent")
        future: asyncio.Future[Records] = asyncio.get_running_loop().create_future()
        self._asking[key] = future
        try:
            async with self._limit:
                found = await self._query_records(*key)
            self._records[key] = found
            future.set_result(found)
        finally:
            del self._asking[key]
            if not future.done():
                future.cancel()
        return found

    async def _query_records(self, name: str, rdtype: str) -> Records:
        if self._resolver is None:
            self._resolver = _make_resolver(self._cfg)
        import dns.exception  # noqa: PLC0415  (loaded by _make_resolver; see there)
        import dns.resolver  # noqa: PLC0415

        self.queries += 1
        now = self._clock()
        failed = now + NEGATIVE_TTL
        try:
            answer = await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return Records(name, rdtype, error="NXDOMAIN", expires=failed)
        except dns.resolver.NoAnswer:
            return Records(name, rdtype, expires=failed)
        except dns.resolver.NoNameservers as exc:
            return Records(name, rdtype, error=_failure_text(exc), expires=failed)
        except dns.exception.Timeout:
            return Records(name, rdtype, error="DNS timeout", expires=failed)
        except dns.exception.DNSException as exc:
            return Records(name, rdtype, error=f"DNS error: {exc}", expires=failed)
        values = tuple(
            r.to_text().rstrip(".").lower()
            for r in answer
            if r.rdtype == answer.rdtype  # the records asked for, not a chain's CNAMEs
        )
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        return Records(name, rdtype, values=values, expires=now + ttl)

    async def _query(self, domain: str) -> MxAnswer:
        if self._resolver is None:
            self._resolver = _make_resolver(self._cfg)
        import dns.exception  # noqa: PLC0415  (loaded by _make_resolver; see there)
        import dns.resolver  # noqa: PLC0415

        self.queries += 1
        now = self._clock()
        failed = now + NEGATIVE_TTL
        try:
            answer = await self._resolver.resolve(domain, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            return MxAnswer(domain, error="no such domain (NXDOMAIN)", expires=failed)
        except dns.resolver.NoAnswer:
            # RFC 5321 section 5.1: no MX means the domain itself is the mail host.
            return MxAnswer(domain, hosts=(domain,), expires=failed)
        except dns.resolver.NoNameservers as exc:
            return MxAnswer(domain, error=_failure_text(exc), expires=failed)
        except dns.exception.Timeout:
            return MxAnswer(domain, error=f"DNS timeout after {self._timeout:g}s", expires=failed)
        except dns.exception.DNSException as exc:
            return MxAnswer(domain, error=f"DNS error: {exc}", expires=failed)
        records = sorted(answer, key=lambda r: (r.preference, str(r.exchange)))
        hosts = tuple(
            str(r.exchange).rstrip(".").lower() for r in records if str(r.exchange) != "."
        )
        ttl = answer.rrset.ttl if answer.rrset is not None else 0
        if not hosts:  # RFC 7505 null MX: the domain takes no mail
            return MxAnswer(domain, error="null MX: the domain accepts no mail", expires=now + ttl)
        return MxAnswer(domain, hosts=hosts, expires=now + ttl)
