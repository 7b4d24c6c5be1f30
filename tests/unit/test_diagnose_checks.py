"""The diagnose checks over made-up DNS answers: each finding, and the ok case."""

from __future__ import annotations

import dns.rdata
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rescue.diagnose import dmarc, dnsbl, domain, identity, spfcheck
from rescue.diagnose.answers import Outcome, dnsbl_name, mx_hosts, reverse_name
from rescue.diagnose.lookup import record_text
from rescue.diagnose.result import Status
from rescue.diagnose.run import Outbound, domain_results
from tests.unit.diagnose_fakes import FakeDns, soa

IP = "203.0.113.25"
HEALTHY = {
    ("example.com", "MX"): ("10 mx.example.com",),
    ("example.com", "SOA"): soa(7),
    ("example.com", "NS"): ("ns1.example.net", "ns2.example.net"),
    ("example.com", "TXT"): (f"v=spf1 ip4:{IP} -all", "google-site-verification=x"),
    ("_dmarc.example.com", "TXT"): ("v=DMARC1; p=quarantine",),
    ("mx.example.com", "A"): ("198.51.100.10",),
    ("ns1.example.net", "A"): ("192.0.2.53",),
    ("ns2.example.net", "A"): ("192.0.2.54",),
}
SERVERS = {
    ("192.0.2.53", "example.com", "SOA"): soa(7),
    ("192.0.2.54", "example.com", "SOA"): soa(7),
}


def fake(changes: dict[tuple[str, str], tuple[str, ...] | Outcome] | None = None) -> FakeDns:
    records = dict(HEALTHY)
    for key, value in (changes or {}).items():
        records[key] = value
    return FakeDns(records, SERVERS)


def test_a_healthy_domain_passes_every_domain_check() -> None:
    results = domain_results("example.com", fake(), Outbound(IP, "mail.example.com"))
    assert [r.check for r in results] == [
        "sender-domain",
        "null-mx",
        "mx-cname",
        "mx-address",
        "ns",
        "spf",
        "spf-ip",
        "dmarc",
    ]
    assert [r for r in results if r.status is not Status.OK] == []


@pytest.mark.parametrize(
    ("answer", "status", "said"),
    [
        (Outcome.NXDOMAIN, Status.FAIL, "does not exist"),
        (Outcome.ERROR, Status.FAIL, "no answer (SERVFAIL)"),
    ],
)
def test_sender_domain_that_does_not_resolve(answer: Outcome, status: Status, said: str) -> None:
    dns = FakeDns({("gone.example", "MX"): answer})
    result = domain.sender_domain("gone.example", dns)
    assert result.status is status and said in result.detail and result.fix
    assert [r.check for r in domain_results("gone.example", dns, Outbound(IP, "h.x"))] == [
        "sender-domain"
    ]


def test_sender_domain_without_mx_falls_back_to_its_address() -> None:
    dns = FakeDns({("a.example", "A"): ("192.0.2.1",), ("b.example", "TXT"): ("x",)})
    assert domain.sender_domain("a.example", dns).status is Status.OK
    bare = domain.sender_domain("b.example", dns)
    assert bare.status is Status.FAIL and "no MX record and no A/AAAA" in bare.detail


def test_null_mx_is_a_fail() -> None:
    dns = fake({("example.com", "MX"): ("0 .",)})
    result = domain.null_mx("example.com", dns)
    assert result.status is Status.FAIL and "RFC 7505" in result.detail
    assert domain.mx_cname("example.com", dns).status is Status.OK  # no target to look at


def test_mx_pointing_at_a_cname() -> None:
    dns = fake(
        {
            ("example.com", "MX"): ("10 mail.example.com", "20 mx.example.com"),
            ("mail.example.com", "CNAME"): ("host.example.net",),
            ("mail.example.com", "A"): ("198.51.100.7",),
        }
    )
    result = domain.mx_cname("example.com", dns)
    assert result.status is Status.FAIL
    assert result.detail == "MX of example.com: mail.example.com is a CNAME to host.example.net"
    assert "such as host.example.net" in result.fix and "alias mail.example.com" in result.fix
    assert domain.mx_address("example.com", dns).status is Status.OK


