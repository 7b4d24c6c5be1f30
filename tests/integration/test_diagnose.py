"""`diagnose` against a real authoritative DNS server (Knot) and the lab's Postfix.

The zones (tests/integration/diagnose_lab.py) break one thing each; good.test passes
every check. The probe talks to the lab's fake provider, which refuses like 1&1 and
then accepts, and which records every command: the probe never sends DATA.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rescue.config import DnsConfig
from rescue.diagnose import dnsbl, identity
from rescue.diagnose.lookup import DnsLookup
from rescue.diagnose.probe import ProbeTarget, probe
from rescue.diagnose.result import CHECKS, Status
from rescue.diagnose.run import Outbound, domain_results
from tests.integration.diagnose_lab import (
    BROKEN_DOMAINS,
    CLEAN_LIST,
    HELO,
    LISTING,
    NO_PTR_IP,
    NO_SUCH_HELO,
    REFUSING,
    SENDING_IP,
    WRONG_PTR_IP,
    DiagnoseDns,
    diagnose_dns,
)
from tests.integration.rescue_cli import Rescue, Result, smarthost_entry
from tests.lab.authdns import knot_unavailable
from tests.lab.certs import LabCerts
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("postqueue") is None, reason="needs Postfix and root"
    ),
    pytest.mark.skipif(knot_unavailable() is not None, reason=knot_unavailable() or ""),
]

IDENTITY = ("--ip", SENDING_IP, "--helo", HELO)
# What each broken domain gets wrong: (check, status); every other check of it is ok.
BROKEN: dict[str, set[tuple[str, str]]] = {
    "cname-mx.test": {("mx-cname", "fail")},
    "noaddr-mx.test": {("mx-address", "fail")},
    "nosuch.lab.test": {("sender-domain", "fail")},
    "badns.test": {("ns", "fail")},
    "stale.test": {("ns", "warn")},
    "nospf-ip.test": {("spf-ip", "fail")},
    # A record that is not valid has no verdict for any address either.
    "twospf.test": {("spf", "fail"), ("spf-ip", "fail")},
    "manyspf.test": {("spf", "fail"), ("spf-ip", "fail")},
    "nodmarc.test": {("dmarc", "warn")},
}
DOMAIN_CHECKS = {"sender-domain", "null-mx", "mx-cname", "mx-address", "ns", "spf", "spf-ip"}


@pytest.fixture(scope="module")
def zones() -> Iterator[DiagnoseDns]:
    with diagnose_dns() as running:
        yield running


def _rescue(root: Path, lab: PostfixLab, zones: DiagnoseDns, **diagnose: Any) -> Rescue:
    dnsbl_zones = diagnose.pop("dnsbl", (CLEAN_LIST,))
    extra = "\n".join(f"{key} = {value}" for key, value in diagnose.items())
    return Rescue(
        root,
        lab,
        smarthosts=[smarthost_entry("relay1", 2525)],
        extra=zones.config(dnsbl=dnsbl_zones, extra=extra),
    )


def _by(result: Result) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["check"], o["subject"]): o for o in result.lines if "check" in o}


def test_a_healthy_domain_passes_every_check(
    lab_root: Path, postfix: PostfixLab, zones: DiagnoseDns
) -> None:
    rescue = _rescue(lab_root, postfix, zones)
    result = rescue.run("diagnose", "--sender-domain", "good.test", *IDENTITY, "--json")
    assert result.code == 0, result.stdout + result.stderr
    objects = [o for o in result.lines if "check" in o]
    assert {o["check"] for o in objects} == set(CHECKS) - {"probe"}
    assert [o for o in objects if o["status"] != "ok"] == []
    assert result.summary == {"ok": len(objects), "warn": 0, "fail": 0, "error": 0}
    assert {o["subject"] for o in objects} == {
        "good.test",
        SENDING_IP,
        HELO,
        CLEAN_LIST,
        "srs.rescue.test",
    }

    text = rescue.run("diagnose", "--sender-domain", "good.test", *IDENTITY)
    assert text.code == 0, text.stderr
    assert "\x1b[" not in text.stdout  # no colour when not on a terminal
    assert "ok    mx-cname      no MX target is a CNAME (mx.good.test)" in text.stdout
    assert text.stdout.splitlines()[-1] == f"{len(objects)} ok, 0 warn, 0 fail, 0 error"


def test_each_broken_zone_is_found_and_nothing_else(
    lab_root: Path, postfix: PostfixLab, zones: DiagnoseDns
) -> None:
    rescue = _rescue(lab_root, postfix, zones, dnsbl=(CLEAN_LIST, LISTING, REFUSING))
    args = [a for d in BROKEN_DOMAINS for a in ("--sender-domain", d)]
    result = rescue.run("diagnose", *args, *IDENTITY, "--json")
    assert result.code == 1, result.stdout + result.stderr
    by = _by(result)
    for domain, wrong in BROKEN.items():
        findings = {
            (c, o["status"]) for (c, s), o in by.items() if s == domain and o["status"] != "ok"
        }
        assert findings == wrong, domain
        for check, _ in wrong:
            assert by[(check, domain)]["fix"], (check, domain)
    # A domain that does not exist gets no further checks.
    assert {c for c, s in by if s == "nosuch.lab.test"} == {"sender-domain"}
    assert {c for c, s in by if s == "good.test"} == set()
    assert DOMAIN_CHECKS | {"dmarc"} == {c for c, s in by if s == "cname-mx.test"}

    cname = by[("mx-cname", "cname-mx.test")]
    assert "mail.cname-mx.test is a CNAME to host.cname-mx.test" in cname["detail"]
    assert "Point the MX record of cname-mx.test at a name with A/AAAA" in cname["fix"]
    assert "mx.noaddr-mx.test does not exist" in by[("mx-address", "noaddr-mx.test")]["detail"]
    silent = by[("ns", "badns.test")]["detail"]
    assert "ns3.lab.test (127.0.0.3): no answer" in silent
    assert "serial 1" in silent and "serial 2" in silent
    stale = by[("ns", "stale.test")]
    assert "disagree" in stale["detail"] and "serial 2" in stale["fix"]
    spf_ip = by[("spf-ip", "nospf-ip.test")]
    assert f"does not list {SENDING_IP}" in spf_ip["detail"]
    assert f"ip4:192.0.2.99 ip4:{SENDING_IP} -all" in spf_ip["fix"]
    assert "2 SPF records" in by[("spf", "twospf.test")]["detail"]
    assert "Too many DNS lookups" in by[("spf", "manyspf.test")]["detail"]
    assert "_dmarc.nodmarc.test" in by[("dmarc", "nodmarc.test")]["fix"]

    assert by[("dnsbl", CLEAN_LIST)]["status"] == "ok"
    listed = by[("dnsbl", LISTING)]
    assert listed["status"] == "fail"
    assert "127.0.0.2" in listed["detail"] and "listed for a test" in listed["detail"]
    refused = by[("dnsbl", REFUSING)]
    assert refused["status"] == "error"
    assert "refused the query" in refused["detail"]
    summary = result.summary
    assert summary["fail"] == 1 + sum(s == "fail" for w in BROKEN.values() for _, s in w)
    assert summary["error"] == 1


def test_outbound_identity_faults(zones: DiagnoseDns) -> None:
    cfg = DnsConfig(nameservers=(zones.primary.address,), port=zones.port, timeout=1.0)
    dns = DnsLookup(cfg, budget=60.0, server_port=zones.port)
    missing = identity.ptr(NO_PTR_IP, dns)
    assert missing.status is Status.FAIL and "has no PTR record" in missing.detail
    assert identity.fcrdns(NO_PTR_IP, dns).status is Status.FAIL
    assert identity.ptr(WRONG_PTR_IP, dns).status is Status.OK
    wrong = identity.fcrdns(WRONG_PTR_IP, dns)
    assert wrong.status is Status.FAIL
    assert f"mail.good.test A {SENDING_IP}: not {WRONG_PTR_IP}" in wrong.detail
    assert f"A record mail.good.test -> {WRONG_PTR_IP}" in wrong.fix
    helo = identity.helo(NO_SUCH_HELO, SENDING_IP, dns)
    assert helo.status is Status.FAIL and "does not resolve" in helo.detail
    assert identity.helo("localhost", SENDING_IP, dns).status is Status.FAIL
    assert dnsbl.dnsbl(NO_PTR_IP, LISTING, dns).status is Status.OK


def test_one_question_per_name_and_type(zones: DiagnoseDns) -> None:
    cfg = DnsConfig(nameservers=(zones.primary.address,), port=zones.port, timeout=1.0)
    dns = DnsLookup(cfg, budget=60.0, server_port=zones.port)
    first = domain_results("good.test", dns, Outbound(SENDING_IP, HELO))
    asked = dns.queries
    again = domain_results("good.test", dns, Outbound(SENDING_IP, HELO))
    assert again == first
    assert dns.queries == asked


def _seed(postfix: PostfixLab, provider: FakeProvider) -> None:
    """The seed's situation: mail from a sender domain whose MX is a CNAME, refused by
    the provider with 1&1's reply and deferred. Then the provider forgets Postfix's
    sessions (Postfix pipelines DATA after MAIL), so that it records only the probe's."""
    for n in range(3):
        postfix.submit("billing@cname-mx.test", [f"customer{n}@kunde1.test"], b"Subject: x\n\nx\n")
    postfix.wait_deferred(3)
    provider.reset()


