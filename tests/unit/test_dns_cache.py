"""MxResolver against a real DNS server on loopback: one query a domain, TTL cache, failures.

The clock is injected, so expiry is tested without waiting.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections import Counter
from collections.abc import Iterator

import pytest

from rescue.classify.dns import NEGATIVE_TTL, MxAnswer, MxResolver
from rescue.config import DnsConfig
from tests.lab import wait_for
from tests.lab.dns import DnsServer, Failure

TIMEOUT = 0.3  # seconds; what a silent server costs a lookup


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def server() -> Iterator[DnsServer]:
    with DnsServer() as dns:
        dns.add_mx("kunde.test", [(20, "mx01.kundenserver.de"), (10, "mx00.kundenserver.de")], 300)
        dns.add_mx("short.test", [(10, "mx00.gmx.net")], ttl=5)
        dns.add_mx("zero.test", [(10, "mx00.gmx.net")], ttl=0)
        dns.add("nomail.test", "MX", "0 .")
        dns.add_a("plain.test", "192.0.2.10")
        yield dns


def resolver(server: DnsServer, clock: Clock | None = None, *, concurrency: int = 20) -> MxResolver:
    cfg = DnsConfig(
        nameservers=(server.host,), port=server.port, timeout=TIMEOUT, concurrency=concurrency
    )
    return MxResolver(cfg, clock=clock or Clock())


def lookup_all(mx: MxResolver, *domains: str) -> dict[str, MxAnswer]:
    return asyncio.run(mx.lookup_all(domains))


def test_one_query_per_distinct_domain(server: DnsServer) -> None:
    mx = resolver(server)
    answers = lookup_all(mx, "kunde.test", "KUNDE.test.", "short.test", "kunde.test", "")
    assert set(answers) == {"kunde.test", "short.test"}
    assert answers["kunde.test"].hosts == ("mx00.kundenserver.de", "mx01.kundenserver.de")
    assert server.queries == Counter({("kunde.test", "MX"): 1, ("short.test", "MX"): 1})
    assert mx.queries == 2


def test_answers_are_kept_for_their_ttl(server: DnsServer) -> None:
    clock = Clock()
    mx = resolver(server, clock)
    lookup_all(mx, "kunde.test", "short.test", "zero.test")
    clock.now += 4
    lookup_all(mx, "kunde.test", "short.test", "zero.test")
    # A TTL of 0 means: do not keep it.
    assert server.queries[("zero.test", "MX")] == 2
    assert server.queries[("short.test", "MX")] == 1
    clock.now += 2  # past short.test's 5 seconds
    lookup_all(mx, "kunde.test", "short.test")
    assert server.queries[("short.test", "MX")] == 2
    assert server.queries[("kunde.test", "MX")] == 1


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        ("servfail", "answered SERVFAIL"),
        ("nxdomain", "NXDOMAIN"),
        ("timeout", f"DNS timeout after {TIMEOUT:g}s"),
    ],
)
def test_failures_carry_the_error_and_are_kept_a_while(
    server: DnsServer, failure: Failure, error: str
) -> None:
    server.set_failure("kunde.test", failure)
    clock = Clock()
    mx = resolver(server, clock)
    answer = lookup_all(mx, "kunde.test")["kunde.test"]
    assert answer.hosts == () and answer.error is not None and error in answer.error
    clock.now += NEGATIVE_TTL - 1
    lookup_all(mx, "kunde.test")
    assert mx.queries == 1
    clock.now += 2
    server.set_failure("kunde.test", None)
    assert lookup_all(mx, "kunde.test")["kunde.test"].error is None
    assert mx.queries == 2


def test_null_mx_and_no_mx(server: DnsServer) -> None:
    answers = lookup_all(resolver(server), "nomail.test", "plain.test")
    assert answers["nomail.test"].error is not None and "null MX" in answers["nomail.test"].error
    # RFC 5321 section 5.1: without MX records the domain is its own mail host.
    assert answers["plain.test"].hosts == ("plain.test",)


def test_concurrency_is_limited(server: DnsServer) -> None:
    silent = [f"silent{i}.test" for i in range(3)]
    for name in silent:
        server.set_failure(name, "timeout")
    started = time.monotonic()
    lookup_all(resolver(server, concurrency=1), *silent)
    # One at a time, each silent server costs its whole timeout (a lower bound: true
    # however slow the machine).
    assert time.monotonic() - started >= 3 * TIMEOUT


def test_concurrent_lookups_are_under_way_together(server: DnsServer) -> None:
    names = [f"held{i}.test" for i in range(3)]
    for name in names:
        server.add_mx(name, [(10, "mx00.gmx.net")])
        server.hold(name)
    mx = MxResolver(
        DnsConfig(nameservers=(server.host,), port=server.port, timeout=30.0, concurrency=3),
        clock=Clock(),
    )
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answers = pool.submit(lookup_all, mx, *names)
        try:
            # All three questions wait at the server at the same time.
            wait_for(lambda: server.waiting == set(names), 20, "three questions at once")
        finally:
            server.release()
        assert {name: a.hosts for name, a in answers.result(30).items()} == dict.fromkeys(
            names, ("mx00.gmx.net",)
        )