def test_mx_cname_lookup_failing_is_an_error() -> None:
    dns = fake({("mx.example.com", "CNAME"): Outcome.ERROR})
    assert domain.mx_cname("example.com", dns).status is Status.ERROR


def test_mx_target_without_address() -> None:
    dns = fake({("example.com", "MX"): ("10 mx.example.com", "20 mx2.example.com")})
    result = domain.mx_address("example.com", dns)
    assert result.status is Status.FAIL
    assert "mx2.example.com does not exist (NXDOMAIN)" in result.detail
    assert result.fix.startswith("Give mx2.example.com an A")
    only_v6 = fake(
        {("mx.example.com", "A"): Outcome.NODATA, ("mx.example.com", "AAAA"): ("2001:db8::1",)}
    )
    assert domain.mx_address("example.com", only_v6).status is Status.OK


def test_ns_silent_server_fails() -> None:
    dns = FakeDns(HEALTHY, {("192.0.2.53", "example.com", "SOA"): soa(7)})
    result = domain.ns("example.com", dns)
    assert result.status is Status.FAIL
    assert "ns2.example.net (192.0.2.54): no answer (SERVFAIL)" in result.detail
    assert "ns1.example.net (192.0.2.53) serial 7" in result.detail


def test_ns_serials_that_differ_warn() -> None:
    servers = {**SERVERS, ("192.0.2.54", "example.com", "SOA"): soa(6)}
    result = domain.ns("example.com", FakeDns(HEALTHY, servers))
    assert result.status is Status.WARN and "serial 7" in result.fix


def test_ns_of_a_name_below_the_zone_apex() -> None:
    dns = fake({("mail.example.com", "MX"): ("10 mx.example.com",)})
    assert domain.zone_of("mail.example.com", dns) == "example.com"
    assert domain.ns("mail.example.com", dns).status is Status.OK


def test_spf_missing_two_or_invalid() -> None:
    missing = spfcheck.spf("example.com", fake({("example.com", "TXT"): ("other",)}))
    assert missing.status is Status.FAIL and "no SPF record" in missing.detail
    two = fake({("example.com", "TXT"): ("v=spf1 -all", "v=spf1 mx -all")})
    assert "2 SPF records" in spfcheck.spf("example.com", two).detail
    bad = spfcheck.spf("example.com", fake({("example.com", "TXT"): ("v=spf1 moo -all",)}))
    assert bad.status is Status.FAIL and "Unknown mechanism" in bad.detail


def test_spf_with_more_than_ten_lookups() -> None:
    changes: dict[tuple[str, str], tuple[str, ...] | Outcome] = {
        (f"i{n}.example.com", "TXT"): ("v=spf1 -all",) for n in range(11)
    }
    includes = " ".join(f"include:i{n}.example.com" for n in range(11))
    changes[("example.com", "TXT")] = (f"v=spf1 ip4:{IP} {includes} -all",)
    dns = fake(changes)
    result = spfcheck.spf("example.com", dns)
    assert result.status is Status.FAIL and "Too many DNS lookups" in result.detail
    # The sending IP passes early: evaluating for it alone would not have seen the excess.
    assert spfcheck.evaluate(dns, IP, "a@example.com", "h.example.com")[0] == "pass"
    ten = dict(changes)
    ten[("example.com", "TXT")] = (f"v=spf1 {' '.join(includes.split()[:10])} -all",)
    assert spfcheck.spf("example.com", fake(ten)).status is Status.OK


@pytest.mark.parametrize(
    ("record", "status"),
    [
        (f"v=spf1 ip4:{IP} -all", Status.OK),
        ("v=spf1 ip4:192.0.2.9 -all", Status.FAIL),
        ("v=spf1 ip4:192.0.2.9 ~all", Status.WARN),
        ("v=spf1 ip4:192.0.2.9 ?all", Status.WARN),
        ("v=spf1 mx -all", Status.FAIL),
    ],
)
def test_spf_verdict_for_the_sending_ip(record: str, status: Status) -> None:
    result = spfcheck.spf_ip("example.com", fake({("example.com", "TXT"): (record,)}), IP, "h.x")
    assert result.status is status
    if status is not Status.OK:
        assert f"ip4:{IP}" in result.fix