def test_the_seed_is_explained_and_the_probe_shows_the_live_answer(
    lab_root: Path, postfix: PostfixLab, provider: FakeProvider, zones: DiagnoseDns
) -> None:
    _seed(postfix, provider)
    rescue = _rescue(lab_root, postfix, zones, probe_port=provider.port)
    result = rescue.run("diagnose", "--probe", *IDENTITY, "--json")
    assert result.code == 1, result.stdout + result.stderr
    by = _by(result)
    cname = by[("mx-cname", "cname-mx.test")]
    assert cname["status"] == "fail"
    assert cname["explains"] == [
        {
            "provider": "ionos",
            "reason": "421 4.7.0 invalid sender domain, possibly misconfigured",
            "mails": 3,
        }
    ]
    refused = by[("probe", "ionos")]
    assert refused["status"] == "fail"
    assert "refused at MAIL FROM: 421 4.7.0 invalid sender domain" in refused["detail"]
    assert "<billing@cname-mx.test>" in refused["detail"]
    assert "DATA" not in provider.commands
    assert provider.commands.count("MAIL") == 1

    text = rescue.run("diagnose", "--ip", SENDING_IP)
    assert text.code == 1
    lines = text.stdout.splitlines()
    # Without --helo, the HELO name is Postfix's own (the lab's myhostname).
    assert "note: HELO name lab.test is Postfix's smtp_helo_name" in lines
    assert "lab.test" in lines  # its subject: it does not resolve in these zones
    at = lines.index("  ionos: 3 mails, `421 4.7.0 invalid sender domain, possibly misconfigured`")
    assert lines[at + 1] == "    from cname-mx.test (3 mails)"
    assert lines[at + 2].startswith(
        "    explained by mx-cname on cname-mx.test: MX of cname-mx.test: "
        "mail.cname-mx.test is a CNAME to host.cname-mx.test"
    )
    assert lines[at + 3].startswith("      fix: Point the MX record of cname-mx.test")
    # The subject with the finding comes first, its finding first.
    subject = lines.index("cname-mx.test")
    assert lines[subject + 1].startswith("  FAIL  mx-cname")


