"""The integration world: a lab Postfix whose customers' provider defers like 1&1.

kunde1.test .. kunde40.test have their MX at mx00/mx01.kundenserver.de (IONOS) in
the lab DNS server and are routed by Postfix to a FakeProvider that answers
"421 invalid sender domain"; partner.test is deferred the same way but its MX is
at a provider we do not reroute; accept.test is delivered normally.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.lab.dns import DnsServer
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider, RecordingSmarthost
from tests.lab.submission import Submission

IONOS_MX = [(10, "mx00.kundenserver.de"), (10, "mx01.kundenserver.de")]
CUSTOMER_DOMAINS = [f"kunde{i}.test" for i in range(1, 41)]
OTHER_DOMAIN = "partner.test"  # deferred too, but its MX is at a provider we do not reroute
ACCEPTING_DOMAIN = "accept.test"  # delivered normally


@dataclass
class World:
    lab: PostfixLab
    provider: FakeProvider
    accepting: RecordingSmarthost
    smarthost: RecordingSmarthost
    dns: DnsServer
    root: Path

    def rescue(self, name: str, **kwargs: object) -> Rescue:
        rescue = Rescue(
            self.root / name,
            self.lab,
            smarthosts=[smarthost_entry("relay1", self.smarthost.port)],
            extra=f'[dns]\nnameservers = ["127.0.0.1"]\nport = {self.dns.port}\ntimeout = "2s"\n',
        )
        for key, value in kwargs.items():
            setattr(rescue, key, value)
        return rescue

    def reset(self) -> None:
        """Between tests: an empty queue, servers without faults or records."""
        self.lab.clear()
        for server in (self.smarthost, self.accepting, self.provider):
            server.reset()

    def stop(self) -> None:
        self.lab.stop()
        for server in (self.provider, self.accepting, self.smarthost, self.dns):
            server.stop()


def build_world(root: Path) -> World:
    """Start every part; the caller stops them with World.stop()."""
    root.chmod(0o755)
    provider = FakeProvider().start()
    accepting = RecordingSmarthost().start()
    smarthost = RecordingSmarthost().start()
    dns = DnsServer().start()
    for domain in CUSTOMER_DOMAINS:
        dns.add_mx(domain, IONOS_MX)
    dns.add_mx(OTHER_DOMAIN, [(10, "mx.other-provider.test")])
    transports = {d: provider.next_hop for d in [*CUSTOMER_DOMAINS, OTHER_DOMAIN]}
    transports[ACCEPTING_DOMAIN] = accepting.next_hop
    lab = PostfixLab(root / "postfix", transports=transports, name="world")
    lab.start()
    return World(lab, provider, accepting, smarthost, dns, root)


def body(n: int, extra: bytes = b"") -> bytes:
    return b"From: alice@example.com\nSubject: order %d\n\nHello %d.\n%s" % (n, n, extra)


def submit(w: World, n: int) -> list[str]:
    """n messages to the customers (c0@kunde1.test, ...), deferred by the provider."""
    ids = w.lab.submit_many(
        Submission("alice@example.com", (f"c{i}@kunde{i % 30 + 1}.test",), body(i))
        for i in range(n)
    )
    w.lab.wait_deferred(n)
    return ids


def journal_states(rescue: Rescue) -> Counter[str]:
    """How many messages the journal has in each state."""
    with sqlite3.connect(rescue.journal_path) as db:
        return Counter(state for (state,) in db.execute("SELECT state FROM messages"))
