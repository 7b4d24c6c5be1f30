"""MX hosts recognised through DNS: pure matching, and HostTracer against a real DNS server.

The DNS server (tests/lab/dns.py) runs on loopback and answers from the test zone below;
its query counts show what was asked, and how often.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from rescue.classify.catalog import load_catalog
from rescue.classify.classifier import DNS_MX, SEVERAL_PROVIDERS, classify_recipient
from rescue.classify.dns import Budget, MxAnswer, MxResolver
from rescue.classify.mxhosts import (
    BY_CNAME,
    BY_NS,
    BY_PTR,
    HostOwner,
    HostTracer,
    owner_by_names,
    owner_by_ns,
    reverse_name,
)
from rescue.config import DnsConfig
from rescue.model import Recipient
from tests.lab.dns import DnsServer

CATALOG = load_catalog()
TIMEOUT = 3.0  # seconds; never reached: every question here is answered at once

# The customers' own MX host names, and what stands behind each in DNS.
ZONE = [
    # A CNAME straight to IONOS.
    ("mx.cname.test", "CNAME", "mx00.kundenserver.de."),
    # A chain of two CNAMEs, the last to Microsoft 365.
    ("mail.chain.test", "CNAME", "relay.chain.test."),
    ("relay.chain.test", "CNAME", "chain-test.mail.protection.outlook.com."),
    # An A record whose PTR is Hornetsecurity's, and an AAAA whose PTR names nobody.
    ("mx.ptr.test", "A", "192.0.2.25"),
    ("25.2.0.192.in-addr.arpa", "PTR", "mx01.hornetsecurity.com."),
    ("mx.ptr.test", "AAAA", "2001:db8::25"),
    (
        "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
        "PTR",
        "host.example.net.",
    ),
    # Nothing but the zone's name servers: STRATO's.
    ("mx.ns.test", "A", "192.0.2.26"),
    ("ns.test", "NS", "docks15.rzone.de."),
    ("ns.test", "NS", "shades07.rzone.de."),
    # Nothing at all that names a provider.
    ("mx.nobody.test", "A", "192.0.2.27"),
    ("27.2.0.192.in-addr.arpa", "PTR", "mx.nobody.test."),
    ("nobody.test", "NS", "ns1.nobody.test."),
    # A CNAME loop.
    ("a.loop.test", "CNAME", "b.loop.test."),
    ("b.loop.test", "CNAME", "a.loop.test."),
]


@pytest.fixture(scope="module")
def server() -> Iterator[DnsServer]:
    with DnsServer() as dns:
        for name, rdtype, text in ZONE:
            dns.add(name, rdtype, text)
        yield dns


def resolver(server: DnsServer) -> MxResolver:
    cfg = DnsConfig(nameservers=(server.host,), port=server.port, timeout=TIMEOUT)
    return MxResolver(cfg)


def trace(server: DnsServer, *hosts: str, budget: int = 100) -> dict[str, HostOwner | None]:
    tracer = HostTracer(resolver(server), CATALOG, Budget(budget))
    return asyncio.run(tracer.trace_all(hosts))


# -- pure matching ------------------------------------------------------------------------


def test_owner_by_names_takes_the_first_name_a_provider_owns() -> None:
    names = ["relay.example.net", "mx01.mail.icloud.com", "mx00.kundenserver.de"]
    owner = owner_by_names("mx.kunde.test", names, CATALOG, BY_CNAME)
    assert owner == HostOwner("mx.kunde.test", "icloud", BY_CNAME, "mx01.mail.icloud.com")
    assert owner.note == "mx.kunde.test: CNAME mx01.mail.icloud.com"
    assert owner_by_names("mx.kunde.test", ["relay.example.net"], CATALOG, BY_PTR) is None


def test_owner_by_ns_uses_the_name_server_globs_only() -> None:
    owner = owner_by_ns("mx.kunde.test", ["ns1.example.net", "ns5.kasserver.com"], CATALOG)
    assert owner is not None and (owner.provider, owner.how) == ("all-inkl", BY_NS)
    # An MX host name of a provider is not one of its name servers.
    assert owner_by_ns("mx.kunde.test", ["mx00.kundenserver.de"], CATALOG) is None


def test_reverse_name() -> None:
    assert reverse_name("192.0.2.25") == "25.2.0.192.in-addr.arpa"
    assert reverse_name("2001:db8::1").endswith(".8.b.d.0.1.0.0.2.ip6.arpa")
    assert reverse_name("not-an-address") is None


# -- against the DNS server ---------------------------------------------------------------


def test_cname_ptr_and_ns_each_name_the_provider(server: DnsServer) -> None:
    found = trace(server, "mx.cname.test", "mail.chain.test", "mx.ptr.test", "mx.ns.test")
    assert found["mx.cname.test"] == HostOwner(
        "mx.cname.test", "ionos", BY_CNAME, "mx00.kundenserver.de"
    )
    assert found["mail.chain.test"] == HostOwner(
        "mail.chain.test", "microsoft-365", BY_CNAME, "chain-test.mail.protection.outlook.com"
    )
    assert found["mx.ptr.test"] == HostOwner(
        "mx.ptr.test", "hornetsecurity", BY_PTR, "mx01.hornetsecurity.com"
    )
    assert found["mx.ns.test"] == HostOwner("mx.ns.test", "strato", BY_NS, "docks15.rzone.de")


def test_a_host_dns_names_no_provider_for(server: DnsServer) -> None:
    before = server.queries
    assert trace(server, "mx.nobody.test", "a.loop.test") == {
        "mx.nobody.test": None,
        "a.loop.test": None,
    }
    asked = server.queries - before
    # Each question once: the loop is left after one round.
    assert set(asked.values()) == {1}
    assert asked[("a.loop.test", "CNAME")] == 1 and asked[("b.loop.test", "CNAME")] == 1
    assert asked[("nobody.test", "NS")] == 1


def test_each_question_is_asked_once_per_run(server: DnsServer) -> None:
    tracer = HostTracer(resolver(server), CATALOG, Budget(100))
    before = server.queries
    # Two hosts in one zone, traced together and then again: ns.test's NS is asked once.
    asyncio.run(tracer.trace_all(["mx.ns.test", "MX.NS.test.", "other.ns.test"]))
    asyncio.run(tracer.trace_all(["mx.ns.test", "other.ns.test"]))
    asked = server.queries - before
    assert asked[("ns.test", "NS")] == 1
    assert asked[("mx.ns.test", "CNAME")] == 1
    assert max(asked.values()) == 1


def test_the_budget_bounds_the_queries(server: DnsServer) -> None:
    budget = Budget(3)
    tracer = HostTracer(resolver(server), CATALOG, budget)
    before = server.queries
    found = asyncio.run(tracer.trace_all(["mx.ptr.test", "mx.ns.test", "mx.nobody.test"]))
    asked = server.queries - before
    assert sum(asked.values()) == 3
    assert budget.left == 0 and budget.refused > 0
    # With three questions no host gets as far as its PTR or NS records.
    assert found == dict.fromkeys(["mx.nobody.test", "mx.ns.test", "mx.ptr.test"])


# -- the classifier with what DNS showed ---------------------------------------------------


def classify(mx: tuple[str, ...], owners: dict[str, HostOwner | None]) -> tuple[str | None, ...]:
    recipient = Recipient(
        "user@kunde.test", "connect to 192.0.2.1[192.0.2.1]:25: Connection refused"
    )
    answers = {"kunde.test": MxAnswer("kunde.test", mx)}
    c = classify_recipient(recipient, CATALOG, answers, host_owners=owners)
    return c.provider, c.classified_by, c.mx, c.note


def test_classifier_uses_the_traced_owner_of_an_unnamed_host() -> None:
    owner = HostOwner("mx.kunde.test", "strato", BY_NS, "docks15.rzone.de")
    assert classify(("mx.kunde.test",), {"mx.kunde.test": owner}) == (
        "strato",
        BY_NS,
        "mx.kunde.test",
        "mx.kunde.test: NS docks15.rzone.de",
    )
    # An MX host a pattern names wins over what DNS showed of another host.
    mixed = classify(("mx00.kundenserver.de", "mx.kunde.test"), {"mx.kunde.test": owner})
    assert mixed[:2] == ("ionos", DNS_MX)
    # Nothing known: no provider, the first host stays for the unknown-MX listing.
    nothing = classify(("mx.kunde.test",), {"mx.kunde.test": None})
    assert nothing[:3] == (None, None, "mx.kunde.test")


def test_classifier_hosts_traced_to_two_providers_are_mixed() -> None:
    owners: dict[str, HostOwner | None] = {
        "mx1.kunde.test": HostOwner("mx1.kunde.test", "strato", BY_NS, "docks15.rzone.de"),
        "mx2.kunde.test": HostOwner("mx2.kunde.test", "ionos", BY_CNAME, "mx00.ionos.de"),
    }
    provider, how, _, note = classify(("mx1.kunde.test", "mx2.kunde.test"), owners)
    assert (provider, how) == (None, DNS_MX)
    assert note == SEVERAL_PROVIDERS + "ionos, strato"
