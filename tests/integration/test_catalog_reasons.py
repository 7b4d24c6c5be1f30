"""Every reply text in the catalog, deferred by a real Postfix, explained by `scan --reasons`.

Each example gets its own recipient domain, whose MX in our DNS server is a host of the
example's provider; Postfix sends all of them to fake providers on 127.0.0.1, so the
delay reasons read "host 127.0.0.1[127.0.0.1] said: EXAMPLE (in reply to ...)".

Stages: one fake provider answers every example at RCPT TO, each recipient with its own
text (the one stage where one server can answer recipients differently), so all examples
go through one Postfix run. One more fake provider per catalog provider answers one of
its examples at MAIL FROM, where most of these replies are really sent. Postfix writes
the same "host ... said: TEXT" either way; only "(in reply to ...)" differs.

5xx examples: Postfix bounces a 5xx reply, and a bounced message leaves the queue with
nothing to scan. `soft_bounce = yes` is Postfix's own switch for keeping such mail
deferred, with the reply text unchanged (the switch an admin sets during an incident like
this), so every example is fed verbatim, its code included.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rescue.classify.catalog import KnownReason, load_catalog
from rescue.cli.common import State
from rescue.cli.providers_cmd import providers
from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.integration.test_scan import PROVIDER_MX, dns_config
from tests.lab.dns import DnsServer
from tests.lab.faults import Fault
from tests.lab.postfix import PostfixLab
from tests.lab.smtpd import FakeProvider
from tests.lab.submission import Submission

pytestmark = pytest.mark.postfix


@dataclass(frozen=True)
class Example:
    domain: str
    provider: str
    known: KnownReason
    text: str
    stage: str  # "RCPT" or "MAIL"

    @property
    def address(self) -> str:
        return f"user@{self.domain}"


def catalog_examples() -> list[Example]:
    found = []
    for provider in load_catalog().providers:
        for known in provider.known:
            for text in known.examples:
                domain = f"ex{len(found):03d}.{provider.name}.test"
                found.append(Example(domain, provider.name, known, text, "RCPT"))
        first = next((k for k in provider.known if k.examples), None)
        if first is None:
            continue  # a provider with no reply texts known (yet)
        found.append(
            Example(
                f"at-mail.{provider.name}.test", provider.name, first, first.examples[0], "MAIL"
            )
        )
    return found


EXAMPLES = catalog_examples()


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        for example in EXAMPLES:
            server.add_mx(example.domain, [(10, PROVIDER_MX[example.provider][0])])
        yield server


@pytest.fixture(scope="module")
def lab(module_lab_root: Path) -> Iterator[tuple[PostfixLab, FakeProvider]]:
    with ExitStack() as stack:
        at_rcpt = stack.enter_context(FakeProvider())
        at_rcpt.clear_faults()  # answer MAIL FROM, refuse each recipient its own way
        routes = {}
        for example in EXAMPLES:
            if example.stage == "RCPT":
                at_rcpt.script(Fault("RCPT", example.text, times=None, recipient=example.address))
                routes[example.domain] = at_rcpt.next_hop
            else:
                at_mail = stack.enter_context(FakeProvider(example.text, "MAIL"))
                routes[example.domain] = at_mail.next_hop
        postfix = stack.enter_context(
            PostfixLab(
                module_lab_root / "postfix",
                transports=routes,
                settings={"soft_bounce": "yes"},
            )
        )
        postfix.submit_many(
            [Submission("shop@sender.test", [e.address], b"Hi\n") for e in EXAMPLES], sessions=4
        )
        postfix.wait_deferred(len(EXAMPLES))
        yield postfix, at_rcpt


@pytest.fixture(scope="module")
def summaries(
    tmp_path_factory: pytest.TempPathFactory,
    lab: tuple[PostfixLab, FakeProvider],
    dns: DnsServer,
) -> list[dict[str, Any]]:
    postfix, fake = lab
    rescue = Rescue(
        tmp_path_factory.mktemp("reasons-rescue"),
        postfix,
        smarthosts=[smarthost_entry("relay", fake.port)],
        extra=dns_config(dns),
    )
    result = rescue.run("scan", "--reasons", "--json")
    assert result.code == 0, result.stderr
    return result.lines


def test_postfix_deferred_each_example_with_its_own_text(
    lab: tuple[PostfixLab, FakeProvider],
) -> None:
    postfix, _ = lab
    reasons = {
        rcpt["address"]: rcpt["delay_reason"]
        for entry in postfix.queue()
        for rcpt in entry["recipients"]
    }
    for example in EXAMPLES:
        reason = reasons[example.address]
        assert reason.startswith("host 127.0.0.1[127.0.0.1] said: ")
        assert example.text in reason, (example.text, reason)
        command = "RCPT TO" if example.stage == "RCPT" else "MAIL FROM"
        assert reason.endswith(f"(in reply to {command} command)")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.domain)
def test_scan_reasons_names_provider_and_advice(
    summaries: list[dict[str, Any]], example: Example
) -> None:
    (summary,) = [s for s in summaries if example.domain in s["domains"]]
    assert summary["provider"] == example.provider
    assert summary["known"], summary
    assert summary["pattern"] == example.known.pattern
    assert summary["meaning"] == example.known.meaning
    assert summary["fix"] == example.known.fix
    assert summary["reroute_helps"] is example.known.reroute_helps


# -- the providers command --------------------------------------------------------------

OVERRIDES = """
[[provider]]
name = "ionos"
reasons = ["unable to verify"]
reroute = "auto"

