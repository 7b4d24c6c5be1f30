"""The host named in Postfix's delay reason decides the provider (README: Providers, 1.).

This module's Postfix resolves provider host names from a hosts file of its own (the
smtp client runs chrooted with it), so its delay reasons read
`host mx00.kundenserver.de[127.0.0.1] said: 421 ...` as on a real server, while every
connection still goes to a fake provider on loopback. The lab DNS server says something
else (or fails) for each domain, so only the reason's host can give the answers checked.
Relays of our own (`[postfix] own_relays`, and Postfix's `relayhost` read with postconf)
are never taken for the destination.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.lab.dns import DnsServer
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider, RecordingSmarthost
from tests.lab.system import new_lab_root, remove_lab_root

pytestmark = pytest.mark.postfix

RELAYHOST = "relay.lab.test"  # Postfix's relayhost: mail to unrouted domains goes there
GATEWAY = "gateway.own.test"  # a relay of our own that only the config can name


@dataclass
class Lab:
    postfix: PostfixLab
    provider: FakeProvider
    smarthost: RecordingSmarthost
    dns: DnsServer
    root: Path
    ids: dict[str, str]  # queue id of the one message to each domain

    def rescue(self, name: str, **kwargs: Any) -> Rescue:
        rescue = Rescue(
            self.root / name,
            self.postfix,
            smarthosts=[smarthost_entry("relay1", self.smarthost.port)],
            extra=f'[dns]\nnameservers = ["127.0.0.1"]\nport = {self.dns.port}\ntimeout = "2s"\n',
        )
        for key, value in kwargs.items():
            setattr(rescue, key, value)
        return rescue

    def scan(self, rescue: Rescue) -> dict[str, dict[str, Any]]:
        """`scan --json`: each recipient domain's recipient entry."""
        result = rescue.run("scan", "--json")
        assert result.code == 0, result.stderr
        return {
            rcpt["address"].rpartition("@")[2]: rcpt
            for message in result.lines
            for rcpt in message["recipients"]
        }


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    root = new_lab_root("reason-host-")
    with FakeProvider() as provider, RecordingSmarthost() as smarthost, DnsServer() as dns:
        # DNS says GMX: the reason's IONOS host must win over it.
        dns.add_mx("named.test", [(10, "mx00.gmx.net")])
        for domain in ("nodns.test", "gateway.test", "viarelay.test"):
            dns.set_failure(domain, "servfail")
        port = provider.port
        postfix = PostfixLab(
            root / "postfix",
            name="reasonhost",
            transports={
                "named.test": f"smtp:[mx00.kundenserver.de]:{port}",
                "nodns.test": f"smtp:[mx01.kundenserver.de]:{port}",
                "gateway.test": f"smtp:[{GATEWAY}]:{port}",
            },
            # Every other domain goes through the relayhost.
            relayhost=f"[{RELAYHOST}]:{port}",
            hosts=dict.fromkeys(
                ("mx00.kundenserver.de", "mx01.kundenserver.de", GATEWAY, RELAYHOST), "127.0.0.1"
            ),
        )
        try:
            postfix.start()
            yield Lab(postfix, provider, smarthost, dns, root, {})
        finally:
            postfix.stop()
            remove_lab_root(root)


DOMAINS = ("named.test", "nodns.test", "gateway.test", "viarelay.test")


@pytest.fixture
def queued(lab: Lab) -> Lab:
    """The lab with one deferred message to each domain."""
    lab.postfix.clear()
    lab.smarthost.reset()
    lab.ids = {d: lab.postfix.submit("alice@example.com", [f"bob@{d}"], b"Hi\n") for d in DOMAINS}
    lab.postfix.wait_deferred(len(DOMAINS))
    return lab


def test_reasons_name_the_providers_hosts(queued: Lab) -> None:
    reasons = {
        rcpt["address"].rpartition("@")[2]: rcpt["delay_reason"]
        for message in queued.postfix.queue()
        for rcpt in message["recipients"]
    }
    said = "[127.0.0.1] said: 421 4.7.0 invalid sender domain"
    assert reasons["named.test"].startswith(f"host mx00.kundenserver.de{said}")
    assert reasons["nodns.test"].startswith(f"host mx01.kundenserver.de{said}")
    assert reasons["gateway.test"].startswith(f"host {GATEWAY}{said}")
    assert reasons["viarelay.test"].startswith(f"host {RELAYHOST}{said}")


def test_scan_classifies_by_the_reason_host_and_skips_own_relays(queued: Lab) -> None:
    rescue = queued.rescue("scan-own", postfix_extra=f'own_relays = ["{GATEWAY}"]')
    got = queued.scan(rescue)

    # The reason's host decides, before DNS (which says GMX) or without it (SERVFAIL).
    for domain, host in (("named.test", "mx00"), ("nodns.test", "mx01")):
        rcpt = got[domain]
        assert (rcpt["provider"], rcpt["classified_by"]) == ("ionos", "reason-host"), rcpt
        assert rcpt["mx"] == f"{host}.kundenserver.de"
    # A relay of our own is not the destination: with DNS failing, only the reply
    # text is left to tell, and it is IONOS's.
    for domain, relay in (("gateway.test", GATEWAY), ("viarelay.test", RELAYHOST)):
        rcpt = got[domain]
        assert (rcpt["provider"], rcpt["classified_by"]) == ("ionos", "reason-text"), rcpt
        assert f"{relay} is our own relay" in rcpt["note"], rcpt


def test_a_relay_not_named_as_ours_is_taken_for_the_destination(queued: Lab) -> None:
    got = queued.scan(queued.rescue("scan-plain"))

    # Named in the reason, and no provider's host: at no known provider, whatever
    # the reply text resembles.
    rcpt = got["gateway.test"]
    assert (rcpt["provider"], rcpt["classified_by"]) == (None, None), rcpt
    assert f"{GATEWAY}: no known provider" in rcpt["note"], rcpt
    # The relayhost is read from Postfix (postconf), with no config.
    assert got["viarelay.test"]["provider"] == "ionos"
    assert f"{RELAYHOST} is our own relay" in got["viarelay.test"]["note"]


def test_flush_takes_what_the_reason_host_names(queued: Lab) -> None:
    rescue = queued.rescue("flush")
    gmx = rescue.run("flush", "--yes", "--provider", "gmx", "--json")
    assert gmx.code == 0, gmx.stderr
    assert gmx.summary["selected"] == 0  # DNS says GMX for named.test; its reason does not

    result = rescue.run("flush", "--yes", "--provider", "ionos", "--json")

    assert result.code == 0, result.stderr
    taken = {d: queued.ids[d] for d in ("named.test", "nodns.test", "viarelay.test")}
    assert set(result.outcomes) == set(taken.values())
    assert {o["provider"] for o in result.outcomes.values()} == {"ionos"}
    assert sorted(r.rcpt_tos for r in queued.smarthost.received) == sorted(
        (f"bob@{d}",) for d in taken
    )
    assert queued.postfix.queue_ids("deferred") == [queued.ids["gateway.test"]]
