"""The test lab itself: Postfix defers and delivers, the fakes record and fail as told."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any

import aiosmtplib
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.resolver
import pytest

from tests.lab.certs import LabCerts
from tests.lab.dns import DnsServer
from tests.lab.errors import PostfixLabError
from tests.lab.faults import Fault
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider, RecordingSmarthost
from tests.lab.submission import Submission

PROVIDER_REASON = (
    "host 127.0.0.1[127.0.0.1] said: 421 4.7.0 invalid sender domain, possibly misconfigured"
    " (in reply to MAIL FROM command)"
)
MESSAGE = b"From: shop@sender.test\r\nSubject: order 1\r\n\r\nHello.\r\n"

postfix_needed = pytest.mark.postfix


def send(server: RecordingSmarthost, message: bytes, **kwargs: Any) -> tuple[dict[str, Any], str]:
    """One aiosmtplib send to `server`, from synchronous test code."""
    options: dict[str, Any] = {
        "sender": "shop@sender.test",
        "recipients": ["b@x.test"],
        "hostname": server.host,
        "port": server.port,
        "timeout": 10,
    }
    options.update(kwargs)
    return asyncio.run(aiosmtplib.send(message, **options))


# -- Postfix ---------------------------------------------------------------------------


@postfix_needed
def test_mail_to_provider_ends_deferred_with_its_reply(
    postfix: PostfixLab, provider: FakeProvider
) -> None:
    queue_id = postfix.submit("shop@sender.test", ["a@kunde1.test"], MESSAGE)

    [entry] = postfix.wait_deferred(1)

    assert entry["queue_id"] == queue_id
    assert entry["recipients"] == [{"address": "a@kunde1.test", "delay_reason": PROVIDER_REASON}]
    assert provider.transactions_attempted == 1
    assert provider.received == []


@postfix_needed
def test_accept_all_and_flush_delivers_everything(
    postfix: PostfixLab, provider: FakeProvider
) -> None:
    postfix.submit(
        "",
        ["a@kunde2.test", "b@shop7.ionos-kunde.test"],
        MESSAGE + "Grüße\r\n".encode(),
        dsn_notify="FAILURE",
        envid="Order-1",
        ret="HDRS",
    )
    postfix.wait_deferred(1)

    provider.accept_all()
    postfix.flush()
    postfix.wait_empty()

    [got] = provider.wait_for_count(1)
    assert got.mail_from == ""
    assert sorted(got.rcpt_tos) == ["a@kunde2.test", "b@shop7.ionos-kunde.test"]
    assert {"BODY=8BITMIME", "ENVID=Order-1", "RET=HDRS"} <= set(got.mail_options)
    assert all("NOTIFY=FAILURE" in options for options in got.rcpt_options)
    assert got.content.endswith(b"\r\n\r\nHello.\r\nGr\xc3\xbc\xc3\x9fe\r\n")


@postfix_needed
def test_other_domain_is_delivered_at_once(
    postfix: PostfixLab, accepting: RecordingSmarthost
) -> None:
    postfix.submit("shop@sender.test", ["x@other.test"], MESSAGE)

    [got] = accepting.wait_for_count(1)
    assert got.rcpt_tos == ("x@other.test",)
    postfix.wait_empty()


@postfix_needed
def test_one_refused_recipient_stays_deferred(postfix: PostfixLab, provider: FakeProvider) -> None:
    provider.accept_all()
    provider.script(Fault("RCPT", "450 4.2.1 mailbox busy", recipient="b@kunde3.test", times=None))

    postfix.submit("shop@sender.test", ["a@kunde3.test", "b@kunde3.test"], MESSAGE)

    [entry] = postfix.wait_deferred(1)
    assert entry["recipients"] == [
        {
            "address": "b@kunde3.test",
            "delay_reason": "host 127.0.0.1[127.0.0.1] said: 450 4.2.1 mailbox busy"
            " (in reply to RCPT TO command)",
        }
    ]
    assert [got.rcpt_tos for got in provider.received] == [("a@kunde3.test",)]


@postfix_needed
def test_hold_ids_reports_what_postsuper_held(postfix: PostfixLab) -> None:
    ids = postfix.submit_many(
        [Submission("shop@sender.test", [f"u{n}@kunde4.test"], MESSAGE) for n in range(3)],
        sessions=2,
    )
    postfix.wait_deferred(3)

    held = postfix.hold_ids([ids[0], ids[1], "ABCDEF123"], queue_name="deferred")

    assert sorted(held) == sorted(ids[:2])
    assert sorted(postfix.queue_ids("hold")) == sorted(ids[:2])
    assert postfix.queue_ids("deferred") == [ids[2]]


@postfix_needed
def test_postconf_changes_a_setting_until_restore_config(postfix: PostfixLab) -> None:
    postfix.postconf(defer_transports="smtp")
    postfix.submit("shop@sender.test", ["a@kunde5.test"], MESSAGE)
    [paused] = postfix.wait_deferred(1)

    postfix.restore_config()
    postfix.flush()
    postfix.wait_for(
        lambda: postfix.queue()[0]["recipients"][0].get("delay_reason") == PROVIDER_REASON,
        what="the provider's reply after the flush",
    )

    assert paused["recipients"][0]["delay_reason"] == "deferred transport"
    assert "defer_transports" not in (postfix.config_dir / "main.cf").read_text()


@postfix_needed
def test_set_transports_routes_a_new_domain(
    postfix: PostfixLab, accepting: RecordingSmarthost
) -> None:
    with pytest.raises(PostfixLabError, match="no route in the lab"):
        postfix.submit("shop@sender.test", ["a@new.test"], MESSAGE)

    postfix.set_transports({"new.test": accepting.next_hop})
    postfix.submit("shop@sender.test", ["a@new.test"], MESSAGE)

    assert accepting.wait_for_count(1)[0].rcpt_tos == ("a@new.test",)


@postfix_needed
def test_a_private_instance_starts_and_stops_without_leftovers(lab_root: Path) -> None:
    lab = PostfixLab(lab_root / "pf", name="alone")
    with lab:
        master = lab.master_pid()
        assert master is not None
        assert lab.queue() == []
        # postlogd writes the log on its own time: wait for the line, do not race it.
        lab.wait_for(lambda: "daemon started" in lab.log(), 30, "the master's start in the log")
    assert lab.master_pid() is None
    assert lab._processes() == []
    lab.stop()  # twice is fine


# -- Recording smarthost ---------------------------------------------------------------


def test_smarthost_records_long_lines_and_8bit_exactly(smarthost: RecordingSmarthost) -> None:
    body = b"Subject: long\r\n\r\n" + b"x" * 5000 + b"\r\n.leading dot\r\n\xe4\xf6\xfc\xff\r\n"

    send(smarthost, body, mail_options=["BODY=8BITMIME"])

    [got] = smarthost.received
    assert got.content == body
    assert got.mail_options == ("BODY=8BITMIME",)
    assert (smarthost.connections, smarthost.transactions_attempted) == (1, 1)


def test_smarthost_keeps_dsn_parameters_as_sent(smarthost: RecordingSmarthost) -> None:
    async def null_sender_with_dsn() -> None:
        async with aiosmtplib.SMTP(hostname=smarthost.host, port=smarthost.port) as client:
            await client.sendmail(
                "",
                ["b@x.test"],
                MESSAGE,
                mail_options=["RET=HDRS", "ENVID=Mixed+2BCase"],
                rcpt_options=["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;B@X.test"],
            )

    asyncio.run(null_sender_with_dsn())

    [got] = smarthost.received
    assert got.mail_from == ""
    assert got.mail_options == ("RET=HDRS", "ENVID=Mixed+2BCase")
    assert got.rcpt_options == (("NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;B@X.test"),)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault("GREETING", "421 4.3.2 busy"), aiosmtplib.SMTPConnectResponseError),
        (Fault("MAIL", "451 4.3.0 try later"), aiosmtplib.SMTPSenderRefused),
        (Fault("RCPT", "550 5.1.1 no such user"), aiosmtplib.SMTPRecipientsRefused),
        (Fault("DATA", "554 5.7.1 no"), aiosmtplib.SMTPDataError),
        (Fault("EOD", "451 4.3.0 later"), aiosmtplib.SMTPDataError),
        (Fault("DATA", action="disconnect"), aiosmtplib.SMTPServerDisconnected),
        (Fault("BODY", action="disconnect"), aiosmtplib.SMTPServerDisconnected),
    ],
    ids=lambda value: getattr(value, "stage", ""),
)
def test_smarthost_fails_once_as_scripted(
    smarthost: RecordingSmarthost, fault: Fault, error: type[Exception]
) -> None:
    smarthost.script(fault)

    with pytest.raises(error):
        send(smarthost, MESSAGE)
    send(smarthost, MESSAGE)

    assert len(smarthost.received) == 1
    assert smarthost.pending_faults() == []


def test_smarthost_refuses_only_the_named_recipient(smarthost: RecordingSmarthost) -> None:
    smarthost.script(Fault("RCPT", "550 5.1.1 no such user", recipient="c@x.test", times=None))

    errors, _ = send(smarthost, MESSAGE, recipients=["b@x.test", "c@x.test"])

    assert list(errors) == ["c@x.test"]
    assert smarthost.received[0].rcpt_tos == ("b@x.test",)


def test_smarthost_hang_after_data_keeps_the_message(smarthost: RecordingSmarthost) -> None:
    smarthost.script(Fault("EOD", action="hang", seconds=None))

    with pytest.raises(aiosmtplib.SMTPTimeoutError):
        send(smarthost, MESSAGE, timeout=2.0)

    assert len(smarthost.received) == 1  # the server has it; only the answer never came


def test_smarthost_multiline_421_closes_the_connection(smarthost: RecordingSmarthost) -> None:
    smarthost.script(Fault("MAIL", "421-4.7.0 first\n421 4.7.0 second"))

    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        send(smarthost, MESSAGE)

    assert refused.value.message == "4.7.0 first\n4.7.0 second"
    smarthost.wait_for(lambda: smarthost.connections == 1)


def test_smarthost_starttls_and_auth(certs: LabCerts) -> None:
    with RecordingSmarthost(
        starttls=True, require_auth=("relay", "s3cret"), auth_require_tls=True, certs=certs
    ) as server:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            send(
                server,
                MESSAGE,
                start_tls=True,
                tls_context=certs.client_context(),
                username="relay",
                password="wrong",
            )
        with pytest.raises(ssl.SSLCertVerificationError):
            send(server, MESSAGE, start_tls=True, tls_context=certs.client_context(trusted=False))
        send(
            server,
            MESSAGE,
            start_tls=True,
            tls_context=certs.client_context(),
            username="relay",
            password="s3cret",
        )

        [got] = server.received
        assert (got.tls, got.auth_user) == (True, "relay")


def test_smarthost_implicit_tls_and_size_limit(certs: LabCerts) -> None:
    with RecordingSmarthost(implicit_tls=True, size_limit=100, certs=certs) as server:
        tls = {"use_tls": True, "tls_context": certs.client_context()}
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            send(server, MESSAGE + b"x" * 200, **tls)
        send(server, MESSAGE, **tls)

    assert refused.value.code == 552
    assert server.received[0].tls


def test_fault_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="needs a reply"):
        Fault("MAIL")
    with pytest.raises(ValueError, match="not an SMTP reply"):
        Fault("MAIL", "try later")
    with pytest.raises(ValueError, match="RCPT"):
        Fault("MAIL", "550 no", recipient="a@b.test")


# -- DNS -------------------------------------------------------------------------------


def test_dns_answers_mx_over_udp_and_tcp(dns_server: DnsServer) -> None:
    dns_server.add_mx("kunde1.test", [(10, "mx00.kundenserver.de"), (20, "mx01.kundenserver.de")])
    dns_server.add_a("mx00.kundenserver.de", "192.0.2.10")

    answer = dns_server.resolver().resolve("kunde1.test", "MX")
    hosts = sorted((r.preference, r.exchange.to_text()) for r in answer)
    query = dns.message.make_query("kunde1.test", "MX")
    over_tcp = dns.query.tcp(query, dns_server.host, port=dns_server.port, timeout=2)

    assert hosts == [(10, "mx00.kundenserver.de."), (20, "mx01.kundenserver.de.")]
    assert answer.rrset is not None and answer.rrset.ttl == 300
    assert len(over_tcp.answer[0]) == 2
    assert over_tcp.additional[0].to_text() == "mx00.kundenserver.de. 300 IN A 192.0.2.10"
    assert dns_server.queries[("kunde1.test", "MX")] == 2


def test_dns_failures(dns_server: DnsServer) -> None:
    dns_server.add_mx("broken.test", [(10, "mx.broken.test")])
    dns_server.set_failure("broken.test", "servfail")
    dns_server.set_failure("gone.test", "nxdomain")
    dns_server.set_failure("silent.test", "timeout")
    resolver = dns_server.resolver(lifetime=0.3)

    servfail = dns.query.udp(
        dns.message.make_query("broken.test", "MX"), dns_server.host, port=dns_server.port
    )
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("gone.test", "MX")
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver.resolve("never-added.test", "MX")
    started = time.monotonic()
    with pytest.raises(dns.resolver.LifetimeTimeout):
        resolver.resolve("silent.test", "MX")

    assert servfail.rcode() == dns.rcode.SERVFAIL
    dns_server.set_failure("broken.test", None)
    with pytest.raises(dns.resolver.NoAnswer):  # the name exists, with no A record
        resolver.resolve("broken.test", "A")
    assert time.monotonic() - started >= 0.3
    assert dns_server.queries[("silent.test", "MX")] >= 1