def test_spf_lookup_failing_is_an_error() -> None:
    dns = fake({("example.com", "TXT"): ("v=spf1 include:broken.example -all",)})
    dns.records[("broken.example", "TXT")] = Outcome.ERROR
    assert spfcheck.spf_ip("example.com", dns, IP, "h.x").status is Status.ERROR
    assert spfcheck.spf_ip("example.com", fake(), None, "h.x").status is Status.ERROR


def test_with_address_goes_before_all_or_redirect() -> None:
    assert spfcheck.with_address("v=spf1 mx -all", IP) == f"v=spf1 mx ip4:{IP} -all"
    assert spfcheck.with_address("v=spf1 redirect=x.example", "2001:db8::1") == (
        "v=spf1 ip6:2001:db8::1 redirect=x.example"
    )
    assert spfcheck.with_address("v=spf1 mx", IP) == f"v=spf1 mx ip4:{IP}"


def test_srs_spf_for_each_smarthost() -> None:
    dns = FakeDns({("srs.example.net", "TXT"): ("v=spf1 ip4:192.0.2.1 -all",)})
    hosts = [("relay1", "192.0.2.1"), ("relay2", "192.0.2.2")]
    result = spfcheck.srs_spf("srs.example.net", dns, hosts, "h.x")
    assert result.status is Status.FAIL
    assert "relay1 192.0.2.1: pass; relay2 192.0.2.2: fail" in result.detail
    assert "ip4:192.0.2.1 ip4:192.0.2.2 -all" in result.fix
    assert spfcheck.srs_spf("srs.example.net", dns, hosts[:1], "h.x").status is Status.OK


