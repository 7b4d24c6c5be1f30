"""The DNS edge of a diagnosis: the [dns] resolver, asked once per name and type.

Answers are cached for the run (and shared by threads: a second asker waits for the
first one's answer), and the whole run has a time budget: once it is used up, every
new question is answered with an error at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from rescue.classify.dns import build_resolver
from rescue.config import DnsConfig
from rescue.diagnose.answers import Answer, Outcome, normal_name

# RFC 1035 section 4.2.1: where name servers listen.
DNS_PORT = 53


def make_resolver(cfg: DnsConfig) -> dns.resolver.Resolver:
    """A dnspython resolver that asks [dns] nameservers (else resolv.conf's), no cache."""
    return build_resolver(dns.resolver.Resolver, cfg, "set [dns] nameservers")


def record_text(rdata: dns.rdata.Rdata) -> str:
    """One record as answers.Answer keeps it (names without final dot, TXT joined)."""
    rdtype = rdata.rdtype
    if rdtype in (dns.rdatatype.TXT, dns.rdatatype.SPF):
        return b"".join(rdata.strings).decode("utf-8", "replace")  # type: ignore[attr-defined]
    if rdtype == dns.rdatatype.MX:
        exchange = rdata.exchange.to_text(omit_final_dot=True).lower()  # type: ignore[attr-defined]
        return f"{rdata.preference} {exchange or '.'}"  # type: ignore[attr-defined]
    if rdtype in (dns.rdatatype.CNAME, dns.rdatatype.PTR, dns.rdatatype.NS):
        target: dns.name.Name = rdata.target  # type: ignore[attr-defined]
        return target.to_text(omit_final_dot=True).lower()
    return rdata.to_text()


def _failure_text(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    said = "; ".join(f"{err[0]} answered {err[3]}" for err in errors)
    return said or "no name server answered"


class DnsLookup:
    """answers.Lookup over the network; `queries` counts the questions really sent."""

    def __init__(
        self,
        cfg: DnsConfig,
        *,
        budget: float,
        server_port: int = DNS_PORT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._resolver = make_resolver(cfg)
        self._timeout = cfg.timeout
        self._server_port = server_port
        self._budget = budget
        self._clock = clock
        self._deadline = clock() + budget
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], Future[Answer]] = {}
        self.queries = 0

    def remaining(self) -> float:
        """Seconds left of the run's time budget (never below 0)."""
        return max(0.0, self._deadline - self._clock())

    def get(self, name: str, rdtype: str) -> Answer:
        return self._cached("", name, rdtype)

    def ask_server(self, address: str, name: str, rdtype: str) -> Answer:
        return self._cached(address, name, rdtype)

    def _cached(self, server: str, name: str, rdtype: str) -> Answer:
        key = (server, normal_name(name), rdtype.upper())
        with self._lock:
            future = self._cache.get(key)
            owner = future is None
            if future is None:
                future = self._cache[key] = Future()
        if owner:
            try:
                answer = self._ask(*key)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            future.set_result(answer)
        return future.result()

    def _ask(self, server: str, name: str, rdtype: str) -> Answer:
        lifetime = min(self._timeout, self.remaining())
        if lifetime <= 0:
            return Answer(
                name,
                rdtype,
                Outcome.ERROR,
                error=f"time budget of {self._budget:g}s used up",
                unasked=True,
            )
        with self._lock:
            self.queries += 1
        if server:
            return self._ask_server(server, name, rdtype, lifetime)
        return self._resolve(name, rdtype, lifetime)

    def _resolve(self, name: str, rdtype: str, lifetime: float) -> Answer:
        try:
            found = self._resolver.resolve(
                name, rdtype, search=False, lifetime=lifetime, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            return Answer(name, rdtype, Outcome.NXDOMAIN)
        except dns.resolver.NoNameservers as exc:
            return Answer(name, rdtype, Outcome.ERROR, error=_failure_text(exc))
        except dns.exception.Timeout:
            return Answer(name, rdtype, Outcome.ERROR, error=f"timeout after {lifetime:g}s")
        except dns.exception.DNSException as exc:
            return Answer(name, rdtype, Outcome.ERROR, error=str(exc))
        if found.rrset is None:
            return Answer(name, rdtype, Outcome.NODATA)
        return Answer(name, rdtype, Outcome.ANSWER, tuple(record_text(r) for r in found.rrset))

    def _ask_server(self, address: str, name: str, rdtype: str, lifetime: float) -> Answer:
        """One question to one server, without recursion: is it authoritative for `name`?"""
        query = dns.message.make_query(name, rdtype)
        query.flags &= ~dns.flags.RD
        where = f"{address} port {self._server_port}"
        try:
            response = dns.query.udp(query, address, timeout=lifetime, port=self._server_port)
            if response.flags & dns.flags.TC:
                response = dns.query.tcp(query, address, timeout=lifetime, port=self._server_port)
        except dns.exception.Timeout:
            return Answer(name, rdtype, Outcome.ERROR, error=f"{where}: no answer in {lifetime:g}s")
        except (OSError, dns.exception.DNSException) as exc:
            return Answer(name, rdtype, Outcome.ERROR, error=f"{where}: {exc}")
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            text = dns.rcode.to_text(rcode)
            return Answer(name, rdtype, Outcome.ERROR, error=f"{where} answered {text}")
        if not response.flags & dns.flags.AA:
            return Answer(name, rdtype, Outcome.ERROR, error=f"{where} answered without authority")
        if rcode == dns.rcode.NXDOMAIN:
            return Answer(name, rdtype, Outcome.NXDOMAIN)
        wanted = dns.name.from_text(name)
        for rrset in response.answer:
            if rrset.name == wanted and rrset.rdtype == dns.rdatatype.from_text(rdtype):
                return Answer(name, rdtype, Outcome.ANSWER, tuple(record_text(r) for r in rrset))
        return Answer(name, rdtype, Outcome.NODATA)
