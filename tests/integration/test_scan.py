"""`scan` against a real Postfix queue and a real DNS server on loopback.

Postfix routes every test domain to a fake provider on 127.0.0.1 (transport_maps), so
each delay reason names 127.0.0.1 and only the domain's MX records in our DNS server
can say which provider the mail is stuck at. Besides one domain per catalog provider
(its MX records: the provider's real MX host names listed in the catalog) the queue
holds recipients whose reason names no provider host (connection refused), domains
whose lookup fails (SERVFAIL, NXDOMAIN, timeout) and fall back to the provider domains
or the reply text or stay unknown, a domain with MX hosts of two providers, domains
whose own MX host name leads to a provider through its CNAME, PTR or zone NS records,
and domains with MX hosts of none (listed by registered domain). A second Postfix holds
a big queue to few domains, to count DNS queries.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescue.classify.catalog import load_catalog
from tests.integration.rescue_cli import Rescue, Result, smarthost_entry
from tests.integration.scan_cases import (
    AGE_COLUMN,
    AGE_MINUTES,
    BUCKETS,
    BY_DOMAIN,
    CASES,
    NEUTRAL_REPLY,
    ORANGE_REPLY,
    PLANNED,
    PROVIDER_CASES,
    PROVIDER_MX,
    REPO,
    SHARED,
    dns_config,
    expected_rows,
    group,
)
from tests.lab.dns import DnsServer
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider
from tests.lab.submission import Submission
from tests.lab.system import free_port

# -- the lab ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        for case in CASES:
            server.add_mx(case.domain, [(10 * (i + 1), host) for i, host in enumerate(case.mx)])
            for name, rdtype, data in case.records:
                server.add(name, rdtype, data)
            if case.failure is not None:
                server.set_failure(case.domain, case.failure)
        yield server


@pytest.fixture(scope="module")
def providers() -> Iterator[dict[str, FakeProvider]]:
    with FakeProvider(NEUTRAL_REPLY) as neutral, FakeProvider(ORANGE_REPLY) as orange:
        yield {"neutral": neutral, "orange": orange}


@pytest.fixture(scope="module")
def lab(module_lab_root: Path, providers: dict[str, FakeProvider]) -> Iterator[PostfixLab]:
    hops = {name: fake.next_hop for name, fake in providers.items()}
    hops["closed"] = f"smtp:[127.0.0.1]:{free_port()}"
    transports = {case.domain: hops[case.route] for case in CASES}
    with PostfixLab(module_lab_root / "postfix", transports=transports) as postfix:
        submissions = [
            Submission(f"shop@sender{n % 2}.test", [f"u{n}@{d}" for d in domains], b"Hi\n")
            for n, domains in enumerate(PLANNED[:-1])
        ]
        submissions.append(Submission("", [f"shared@{d}" for d in SHARED], b"Hi\n"))
        ids = postfix.submit_many(submissions, sessions=4)
        postfix.wait_deferred(len(submissions))
        # Every message dated back to the middle of the 160-320 minute column, so the
        # table's ages stay the same however long this module takes.
        arrived = int(time.time()) - AGE_MINUTES * 60
        for queue_id in ids:
            postfix.set_arrival(queue_id, arrived)
        yield postfix


@pytest.fixture(scope="module")
def rescue(
    tmp_path_factory: pytest.TempPathFactory,
    lab: PostfixLab,
    dns: DnsServer,
    providers: dict[str, FakeProvider],
) -> Rescue:
    return Rescue(
        tmp_path_factory.mktemp("scan-rescue"),
        lab,
        smarthosts=[smarthost_entry("relay", providers["neutral"].port)],
        extra=dns_config(dns),
    )


def run(rescue: Rescue, *args: str) -> Result:
    result = rescue.run("scan", *args)
    assert result.code == 0, result.stderr
    return result


def blocks(stdout: str) -> list[list[list[str]]]:
    """The tab-separated tables of piped output, each a list of rows, header first."""
    found: list[list[list[str]]] = [[]]
    for line in stdout.splitlines():
        if not line.strip():
            found.append([])
        else:
            found[-1].append(line.split("\t"))
    return [block for block in found if block]


def rows_by_key(block: list[list[str]]) -> dict[str, dict[str, str]]:
    header, *rows = block
    return {row[0]: dict(zip(header, row, strict=True)) for row in rows}


# -- tests ------------------------------------------------------------------------------


def test_every_catalog_provider_has_a_case() -> None:
    catalog = load_catalog()
    assert set(PROVIDER_MX) == set(catalog.by_name)
    for name, hosts in PROVIDER_MX.items():
        for host in hosts:
            owner = catalog.for_mx(host)
            assert owner is not None and owner.name == name, host
    assert catalog.for_reason_text(NEUTRAL_REPLY) is None


@pytest.mark.postfix
def test_json_classifies_every_recipient(rescue: Rescue, lab: PostfixLab) -> None:
    messages = run(rescue, "--json").lines
    assert len(messages) == len(lab.queue_ids("deferred"))
    first = messages[0]
    assert set(first) >= {"queue_id", "queue_name", "arrival_time", "size", "sender"}
    seen = set()
    for message in messages:
        for rcpt in message["recipients"]:
            case = BY_DOMAIN[rcpt["address"].rpartition("@")[2]]
            seen.add(case.domain)
            assert (rcpt["provider"], rcpt["classified_by"]) == (
                case.provider,
                case.classified_by,
            ), rcpt
            assert case.note in (rcpt["note"] or ""), rcpt
            if case in PROVIDER_CASES:
                assert rcpt["note"] is None, rcpt  # every MX host of the domain was named
            if case.domain.startswith("hoster"):
                assert rcpt["mx_domain"] == "example-hoster.net", rcpt
            elif case.domain != "elsewhere.test":
                assert rcpt["mx_domain"] is None, rcpt
            assert "127.0.0.1[127.0.0.1]" in rcpt["reason"], rcpt
            if case.classified_by is not None and case.classified_by.startswith("dns-mx"):
                assert rcpt["mx"] in case.mx
    assert seen == set(BY_DOMAIN)
    shared = next(m for m in messages if len(m["recipients"]) == 3)
    assert shared["sender"] == ""


@pytest.mark.postfix
def test_table_by_provider_counts_recipients_and_messages(rescue: Rescue) -> None:
    table, *rest = blocks(run(rescue).stdout)
    assert table[0] == ["provider", "messages", "T", *BUCKETS]
    rows = rows_by_key(table)
    expected = expected_rows()
    assert set(rows) == {"TOTAL", *expected}
    for key, (messages, recipients) in expected.items():
        row = rows[key]
        assert (int(row["messages"]), int(row["T"])) == (messages, recipients), row
        # Everything arrived AGE_MINUTES ago: all in that column.
        assert int(row[AGE_COLUMN]) == recipients, row
        assert all(row[b] == "0" for b in BUCKETS if b != AGE_COLUMN), row
    total = rows["TOTAL"]
    assert (int(total["messages"]), int(total["T"])) == (len(PLANNED), sum(map(len, PLANNED)))
    # The biggest row comes first after TOTAL.
    order = [row[0] for row in table[2:]]
    assert order == sorted(order, key=lambda k: (-expected[k][1], k))

    # Below: each domain no provider could be named for, and why.
    problems, unknown_mx = rest
    assert problems[0] == ["domain", "provider", "recipients", "messages", "why"]
    why = rows_by_key(problems)
    assert set(why) == {c.domain for c in CASES if c.provider is None}
    assert why["mixed.test"]["provider"] == "mixed MX: google, ionos"
    assert "SERVFAIL" in why["broken.test"]["why"]
    assert why["broken.test"]["recipients"] == "3"  # two messages and the shared one
    assert "NXDOMAIN" in why["gone.test"]["why"]
    assert "DNS timeout" in why["slow.test"]["why"]
    assert "mail.elsewhere.test" in why["elsewhere.test"]["why"]
    assert why["mx07.gmx.net"]["provider"] == "unknown"

    # Then the MX hosts no provider matched, by registered domain, with counts.
    assert unknown_mx[0] == ["mx", "recipients", "messages", "hosts", "domains"]
    hosts = rows_by_key(unknown_mx)
    assert set(hosts) == {"*.example-hoster.net", "*.elsewhere.test"}
    hoster = hosts["*.example-hoster.net"]
    assert (hoster["recipients"], hoster["messages"]) == ("4", "4")
    assert hoster["hosts"] == "mx1.mail.example-hoster.net, mx2.mail.example-hoster.net"
    assert hoster["domains"] == "hoster1.test, hoster2.test"
    assert [row[0] for row in unknown_mx[1:]] == ["*.example-hoster.net", "*.elsewhere.test"]


@pytest.mark.postfix
def test_table_by_domain(rescue: Rescue) -> None:
    table, *_below = blocks(run(rescue, "--by", "domain").stdout)
    assert table[0] == ["domain", "provider", "messages", "T", *BUCKETS]
    rows = rows_by_key(table)
    for domain, (messages, recipients) in expected_rows(by_domain=True).items():
        row = rows[domain]
        assert (int(row["messages"]), int(row["T"])) == (messages, recipients), row
        assert row["provider"] == group(domain)


@pytest.mark.postfix
def test_table_by_sender_domain_and_reason(rescue: Rescue) -> None:
    table, *_ = blocks(run(rescue, "--by", "sender-domain").stdout)
    rows = rows_by_key(table)
    assert set(rows) == {"TOTAL", "sender0.test", "sender1.test", "MAILER-DAEMON"}
    assert rows["MAILER-DAEMON"]["T"] == "3"
    assert rows["MAILER-DAEMON"]["messages"] == "1"

    table, *_ = blocks(run(rescue, "--by", "reason").stdout)
    rows = rows_by_key(table)
    refused = [key for key in rows if key.endswith("Connection refused")]
    assert len(refused) == 1 and rows[refused[0]]["provider"] == "yandex"
    assert rows[refused[0]]["T"] == "2"


@pytest.mark.postfix
def test_reasons_show_provider_and_catalog_advice(rescue: Rescue) -> None:
    summaries = run(rescue, "--reasons", "--json").lines
    # kunde-orange.test (by MX) got the neutral reply; orange-kunde.test Orange's own.
    orange = [s for s in summaries if "Trop de connexions" in s["reason"]]
    assert len(orange) == 1 and orange[0]["provider"] == "orange"
    assert orange[0]["known"] and orange[0]["reroute_helps"] is True
    assert orange[0]["meaning"] and orange[0]["fix"]
    assert orange[0]["domains"] == {"orange-kunde.test": 1}
    neutral = [s for s in summaries if s["provider"] == "ionos"]
    assert len(neutral) == 1 and neutral[0]["known"] is False
    assert neutral[0]["reason"] == NEUTRAL_REPLY
    mixed = [s for s in summaries if s["mixed"]]
    assert [m["mixed"] for m in mixed] == [["google", "ionos"]]
    counts = [s["recipients"] for s in summaries]
    assert counts == sorted(counts, reverse=True)

    table = blocks(run(rescue, "--reasons").stdout)[0]
    assert table[0][:5] == ["recipients", "messages", "provider", "reroute_helps", "reason"]
    (orange_row,) = [row for row in table[1:] if "Trop de connexions" in row[4]]
    assert orange_row[3] == "yes" and orange_row[5] == orange[0]["meaning"]


@pytest.mark.postfix
def test_one_dns_query_per_distinct_domain(rescue: Rescue, dns: DnsServer) -> None:
    before = dns.queries
    run(rescue, "--json")
    asked = dns.queries - before
    mx = Counter({key: n for key, n in asked.items() if key[1] == "MX"})
    assert mx == Counter({(case.domain, "MX"): 1 for case in CASES})
    # MX hosts no pattern names are looked up further, each question once; the two
    # hosts at example-hoster.net share one NS question.
    assert set(asked.values()) == {1}
    assert ("mx.cname-kunde.test", "CNAME") in asked
    assert ("mx.cname-kunde.test", "A") not in asked  # the CNAME named the provider
    assert ("41.2.0.192.in-addr.arpa", "PTR") in asked
    assert ("ns-kunde.test", "NS") in asked and ("example-hoster.net", "NS") in asked
    # Hosts a pattern names are not looked up at all.
    assert not [key for key in asked if key[0].endswith(".kundenserver.de")]


def test_dns_query_budget_leaves_hosts_unrecognised(
    tmp_path: Path, lab: PostfixLab, dns: DnsServer, providers: dict[str, FakeProvider]
) -> None:
    rescue = Rescue(
        tmp_path,
        lab,
        smarthosts=[smarthost_entry("relay", providers["neutral"].port)],
        extra=dns_config(dns) + "host_queries = 0\n",
    )
    before = dns.queries
    lines = run(rescue, "--json").lines
    asked = dns.queries - before
    assert {rdtype for _, rdtype in asked} == {"MX"}
    found = {r["address"].rpartition("@")[2]: r for m in lines for r in m["recipients"]}
    assert found["cname-kunde.test"]["provider"] is None
    assert found["cname-kunde.test"]["mx"] == "mx.cname-kunde.test"


def test_unknown_mx_alone_as_json(rescue: Rescue) -> None:
    lines = run(rescue, "--unknown-mx", "--json").lines
    assert [line["mx_domain"] for line in lines] == ["example-hoster.net", "elsewhere.test"]
    hoster = lines[0]
    assert hoster["pattern"] == "*.example-hoster.net"
    assert (hoster["recipients"], hoster["messages"]) == (4, 4)
    assert hoster["domains"] == {"hoster1.test": 3, "hoster2.test": 1}
    assert hoster["hosts"] == ["mx1.mail.example-hoster.net", "mx2.mail.example-hoster.net"]
    table = blocks(run(rescue, "--unknown-mx").stdout)
    assert len(table) == 1 and table[0][1][:3] == ["*.example-hoster.net", "4", "4"]


@pytest.mark.postfix
def test_no_dns_asks_nothing_and_falls_back(rescue: Rescue, dns: DnsServer) -> None:
    before = dns.queries
    lines = run(rescue, "--json", "--no-dns").lines
    assert dns.queries == before
    found = {r["address"].rpartition("@")[2]: r for m in lines for r in m["recipients"]}
    assert found["gmx.de"]["provider"] == "gmx"
    assert found["orange-kunde.test"]["provider"] == "orange"
    assert found["kunde-ionos.test"]["provider"] is None


# -- a big queue ------------------------------------------------------------------------

# The issue asks for 10,000; building them costs ~35 s on a busy 2-core machine (SMTP
# submission, not the scan), so the suite uses 2,000 (same code path, ~8 s):
# RESCUE_BULK_MESSAGES=10000 pytest -k big_queue runs the full size.
BULK_MESSAGES = int(os.environ.get("RESCUE_BULK_MESSAGES", "2000"))
BULK_DOMAINS = 20


@pytest.mark.postfix
@pytest.mark.timeout(300)
def test_big_queue_one_query_per_domain(lab_root: Path, providers: dict[str, FakeProvider]) -> None:
    domains = [f"bulk{i}.test" for i in range(BULK_DOMAINS)]
    names = sorted(PROVIDER_MX)
    with DnsServer() as server:
        for index, domain in enumerate(domains):
            server.add_mx(domain, [(10, PROVIDER_MX[names[index % len(names)]][0])])
        root = lab_root
        hop = providers["neutral"].next_hop
        with PostfixLab(
            root / "postfix", name="bulk", transports=dict.fromkeys(domains, hop)
        ) as big:
            big.submit_many(
                (
                    Submission(f"s{n}@shop.test", [f"u{n}@{domains[n % BULK_DOMAINS]}"], b"Hi\n")
                    for n in range(BULK_MESSAGES)
                ),
                sessions=8,
            )
            big.wait_deferred(BULK_MESSAGES, timeout=120)
            rescue = Rescue(
                root / "rescue",
                big,
                smarthosts=[smarthost_entry("relay", providers["neutral"].port)],
                extra=dns_config(server),
            )
            before = server.queries
            started = time.monotonic()
            table = blocks(run(rescue).stdout)[0]
            took = time.monotonic() - started
            assert server.queries - before == Counter({(d, "MX"): 1 for d in domains})
            rows = rows_by_key(table)
            assert rows["TOTAL"]["messages"] == str(BULK_MESSAGES)
            expected: Counter[str] = Counter()
            for index in range(BULK_DOMAINS):
                expected[names[index % len(names)]] += BULK_MESSAGES // BULK_DOMAINS
            assert {name: int(rows[name]["T"]) for name in expected} == expected

            started = time.monotonic()
            subprocess.run(
                ["qshape", "-c", str(big.config_dir), "deferred"], check=True, capture_output=True
            )
            print(f"scan {took:.2f}s, qshape {time.monotonic() - started:.2f}s")


@pytest.mark.parametrize(
    "args", [(), ("--by", "domain"), ("--json", "--no-dns"), ("--unknown-mx",), ("--reasons",)]
)
def test_plain_scan_prints_what_the_command_line_prints(
    rescue: Rescue, args: tuple[str, ...]
) -> None:
    # `--config PATH scan ...` runs without click (rescue.start); `--config=PATH` is left to
    # the click group. Both must print the same (these outputs hold no age in seconds).
    config = rescue.write_config()
    plain = subprocess.run(
        [sys.executable, "-m", "rescue", "--config", str(config), "scan", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    clicked = subprocess.run(
        [sys.executable, "-m", "rescue", f"--config={config}", "scan", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert plain.returncode == clicked.returncode == 0, plain.stderr + clicked.stderr
    assert plain.stderr == clicked.stderr
    assert plain.stdout == clicked.stdout
    assert plain.stdout.strip()


@pytest.mark.parametrize(
    "args",
    [("scan", "--json"), ("scan",), ("scan", "--by", "domain"), ("flush", "--all", "--dry-run")],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(
    rescue: Rescue, args: tuple[str, ...]
) -> None:
    """`queue-rescue scan --json | head -1`: once the reader has gone, the command stops
    writing and ends with 141 (as SIGPIPE ends a program), reporting no error."""
    proc = rescue.popen(*args)
    assert proc.stdout is not None
    proc.stdout.close()  # the reader goes away before a line is written
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141, err
    assert "error" not in err
