"""The flush end to end: a real Postfix defers mail like 1&1, queue-rescue moves it.

Every test asserts on what reached the smarthost, what is left in Postfix's
queue and what the command printed and returned.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from tests.integration.rescue_cli import SRS_DOMAIN
from tests.integration.world import ACCEPTING_DOMAIN, CUSTOMER_DOMAINS, OTHER_DOMAIN, World, body
from tests.lab.faults import Fault
from tests.lab.postfix import PostfixLab
from tests.lab.submission import Submission

pytestmark = pytest.mark.postfix


def queue_files(lab: PostfixLab) -> dict[str, str]:
    """Every file under the queue's message folders, by path, with a hash of its bytes."""
    out = {}
    for folder in ("incoming", "active", "deferred", "hold", "defer", "bounce"):
        for path in sorted((lab.queue_dir / folder).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(lab.queue_dir))] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return out


def test_the_outage_70_mails_to_31_domains(w: World) -> None:
    domains = CUSTOMER_DOMAINS[:31]
    ids = w.lab.submit_many(
        Submission("alice@example.com", (f"user{n}@{domains[n % 31]}",), body(n)) for n in range(70)
    )
    other = w.lab.submit("alice@example.com", [f"boss@{OTHER_DOMAIN}"], body(99))
    w.lab.wait_deferred(71)

    result = w.rescue("outage").run("flush", "--provider", "ionos", "--json", "--yes")

    assert result.code == 0, result.stderr
    outcomes = result.outcomes
    assert set(outcomes) == set(ids)
    assert all(o["action"] == "rerouted" for o in outcomes.values())
    assert result.summary["rerouted"] == 70 and result.summary["selected"] == 70
    received = w.smarthost.received
    assert len(received) == 70
    got = sorted(r.rcpt_tos for r in received)
    assert got == sorted((f"user{n}@{domains[n % 31]}",) for n in range(70))
    assert all(r.mail_from.startswith("SRS0=") for r in received)
    assert all(r.mail_from.endswith("@" + SRS_DOMAIN) for r in received)
    assert all("=example.com=alice@" in r.mail_from for r in received)
    # The smarthost's reply (with its queue id) is reported for each message.
    assert all(o["reply"].startswith("250") for o in outcomes.values())
    # Only the mail to the other provider is left, deferred (not on hold).
    left = w.lab.queue()
    assert [(m["queue_id"], m["queue_name"]) for m in left] == [(other, "deferred")]


def test_only_pending_recipients_are_sent(w: World) -> None:
    qid = w.lab.submit(
        "alice@example.com", [f"done@{ACCEPTING_DOMAIN}", "later@kunde1.test"], body(1)
    )
    w.lab.wait_deferred(1)
    assert w.accepting.wait_for_count(1)[0].rcpt_tos == (f"done@{ACCEPTING_DOMAIN}",)

    result = w.rescue("partial").run("flush", "--yes", "--queue-id", qid, "--json")

    assert result.code == 0, result.stderr
    [got] = w.smarthost.received
    assert got.rcpt_tos == ("later@kunde1.test",)
    assert result.outcomes[qid]["recipients"] == ["later@kunde1.test"]
    assert w.lab.queue() == []


def test_content_arrives_byte_for_byte(w: World) -> None:
    long_line = b"x" * 5000
    text = (
        b"From: alice@example.com\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
        b"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
        b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\n.\n..leading dots\n.x\n\n" + long_line + b"\nend\n"
    )
    qid = w.lab.submit("alice@example.com", ["bob@kunde2.test"], text)
    w.lab.wait_deferred(1)
    queued = w.lab.postcat(qid, "-bh")

    result = w.rescue("bytes").run("flush", "--yes", "--domain", "kunde2.test", "--json")

    assert result.code == 0, result.stderr
    [got] = w.smarthost.received
    assert got.content == queued.replace(b"\n", b"\r\n")
    assert b"\r\n" + long_line + b"\r\n" in got.content
    assert b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n.\r\n..leading dots\r\n" in got.content
    assert "BODY=8BITMIME" in got.mail_options


def test_null_sender_stays_null(w: World) -> None:
    qid = w.lab.submit("", ["bounce-to@kunde3.test"], body(3))
    w.lab.wait_deferred(1)

    result = w.rescue("null").run("flush", "--yes", "--provider", "ionos", "--json")

    assert result.code == 0, result.stderr
    [got] = w.smarthost.received
    assert got.mail_from == ""
    assert result.outcomes[qid]["envelope_sender"] == ""
    assert result.outcomes[qid]["sender"] == ""


def test_dsn_parameters_are_passed_on(w: World) -> None:
    qid = w.lab.submit(
        "alice@example.com",
        ["bob@kunde4.test"],
        body(4),
        dsn_notify="SUCCESS,FAILURE",
        # As sent over SMTP: xtext-encoded; Postfix stores them decoded.
        dsn_orcpt="rfc822;Bob+2Btag@Kunde4.test",
        envid="env+3D42",
        ret="HDRS",
    )
    w.lab.wait_deferred(1)

    result = w.rescue("dsn").run("flush", "--yes", "--queue-id", qid, "--json")

    assert result.code == 0, result.stderr
    [got] = w.smarthost.received
    assert set(got.mail_options) >= {"RET=HDRS", "ENVID=env+3D42"}
    assert set(got.rcpt_options[0]) == {
        "NOTIFY=SUCCESS,FAILURE",
        "ORCPT=rfc822;Bob+2Btag@Kunde4.test",
    }


