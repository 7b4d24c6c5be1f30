"""Diagnose's pure parts besides the checks: the queue's side, the tie to findings, the
report, the run's plan, the budget, the config and the catalog's `checks`."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from rescue.classify.catalog import load_catalog
from rescue.classify.shape import Item
from rescue.config import DEFAULT_DNSBL, DnsConfig, parse_config
from rescue.diagnose import domain
from rescue.diagnose.explain import explain
from rescue.diagnose.lookup import DnsLookup
from rescue.diagnose.report import ordered, show_json, show_text
from rescue.diagnose.result import CHECKS, Result, Status, fail, ok, summary, warn
from rescue.diagnose.run import outbound, probe_targets
from rescue.diagnose.stuck import sender_domains, stuck_groups
from rescue.errors import ConfigError
from rescue.model import Classification, QueuedMessage, Recipient
from tests.unit.test_config import base_config

IONOS_REASON = (
    "host mx00.kundenserver.de[212.227.15.41] said: 421 invalid sender domain, possibly "
    "misconfigured (in reply to MAIL FROM command)"
)
GMX_REASON = (
    "host mx00.gmx.net[212.227.17.5] said: 554-gmx.net (mxgmx016) Nemesis ESMTP Service "
    "not available 554-No SMTP service 554 Bad DNS PTR resource record (in reply to end of DATA)"
)
OTHER_REASON = "host mx.partner.example[192.0.2.80] said: 451 4.7.1 try later"
IONOS = Classification("ionos", "mx00.kundenserver.de", "reason-host")
GMX = Classification("gmx", "mx00.gmx.net", "reason-host")
UNKNOWN = Classification(None, "mx.partner.example")


def _item(queue_id: str, sender: str, rcpt: str, reason: str, cls: Classification) -> Item:
    message = QueuedMessage(queue_id, "deferred", 0, 100, sender, (Recipient(rcpt, reason),))
    return Item(message, message.recipients[0], cls)


ITEMS = [
    _item("A1", "billing@as-gmbh.com", "kunde@kunde1.de", IONOS_REASON, IONOS),
    _item("A2", "billing@as-gmbh.com", "kunde@kunde2.de", IONOS_REASON, IONOS),
    _item("A3", "news@shop.example", "kunde@kunde3.de", IONOS_REASON, IONOS),
    _item("B1", "news@shop.example", "a@gmx.de", GMX_REASON, GMX),
    _item("C1", "", "x@partner.example", OTHER_REASON, UNKNOWN),
    _item("C2", "ceo@as-gmbh.com", "y@partner.example", OTHER_REASON, UNKNOWN),
]


def test_stuck_groups_count_mails_and_sender_domains() -> None:
    groups = stuck_groups(ITEMS, load_catalog())
    first = groups[0]
    assert (first.provider, first.mails) == ("ionos", 3)
    assert first.reason == "421 invalid sender domain, possibly misconfigured"
    assert first.sender_domains == (("as-gmbh.com", 2), ("shop.example", 1))
    assert first.checks and "mx-cname" in first.checks
    assert first.peer == ("mx00.kundenserver.de", "212.227.15.41")
    assert (first.sender, first.recipient) == ("billing@as-gmbh.com", "kunde@kunde1.de")
    unknown = next(g for g in groups if g.provider == "(unknown)")
    assert unknown.known is None and unknown.sender_domains == (("as-gmbh.com", 1),)
    assert unknown.label == "mx.partner.example (no known provider)"
    assert sender_domains(ITEMS) == ["as-gmbh.com", "shop.example"]


def test_findings_explain_the_replies_they_can_cause() -> None:
    groups = stuck_groups(ITEMS, load_catalog())
    results = [
        fail("mx-cname", "as-gmbh.com", "mail.as-gmbh.com is a CNAME", "point the MX"),
        fail("mx-cname", "elsewhere.example", "not stuck", "x"),
        warn("dmarc", "as-gmbh.com", "no DMARC", "publish"),  # not named for this reply
        fail("ptr", "203.0.113.25", "no PTR", "set one"),  # identity: any sender
        ok("mx-address", "as-gmbh.com", "fine"),
    ]
    by_provider = {e.group.provider: e for e in explain(groups, results)}
    assert [r.detail for r in by_provider["ionos"].findings] == ["mail.as-gmbh.com is a CNAME"]
    assert [r.check for r in by_provider["gmx"].findings] == ["ptr"]
    assert by_provider["(unknown)"].findings == ()


def test_text_report_ties_the_reply_to_its_finding_and_lists_findings_first() -> None:
    groups = stuck_groups(ITEMS[:3], load_catalog())
    results = [
        ok("sender-domain", "as-gmbh.com", "MX 10 mail.as-gmbh.com"),
        fail("mx-cname", "as-gmbh.com", "mail.as-gmbh.com is a CNAME to h.example.net", "Point"),
        ok("dnsbl", "bl.example", "not listed"),
        warn("dmarc", "shop.example", "no DMARC record", "Publish"),
    ]
    stream = io.StringIO()
    show_text(Console(file=stream, soft_wrap=True), results, explain(groups, results), ["a note"])
    lines = stream.getvalue().splitlines()
    assert "\x1b[" not in stream.getvalue()
    assert lines[:6] == [
        "note: a note",
        "Why mail is stuck",
        "  ionos: 3 mails, `421 invalid sender domain, possibly misconfigured`",
        "    from as-gmbh.com (2 mails), shop.example (1 mail)",
        "    explained by mx-cname on as-gmbh.com: mail.as-gmbh.com is a CNAME to h.example.net",
        "      fix: Point",
    ]
    subjects = [line for line in lines[6:] if line and not line.startswith(" ")]
    assert subjects == [
        "as-gmbh.com",
        "shop.example",
        "bl.example",
        "2 ok, 1 warn, 1 fail, 0 error",
    ]
    assert lines[lines.index("as-gmbh.com") + 1].startswith("  FAIL  mx-cname")
    stream = io.StringIO()
    show_text(Console(file=stream, force_terminal=True), results, [], [])
    assert "\x1b[" in stream.getvalue()  # colour on a terminal


def test_unexplained_reply_gives_the_catalog_advice() -> None:
    groups = stuck_groups(ITEMS[:1], load_catalog())
    stream = io.StringIO()
    show_text(Console(file=stream, soft_wrap=True), [], explain(groups, []), [])
    text = stream.getvalue()
    assert "no finding of mx-cname" in text and "the catalog's advice: Fix the DNS" in text


def test_json_report_one_object_per_result_then_the_summary() -> None:
    groups = stuck_groups(ITEMS[:1], load_catalog())
    results = [fail("mx-cname", "as-gmbh.com", "alias", "fix it"), ok("ptr", "192.0.2.1", "p")]
    stream = io.StringIO()
    show_json(stream, results, explain(groups, results))
    objects = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert objects[0] == {
        "check": "mx-cname",
        "subject": "as-gmbh.com",
        "status": "fail",
        "detail": "alias",
        "fix": "fix it",
        "explains": [
            {
                "provider": "ionos",
                "reason": "421 invalid sender domain, possibly misconfigured",
                "mails": 1,
            }
        ],
    }
    assert objects[1]["explains"] == []
    assert objects[2] == {"summary": {"ok": 1, "warn": 0, "fail": 1, "error": 0}}


def test_ordered_puts_subjects_with_findings_first() -> None:
    results = [
        ok("spf", "a.example", "x"),
        Result("dnsbl", "bl.example", Status.ERROR, "refused"),
        fail("dmarc", "b.example", "x", "y"),
        ok("sender-domain", "b.example", "x"),
    ]
    assert [s for s, _ in ordered(results)] == ["b.example", "bl.example", "a.example"]
    assert [r.check for r in ordered(results)[0][1]] == ["dmarc", "sender-domain"]
    assert summary(results) == {"ok": 2, "warn": 0, "fail": 1, "error": 1}


def test_probe_targets_one_per_provider() -> None:
    targets = probe_targets(stuck_groups(ITEMS, load_catalog()))
    assert [(t.provider, t.address, t.sender) for t in targets] == [
        ("ionos", "212.227.15.41", "billing@as-gmbh.com"),
        ("mx.partner.example", "192.0.2.80", "ceo@as-gmbh.com"),
        ("gmx", "212.227.17.5", "news@shop.example"),
    ]


def test_outbound_identity_sources() -> None:
    given = outbound("192.0.2.7", "198.51.100.1", "mail.example.com", lambda: "x")
    assert (given.ip, given.helo, given.notes) == ("192.0.2.7", "mail.example.com", ())
    configured = outbound(None, "198.51.100.1", None, lambda: "mx.example.com")
    assert (configured.ip, configured.helo) == ("198.51.100.1", "mx.example.com")
    assert configured.notes == ("HELO name mx.example.com is Postfix's smtp_helo_name",)
    routed = outbound(None, None, "h.example", lambda: None, route=lambda: "10.0.0.5")
    assert routed.ip == "10.0.0.5"
    assert any("NAT" in note for note in routed.notes)
    assert any("not a public address" in note for note in routed.notes)
    nothing = outbound(None, None, None, lambda: None, route=lambda: None)
    assert nothing.ip is None and nothing.helo is None and len(nothing.notes) == 2


def test_the_time_budget_stops_new_questions() -> None:
    now = [100.0]
    cfg = DnsConfig(nameservers=("127.0.0.1",), port=9, timeout=1.0)
    dns = DnsLookup(cfg, budget=5.0, clock=lambda: now[0])
    assert dns.remaining() == 5.0
    now[0] = 106.0
    answer = dns.get("example.com", "MX")
    assert answer.failed and answer.error == "time budget of 5s used up"
    assert dns.queries == 0
    assert dns.get("example.com", "MX") is answer  # asked once per name and type
    # What was not asked is not known: an error, not a finding about the domain.
    result = domain.sender_domain("example.com", dns)
    assert result.status is Status.ERROR and "time budget" in result.detail


def test_diagnose_config(tmp_path: Path) -> None:
    cfg = parse_config(tmp_path / "c.toml", base_config(tmp_path))
    assert cfg.diagnose.dnsbl == DEFAULT_DNSBL
    assert (cfg.diagnose.probe_port, cfg.diagnose.budget, cfg.diagnose.public_ip) == (
        25,
        60.0,
        None,
    )
    text = base_config(
        tmp_path,
        '[diagnose]\npublic_ip = "2001:DB8::1"\ndnsbl = ["BL.Example."]\nbudget = "2m"\n'
        "probe_port = 2525\nns_port = 5353\n",
    )
    cfg = parse_config(tmp_path / "c.toml", text)
    assert cfg.diagnose.public_ip == "2001:db8::1"
    assert cfg.diagnose.dnsbl == ("bl.example",)
    assert (cfg.diagnose.budget, cfg.diagnose.probe_port, cfg.diagnose.ns_port) == (
        120.0,
        2525,
        5353,
    )


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('public_ip = "mail.example.com"', "diagnose.public_ip"),
        ("probe_port = 70000", "diagnose.probe_port"),
        ('budget = "0s"', "diagnose.budget"),
        ("dnsbl = [1]", "diagnose.dnsbl[0]"),
        ("nope = 1", "diagnose.nope"),
    ],
)
def test_diagnose_config_errors_name_the_key(tmp_path: Path, table: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tmp_path / "c.toml", base_config(tmp_path, f"[diagnose]\n{table}\n"))
    assert info.value.key == key


def test_catalog_checks_name_known_checks() -> None:
    catalog = load_catalog()
    named = [c for p in catalog.providers for k in p.known for c in k.checks]
    assert named and set(named) <= set(CHECKS) - {"probe", "srs-spf", "srs-mx"}
    ionos = catalog.by_name["ionos"]
    invalid = ionos.explain("421 invalid sender domain, possibly misconfigured")
    unverified = ionos.explain("421 unable to verify sender domain")
    assert invalid is not None and "mx-cname" in invalid.checks
    assert unverified is not None and {"sender-domain", "ns"} <= set(unverified.checks)
