"""The zones the diagnose tests run against: each breaks one thing, one is healthy.

Three name servers share one port: ns1 (127.0.0.1, every zone), ns2 (127.0.0.2, the
zones with two name servers, one serial ahead) and ns3 (127.0.0.3, silent).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from tests.lab.authdns import AuthoritativeDns, SilentDns, Zone, free_port

SENDING_IP = "203.0.113.25"
NO_PTR_IP = "203.0.113.26"  # no PTR record
WRONG_PTR_IP = "203.0.113.27"  # PTR mail.good.test, which resolves to SENDING_IP
HELO = "mail.good.test"
NO_SUCH_HELO = "nohost.good.test"
CLEAN_LIST = "clean.test"
LISTING = "listing.test"
REFUSING = "refusing.test"
SRS_DOMAIN = "srs.rescue.test"  # tests.integration.rescue_cli's
NS1, NS2, NS3 = "127.0.0.1", "127.0.0.2", "127.0.0.3"
TWO_NS = ("ns1.lab.test", "ns2.lab.test")

HEALTHY_SPF = f'@ TXT "v=spf1 ip4:{SENDING_IP} -all"'


def _healthy(
    origin: str,
    extra: str = "",
    *,
    spf: str = HEALTHY_SPF,
    dmarc: bool = True,
    mx: str = "@ MX 10 mx\nmx A 198.51.100.10",
    ns: tuple[str, ...] = ("ns1.lab.test",),
) -> Zone:
    """A sender domain that passes every check, but for what the arguments change."""
    lines = [mx, spf]
    if dmarc:
        lines.append(f'_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@{origin}"')
    return Zone(origin, "\n".join([*lines, extra]), ns=ns)


def _includes(count: int, origin: str) -> str:
    """An SPF record with `count` includes: over 10 DNS-querying terms when count > 10."""
    terms = " ".join(f"include:i{n}.{origin}" for n in range(1, count + 1))
    records = [f'i{n} TXT "v=spf1 -all"' for n in range(1, count + 1)]
    return "\n".join([f'@ TXT "v=spf1 {terms} ip4:{SENDING_IP} -all"', *records])


PRIMARY_ZONES = [
    Zone("lab.test", f"ns1 A {NS1}\nns2 A {NS2}\nns3 A {NS3}"),
    _healthy("good.test", f"mail A {SENDING_IP}\nhost A 198.51.100.11"),
    # The seed's fault: the MX names an alias.
    _healthy("cname-mx.test", mx="@ MX 10 mail\nmail CNAME host\nhost A 198.51.100.11"),
    _healthy("noaddr-mx.test", mx="@ MX 10 mx"),
    _healthy("badns.test", ns=(*TWO_NS, "ns3.lab.test")),
    _healthy("stale.test", ns=TWO_NS),
    _healthy("nospf-ip.test", spf='@ TXT "v=spf1 ip4:192.0.2.99 -all"'),
    _healthy("twospf.test", spf=f'{HEALTHY_SPF}\n@ TXT "v=spf1 mx -all"'),
    _healthy("manyspf.test", spf=_includes(11, "manyspf.test")),
    _healthy("nodmarc.test", dmarc=False),
    Zone("113.0.203.in-addr.arpa", "25 PTR mail.good.test.\n27 PTR mail.good.test."),
    Zone(CLEAN_LIST),
    Zone(LISTING, '25.113.0.203 A 127.0.0.2\n25.113.0.203 TXT "listed for a test"'),
    Zone(REFUSING, "* A 127.255.255.254"),
    Zone(SRS_DOMAIN, '@ MX 10 mx.good.test.\n@ TXT "v=spf1 ip4:127.0.0.1 -all"'),
    # A customer domain at the provider, so that queued mail to it classifies as ionos.
    Zone("kunde1.test", "@ MX 10 mx00.kundenserver.de.\n@ MX 10 mx01.kundenserver.de."),
]
# ns2 serves the two-server zones one serial ahead (a primary whose secondary lags).
SECONDARY_ZONES = [
    Zone(z.origin, z.records, serial=z.serial + 1, ns=z.ns)
    for z in PRIMARY_ZONES
    if z.origin in ("badns.test", "stale.test")
]
BROKEN_DOMAINS = (
    "cname-mx.test",
    "noaddr-mx.test",
    "nosuch.lab.test",
    "badns.test",
    "stale.test",
    "nospf-ip.test",
    "twospf.test",
    "manyspf.test",
    "nodmarc.test",
)


@dataclass(frozen=True)
class DiagnoseDns:
    primary: AuthoritativeDns
    port: int

    def config(self, *, dnsbl: tuple[str, ...] = (CLEAN_LIST,), extra: str = "") -> str:
        """The [dns] and [diagnose] tables for queue-rescue against these servers."""
        zones = ", ".join(f'"{z}"' for z in dnsbl)
        return (
            self.primary.dns_config("1s")
            + f"\n[diagnose]\ndnsbl = [{zones}]\nns_port = {self.port}\n{extra}\n"
        )


@contextmanager
def diagnose_dns() -> Iterator[DiagnoseDns]:
    """The three name servers, started; stopped on leaving."""
    port = free_port([NS1, NS2, NS3])
    with ExitStack() as stack:
        primary = stack.enter_context(AuthoritativeDns(PRIMARY_ZONES, address=NS1, port=port))
        stack.enter_context(AuthoritativeDns(SECONDARY_ZONES, address=NS2, port=port))
        stack.enter_context(SilentDns(NS3, port))
        yield DiagnoseDns(primary, port)
