"""A queue of 10,000 deferred messages: every one rerouted exactly once, none left on hold."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.integration.world import CUSTOMER_DOMAINS, World
from tests.lab.submission import Submission

pytestmark = pytest.mark.postfix

MESSAGES = 10_000


@pytest.mark.timeout(900)
def test_ten_thousand_deferred_messages(w: World) -> None:
    def message(n: int) -> Submission:
        domain = CUSTOMER_DOMAINS[n % len(CUSTOMER_DOMAINS)]
        text = b"From: shop@example.com\nSubject: order %d\n\n%s\n" % (n, b"x" * 2000)
        return Submission("shop@example.com", (f"c{n}@{domain}",), text)

    ids = w.lab.submit_many((message(n) for n in range(MESSAGES)), sessions=4)
    w.lab.wait_deferred(MESSAGES, timeout=300)
    rescue = w.rescue("large")

    # The delay reasons name no provider host (127.0.0.1), so DNS decides: one MX
    # query per distinct domain for the whole queue, not one a message.
    before = w.dns.queries
    scan = rescue.run("scan", "--json", timeout=300)
    assert scan.code == 0, scan.stderr[-2000:]
    assert len(scan.lines) == MESSAGES
    assert {r["provider"] for line in scan.lines for r in line["recipients"]} == {"ionos"}
    asked = w.dns.queries - before
    mx_queries = {name: n for (name, kind), n in asked.items() if kind == "MX"}
    assert mx_queries == dict.fromkeys(CUSTOMER_DOMAINS, 1)

    result = rescue.run("flush", "--yes", "--provider", "ionos", "--json", timeout=600)

    assert result.code == 0, result.stderr[-2000:]
    assert result.summary["rerouted"] == MESSAGES
    assert set(result.outcomes) == set(ids)
    counts = Counter(r.rcpt_tos for r in w.smarthost.received)
    assert len(counts) == MESSAGES and set(counts.values()) == {1}
    assert w.lab.queue() == []