def test_srs_mx() -> None:
    assert domain.srs_mx("srs.example.net", FakeDns({})).status is Status.FAIL
    with_a = FakeDns({("srs.example.net", "A"): ("192.0.2.1",)})
    assert domain.srs_mx("srs.example.net", with_a).status is Status.WARN
    with_mx = FakeDns({("srs.example.net", "MX"): ("10 mx.example.net",)})
    assert domain.srs_mx("srs.example.net", with_mx).status is Status.OK


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("v=DMARC1", "p= tag"),
        ("v=DMARC1; p=maybe", "p=maybe"),
        ("v=DMARC1; p=none; pct=120", "pct=120"),
        ("v=DMARC1; p=none; adkim=x", "adkim=x"),
        ("v=DMARC1; p=none; oops", "tag=value"),
    ],
)
def test_dmarc_records_that_do_not_parse(record: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        dmarc.parse(record)
    dns = fake({("_dmarc.example.com", "TXT"): (record,)})
    assert dmarc.dmarc("example.com", dns).status is Status.FAIL


def test_dmarc_missing_warns_and_the_zone_record_counts() -> None:
    dns = FakeDns({("mail.example.com", "MX"): ("10 mx.example.com",)})
    missing = dmarc.dmarc("mail.example.com", dns, "example.com")
    assert missing.status is Status.WARN
    assert "_dmarc.mail.example.com or _dmarc.example.com" in missing.detail
    zone = fake()
    assert dmarc.dmarc("mail.example.com", zone, "example.com").status is Status.OK
    two = fake({("_dmarc.example.com", "TXT"): ("v=DMARC1; p=none", "v=DMARC1; p=reject")})
    assert dmarc.dmarc("example.com", two).status is Status.FAIL
    assert dmarc.parse("v=DMARC1; p=reject; sp=none; pct=50")["sp"] == "none"


PTR_NAME = reverse_name(IP)


def test_ptr_and_fcrdns() -> None:
    good = FakeDns({(PTR_NAME, "PTR"): ("mail.example.com",), ("mail.example.com", "A"): (IP,)})
    assert identity.ptr(IP, good).status is Status.OK
    assert identity.fcrdns(IP, good).status is Status.OK
    none = FakeDns({})
    assert identity.ptr(IP, none).status is Status.FAIL
    assert identity.fcrdns(IP, none).status is Status.FAIL
    elsewhere = FakeDns(
        {(PTR_NAME, "PTR"): ("mail.example.com",), ("mail.example.com", "A"): ("192.0.2.1",)}
    )
    mismatch = identity.fcrdns(IP, elsewhere)
    assert mismatch.status is Status.FAIL and f"not {IP}" in mismatch.detail
    assert identity.ptr(None, none).status is Status.ERROR


def test_helo() -> None:
    dns = FakeDns({("mail.example.com", "A"): (IP,), ("other.example.com", "A"): ("192.0.2.1",)})
    assert identity.helo("mail.example.com", IP, dns).status is Status.OK
    assert identity.helo("other.example.com", IP, dns).status is Status.WARN
    assert identity.helo("gone.example.com", IP, dns).status is Status.FAIL
    for bad in ("localhost", "mail", "[192.0.2.1]", "192.0.2.1", "-x.example.com"):
        result = identity.helo(bad, IP, dns)
        assert result.status is Status.FAIL and "not a fully qualified" in result.detail


def test_dnsbl_answers() -> None:
    name = dnsbl_name(IP, "bl.example")
    assert name == "25.113.0.203.bl.example"
    listed = FakeDns({(name, "A"): ("127.0.0.2",), (name, "TXT"): ("spam seen",)})
    result = dnsbl.dnsbl(IP, "bl.example", listed)
    assert result.status is Status.FAIL and "spam seen" in result.detail
    refused = FakeDns({(name, "A"): ("127.255.255.254",)})
    assert dnsbl.dnsbl(IP, "bl.example", refused).status is Status.ERROR
    odd = FakeDns({(name, "A"): ("192.0.2.1",)})
    assert "not a block list answer" in dnsbl.dnsbl(IP, "bl.example", odd).detail
    assert dnsbl.dnsbl(IP, "bl.example", FakeDns({})).status is Status.OK
    assert dnsbl_name("2001:db8::1", "bl.example").startswith("1.0.0.0.0.0.0.0")


def test_mx_hosts_sorted_by_preference() -> None:
    answer = FakeDns({("x.example", "MX"): ("20 b.example", "10 a.example")}).get("x.example", "MX")
    assert mx_hosts(answer) == [(10, "a.example"), (20, "b.example")]


@given(
    ip=st.ip_addresses(v=4).map(str),
    listed=st.lists(st.ip_addresses(v=4).map(str), max_size=3),
    last=st.sampled_from(["-all", "~all", "?all", ""]),
)
@example(ip="192.0.2.1", listed=["192.0.2.0"], last="-all")
def test_the_suggested_spf_record_passes_the_address(ip: str, listed: list[str], last: str) -> None:
    """The fix spf-ip proposes does what it says: the new record passes the sending IP."""
    record = " ".join(["v=spf1", *(f"ip4:{a}" for a in listed if a != ip), last]).strip()
    dns = FakeDns({("example.com", "TXT"): (record,)})
    assert spfcheck.evaluate(dns, ip, "a@example.com", "h.example.com")[0] != "pass"
    fixed = FakeDns({("example.com", "TXT"): (spfcheck.with_address(record, ip),)})
    assert spfcheck.evaluate(fixed, ip, "a@example.com", "h.example.com")[0] == "pass"


@pytest.mark.parametrize(
    ("rdtype", "text", "kept"),
    [
        ("MX", "10 Mail.Example.COM.", "10 mail.example.com"),
        ("MX", "0 .", "0 ."),
        ("TXT", '"v=spf1 ip4:192.0.2.1 " "-all"', "v=spf1 ip4:192.0.2.1 -all"),
        ("CNAME", "Host.Example.NET.", "host.example.net"),
        ("A", "192.0.2.1", "192.0.2.1"),
    ],
)
def test_records_as_the_checks_see_them(rdtype: str, text: str, kept: str) -> None:
    rdata = dns.rdata.from_text("IN", rdtype, text)
    assert record_text(rdata) == kept