def test_the_probe_says_ok_when_the_provider_accepts(
    lab_root: Path, postfix: PostfixLab, provider: FakeProvider, zones: DiagnoseDns
) -> None:
    _seed(postfix, provider)
    provider.accept_all()
    before = len(postfix.queue())
    rescue = _rescue(lab_root, postfix, zones, probe_port=provider.port)
    result = rescue.run("diagnose", "--probe", "--sender-domain", "good.test", *IDENTITY, "--json")
    assert result.code == 0, result.stdout + result.stderr
    accepted = _by(result)[("probe", "ionos")]
    assert accepted["status"] == "ok"
    assert "MAIL FROM:<billing@cname-mx.test> RCPT TO:<customer" in accepted["detail"]
    assert "accepted (250" in accepted["detail"]
    assert provider.commands == ["MAIL", "RCPT", "RSET", "QUIT"]
    assert provider.received == []
    assert len(postfix.queue()) == before


def test_bad_usage_and_config_exit_2(
    lab_root: Path, postfix: PostfixLab, zones: DiagnoseDns
) -> None:
    rescue = _rescue(lab_root, postfix, zones)
    result = rescue.run("diagnose", "--ip", "not-an-ip")
    assert result.code == 2 and "not an IP address" in result.stderr
    broken = _rescue(lab_root, postfix, zones, public_ip='"mail.example.com"')
    result = broken.run("diagnose", "--sender-domain", "good.test")
    assert result.code == 2
    assert "diagnose.public_ip: not an IP address" in result.stderr


def test_the_probe_speaks_starttls_and_reports_a_refused_recipient(certs: LabCerts) -> None:
    """Like Postfix, the probe takes STARTTLS when offered; a refusal at RCPT is the answer."""
    reply = "550 5.7.1 sender domain has a broken MX"
    with FakeProvider(reply, "RCPT", starttls=True, certs=certs) as server:
        target = ProbeTarget("ionos", "mx00.kundenserver.de", "127.0.0.1", "a@b.test", "c@d.test")
        result = asyncio.run(probe(target, port=server.port, helo=HELO, timeout=10.0))
        assert result.status is Status.FAIL
        assert f"refused at RCPT TO: {reply}" in result.detail
        server.wait_for(lambda: "QUIT" in server.commands, what="the probe's QUIT")
        assert server.commands == ["MAIL", "RCPT", "RSET", "QUIT"]


def test_given_sender_domains_are_checked_without_postfix(
    lab_root: Path, postfix: PostfixLab, zones: DiagnoseDns
) -> None:
    rescue = _rescue(lab_root, postfix, zones)
    rescue.command_dir = lab_root / "no-postfix-here"
    rescue.command_dir.mkdir()
    result = rescue.run("diagnose", "--sender-domain", "good.test", *IDENTITY, "--json")
    assert result.code == 0, result.stdout + result.stderr
    assert "the queue could not be read" in result.stderr
    assert result.summary["fail"] == 0
    # Without sender domains there is nothing to check: Postfix's error, exit code 4.
    result = rescue.run("diagnose", *IDENTITY)
    assert result.code == 4 and "postqueue not found" in result.stderr