def test_dry_run_changes_nothing_and_shows_the_plan(w: World) -> None:
    ids = [w.lab.submit("alice@example.com", [f"u{n}@kunde{n}.test"], body(n)) for n in (5, 6)]
    w.lab.wait_deferred(2)
    before = queue_files(w.lab)

    result = w.rescue("dry").run("flush", "--provider", "ionos", "--dry-run")

    assert result.code == 0, result.stderr
    assert queue_files(w.lab) == before
    assert w.smarthost.received == []
    for qid in ids:
        [line] = [line for line in result.stdout.splitlines() if line.startswith(qid)]
        fields = line.split("\t")
        assert fields[2].startswith("alice@example.com -> SRS0=")
        assert fields[4:] == ["ionos", "invalid sender domain", "relay1"]
    assert "nothing was changed" in result.stdout

    as_json = w.rescue("dry-json").run("flush", "--provider", "ionos", "--dry-run", "--json")
    assert {o["action"] for o in as_json.outcomes.values()} == {"would-reroute"}
    assert as_json.summary["would_reroute"] == 2
    assert queue_files(w.lab) == before


def test_mail_to_another_provider_is_not_touched(w: World) -> None:
    qid = w.lab.submit("alice@example.com", [f"boss@{OTHER_DOMAIN}"], body(7))
    w.lab.wait_deferred(1)
    before = queue_files(w.lab)

    result = w.rescue("other").run("flush", "--yes", "--all", "--json")

    assert result.code == 0
    assert result.summary["selected"] == 0
    assert w.smarthost.received == []
    assert queue_files(w.lab) == before
    assert w.lab.queue_ids("deferred") == [qid]


def test_second_flush_sends_nothing_twice(w: World) -> None:
    w.lab.submit("alice@example.com", ["a@kunde8.test"], body(8))
    w.lab.wait_deferred(1)
    rescue = w.rescue("twice")

    first = rescue.run("flush", "--yes", "--provider", "ionos", "--json")
    second = rescue.run("flush", "--yes", "--provider", "ionos", "--json")

    assert first.summary["rerouted"] == 1
    assert second.summary["selected"] == 0 and second.code == 0
    assert len(w.smarthost.received) == 1


def test_refused_recipient_sends_nothing_and_gives_the_message_back(w: World) -> None:
    qid = w.lab.submit("alice@example.com", ["ok@kunde9.test", "nope@kunde9.test"], body(9))
    w.lab.wait_deferred(1)
    w.smarthost.script(
        Fault(
            stage="RCPT", reply="550 5.1.1 no such user", recipient="nope@kunde9.test", times=None
        )
    )

    result = w.rescue("refused").run("flush", "--yes", "--provider", "ionos", "--json")

    w.smarthost.clear_faults()
    assert result.code == 1
    assert result.outcomes[qid]["action"] == "released"
    assert "550" in result.outcomes[qid]["detail"]
    assert w.smarthost.received == []
    assert w.lab.queue_ids("deferred") == [qid]
    assert w.lab.queue_ids("hold") == []


def test_limit_and_older_than(w: World) -> None:
    # Five messages; three are dated back (their queue files' arrival times), by minutes:
    ages = {0: 0, 1: 180, 2: 120, 3: 90, 4: 0}
    ids = [w.lab.submit("alice@example.com", [f"x@kunde{n + 1}.test"], body(n)) for n in ages]
    w.lab.wait_deferred(len(ids))
    now = int(time.time())
    for n, minutes in ages.items():
        if minutes:
            w.lab.set_arrival(ids[n], now - minutes * 60)
    rescue = w.rescue("limit")

    old = rescue.run("flush", "--yes", "--provider", "ionos", "--older-than", "100m", "--json")

    assert old.code == 0, old.stderr
    assert set(old.outcomes) == {ids[1], ids[2]}
    assert sorted(r.rcpt_tos for r in w.smarthost.received) == [
        ("x@kunde2.test",),
        ("x@kunde3.test",),
    ]
    assert sorted(w.lab.queue_ids("deferred")) == sorted([ids[0], ids[3], ids[4]])

    # --limit takes the oldest of what is left: the one 90 minutes old.
    w.smarthost.reset()
    limited = rescue.run("flush", "--yes", "--provider", "ionos", "--limit", "1", "--json")

    assert limited.code == 0, limited.stderr
    assert list(limited.outcomes) == [ids[3]]
    assert [r.rcpt_tos for r in w.smarthost.received] == [("x@kunde4.test",)]
    assert sorted(w.lab.queue_ids("deferred")) == sorted([ids[0], ids[4]])


def test_flush_without_a_selector_refuses(w: World) -> None:
    result = w.rescue("nosel").run("flush", "--yes")
    assert result.code == 2
    assert "--provider" in result.stderr


def test_unknown_provider_is_a_usage_error(w: World) -> None:
    result = w.rescue("unknown").run("flush", "--yes", "--provider", "nosuch")
    assert result.code == 2
    assert "unknown provider nosuch" in result.stderr


def test_config_error_names_file_and_key(w: World) -> None:
    rescue = w.rescue("badconf", extra="[dns]\nport = 'many'\n")
    result = rescue.run("flush", "--yes", "--all")
    assert result.code == 2
    assert f"{rescue.config_path}: dns.port: expected an integer" in result.stderr
    assert result.stderr.count("\n") == 1
