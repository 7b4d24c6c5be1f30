"""The queue `test_scan` builds: a domain per catalog provider and the special cases,
with the rows `scan` must show for them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rescue.classify.catalog import load_catalog
from tests.lab.dns import DnsServer, Failure

REPO = Path(__file__).parents[2]
BUCKETS = ["5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"]
# How old every queued message of the module's lab is made: in the "320" column (older
# than 160 minutes, at most 320), 80 minutes from either edge.
AGE_MINUTES = 240
AGE_COLUMN = "320"
# A reply no catalog text matches: only DNS can tell where such mail is stuck.
NEUTRAL_REPLY = "451 4.3.0 lab says: try again later"
# A reply only Orange sends, for a domain DNS cannot answer for.
ORANGE_REPLY = (
    "421 mwinf5c79 ME Trop de connexions, veuillez verifier votre configuration. "
    "Too many connections, slow down. OFR005_104 [104]"
)
# Seconds; the "timeout" domain costs this much per scan. Every other question is answered
# at once, but a scan asks ~150 of them at a time on a busy machine: 2 s leaves room.
DNS_TIMEOUT = 2.0

# The real MX host names of each catalog provider (from its documentation or public zone
# data, listed in the catalog), all of them the MX records of one test domain.
PROVIDER_MX = {p.name: p.mx_examples for p in load_catalog().providers}


@dataclass(frozen=True)
class Case:
    """A recipient domain, how many messages go there, and what scan must say of it."""

    domain: str
    messages: int
    provider: str | None  # None: no provider can be named
    classified_by: str | None
    note: str = ""  # a part of the classifier's note
    mx: tuple[str, ...] = ()  # MX records in our DNS server
    failure: Failure | None = None  # or: the DNS server fails for this domain
    route: str = "neutral"  # neutral | orange | closed: where Postfix sends it
    records: tuple[tuple[str, str, str], ...] = ()  # more DNS records: (name, type, data)


def provider_cases() -> list[Case]:
    return [
        Case(f"kunde-{name}.test", 1 + index % 3, name, "dns-mx", mx=hosts)
        for index, (name, hosts) in enumerate(PROVIDER_MX.items())
    ]


SPECIAL_CASES = [
    # No provider host in the reason ("connect to 127.0.0.1[127.0.0.1]:PORT: ..."): DNS decides.
    Case("refused.test", 2, "yandex", "dns-mx", mx=PROVIDER_MX["yandex"], route="closed"),
    Case(
        "mixed.test",
        2,
        None,
        "dns-mx",
        "several providers: google, ionos",
        mx=(PROVIDER_MX["ionos"][0], PROVIDER_MX["google"][0]),
    ),
    Case("elsewhere.test", 1, None, None, "mail.elsewhere.test", mx=("mail.elsewhere.test",)),
    # Lookups that fail: the provider's domains, then the reply text, else unknown.
    Case("gmx.de", 2, "gmx", "domains", "SERVFAIL", failure="servfail"),
    Case(
        "orange-kunde.test",
        1,
        "orange",
        "reason-text",
        "SERVFAIL",
        failure="servfail",
        route="orange",
    ),
    Case("broken.test", 2, None, None, "SERVFAIL", failure="servfail"),
    Case("gone.test", 1, None, None, "NXDOMAIN", failure="nxdomain"),
    Case("slow.test", 1, None, None, "DNS timeout", failure="timeout"),
    # Named like a GMX MX host, but a failed lookup is never guessed from the name.
    Case("mx07.gmx.net", 1, None, None, "SERVFAIL", failure="servfail"),
    # The company's own MX host name; its DNS records lead to the provider.
    Case(
        "cname-kunde.test",
        2,
        "ionos",
        "dns-mx-cname",
        "mx.cname-kunde.test: CNAME mx00.kundenserver.de",
        mx=("mx.cname-kunde.test",),
        records=(("mx.cname-kunde.test", "CNAME", "mx00.kundenserver.de."),),
    ),
    Case(
        "ptr-kunde.test",
        1,
        "hornetsecurity",
        "dns-mx-ptr",
        "mail.ptr-kunde.test: PTR mx01.hornetsecurity.com",
        mx=("mail.ptr-kunde.test",),
        records=(
            ("mail.ptr-kunde.test", "A", "192.0.2.41"),
            ("41.2.0.192.in-addr.arpa", "PTR", "mx01.hornetsecurity.com."),
        ),
    ),
    Case(
        "ns-kunde.test",
        1,
        "strato",
        "dns-mx-ns",
        "mx.ns-kunde.test: NS docks15.rzone.de",
        mx=("mx.ns-kunde.test",),
        records=(
            ("mx.ns-kunde.test", "A", "192.0.2.42"),
            ("ns-kunde.test", "NS", "docks15.rzone.de."),
        ),
    ),
    # MX hosts of a hoster the catalog does not know: listed by registered domain.
    Case(
        "hoster1.test",
        3,
        None,
        None,
        "mx1.mail.example-hoster.net: no known provider",
        mx=("mx1.mail.example-hoster.net",),
    ),
    Case(
        "hoster2.test",
        1,
        None,
        None,
        "mx2.mail.example-hoster.net: no known provider",
        mx=("mx2.mail.example-hoster.net",),
    ),
]
PROVIDER_CASES = provider_cases()
CASES = PROVIDER_CASES + SPECIAL_CASES
BY_DOMAIN = {case.domain: case for case in CASES}
# One message from the null sender to three domains: counted once per row it touches.
SHARED = ("kunde-ionos.test", "kunde-google.test", "broken.test")
# The queue: the recipient domains of each message.
PLANNED = [[case.domain] for case in CASES for _ in range(case.messages)] + [list(SHARED)]


def group(domain: str) -> str:
    """The row of `scan` (by provider) a domain's recipients fall in."""
    case = BY_DOMAIN[domain]
    if case.provider is not None:
        return case.provider
    return "mixed: google+ionos" if case.domain == "mixed.test" else "(unknown)"


def expected_rows(by_domain: bool = False) -> dict[str, tuple[int, int]]:
    """(messages, recipients) per row of `scan`, or of `scan --by domain`."""
    messages: Counter[str] = Counter()
    recipients: Counter[str] = Counter()
    for domains in PLANNED:
        keys = [d if by_domain else group(d) for d in domains]
        recipients.update(keys)
        messages.update(set(keys))
    return {key: (messages[key], recipients[key]) for key in recipients}


def dns_config(dns: DnsServer) -> str:
    return f'[dns]\nnameservers = ["{dns.host}"]\nport = {dns.port}\ntimeout = "{DNS_TIMEOUT}s"\n'