[[provider]]
name = "acme"
label = "ACME Mail"
mx = ["mx*.acme.test"]
reasons = []
"""


def test_providers_lists_the_catalog_merged_with_the_config(
    tmp_path: Path, lab: tuple[PostfixLab, FakeProvider]
) -> None:
    postfix, fake = lab
    config = Rescue(
        tmp_path, postfix, smarthosts=[smarthost_entry("relay", fake.port)], providers=OVERRIDES
    ).write_config()
    runner = CliRunner()
    result = runner.invoke(providers, ["--json"], obj=State(str(config)))
    assert result.exit_code == 0, result.output
    listed = {p["name"]: p for p in map(json.loads, result.output.splitlines())}
    catalog = load_catalog()
    assert set(listed) == {"acme", *catalog.by_name}
    ionos = listed["ionos"]
    assert (ionos["origin"], ionos["reroute"]) == ("built-in + config", "auto")
    assert ionos["reroute_reasons"] == ["unable to verify"]
    assert ionos["mx"] == list(catalog.by_name["ionos"].mx)
    assert [r["pattern"] for r in ionos["reasons"]] == [
        k.pattern for k in catalog.by_name["ionos"].known
    ]
    assert all({"meaning", "reroute_helps", "fix"} <= set(r) for r in ionos["reasons"])
    invalid = next(r for r in ionos["reasons"] if r["pattern"] == "invalid sender domain")
    assert "mx-cname" in invalid["checks"]
    assert listed["acme"]["origin"] == "config" and listed["acme"]["reroute_reasons"] == []
    assert listed["gmx"]["origin"] == "built-in" and listed["gmx"]["reroute_reasons"] is None

    table = runner.invoke(providers, ["acme", "ionos"], obj=State(str(config)))
    summary, _, known = table.output.partition("\n\n")
    header, *rows = [line.split("\t") for line in summary.splitlines()]
    assert header[0] == "name" and [row[0] for row in rows] == ["acme", "ionos"]
    # Named providers: their known reply texts follow.
    header, *rows = [line.split("\t") for line in known.splitlines()]
    assert header[:3] == ["provider", "reroute_helps", "pattern"]
    assert [row[2] for row in rows] == [k.pattern for k in catalog.by_name["ionos"].known]

    reasons = runner.invoke(providers, ["--reasons", "--builtin", "free"])
    header, *rows = [line.split("\t") for line in reasons.output.splitlines()]
    assert len(rows) == len(catalog.by_name["free"].known)
    assert {row[1] for row in rows} == {"yes", "no"}

    unknown = runner.invoke(providers, ["--builtin", "nosuch"])
    assert unknown.exit_code == 2 and "no provider named nosuch" in unknown.output
