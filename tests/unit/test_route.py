"""Routing's parts: the breaker, the table's entries, what a cycle tells them, config, and
the service's routing driven by a scripted probe (no Postfix; postmap builds the table)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from rescue.classify.catalog import load_catalog
from rescue.config import ConfigError, RouteConfig, SmarthostConfig, parse_config
from rescue.diagnose.probe import ProbeTarget
from rescue.diagnose.result import Result, fail, ok
from rescue.errors import JournalError
from rescue.model import Classification, QueuedMessage, Recipient
from rescue.postfix.lookuptable import LookupTable
from rescue.route.breaker import (
    AUTO,
    HEALTHY,
    REROUTING,
    ProviderRoute,
    needs_probe,
    overridden,
    probed,
    tripped,
)
from rescue.route.control import (
    RouteControl,
    newest_matching,
    probe_targets,
    stale_trip,
    stuck_domains,
    trips,
)
from rescue.route.entries import CONFIGURED, STUCK, relay_transport, table_entries
from rescue.route.relay import Relay, envelope_of, queue_id_of
from rescue.route.relayserver import (
    ProtocolError,
    Transaction,
    parse_params,
    parse_path,
    xtext_decode,
)
from rescue.route.store import RouteStore
from rescue.smarthost.session import Accepted
from rescue.smarthost.wire import xtext
from rescue.srs.rewriter import SrsRewriter
from tests.unit.test_config import base_config

T0 = 1_000_000.0  # a fixed clock: nothing here reads the real one
RELAY = "smtp:[127.0.0.1]:10026"


# --- the breaker ---------------------------------------------------------------------------


def test_healthy_trips_to_rerouting_once() -> None:
    route = tripped(ProviderRoute("ionos"), "3 deferred", T0)
    assert (route.state, route.reason, route.changed_at) == (REROUTING, "3 deferred", T0)
    again = tripped(route, "5 deferred", T0 + 60)
    assert again == route  # no second change, no new reason


def test_recovers_after_enough_accepted_probes_in_a_row() -> None:
    route = tripped(ProviderRoute("ionos"), "deferred", T0)
    route = probed(route, True, "250", T0 + 1, recover_after=3)
    route = probed(route, True, "250", T0 + 2, recover_after=3)
    route = probed(route, False, "421", T0 + 3, recover_after=3)  # the run starts over
    assert route.probes_ok == 0 and route.state == REROUTING
    for n in range(1, 3):
        route = probed(route, True, "250", T0 + 3 + n, recover_after=3)
        assert route.state == REROUTING
    route = probed(route, True, "250 ok", T0 + 9, recover_after=3)
    assert route.state == HEALTHY and route.changed_at == T0 + 9
    assert route.reason.startswith("3 probes in a row accepted") and route.probes_ok == 0


def test_probes_mean_nothing_to_a_healthy_provider() -> None:
    route = ProviderRoute("ionos")
    assert probed(route, True, "250", T0, recover_after=1) == route
    assert not needs_probe(route)


def test_override_wins_until_cleared() -> None:
    route = overridden(ProviderRoute("ionos"), REROUTING, T0)
    assert route.rerouting and route.changed_at == T0
    assert not needs_probe(route)  # held there by hand: not probed
    assert probed(route, True, "250", T0 + 1, recover_after=1).rerouting
    # Cleared: what the breaker says by itself, which never tripped.
    cleared = overridden(route, AUTO, T0 + 2)
    assert cleared.override is None and not cleared.rerouting and not needs_probe(cleared)
    assert cleared.changed_at == T0 + 2
    # Tripped beneath an override: rerouting, and probed, once it is cleared.
    beneath = tripped(route, "3 deferred messages match", T0 + 3)
    assert beneath.override == REROUTING and beneath.state == REROUTING
    assert beneath.changed_at == T0  # the effective state did not change
    back = overridden(beneath, AUTO, T0 + 4)
    assert back.rerouting and needs_probe(back) and back.reason == "3 deferred messages match"
    forced = overridden(tripped(ProviderRoute("gmx"), "deferred", T0), HEALTHY, T0 + 5)
    assert not forced.rerouting and forced.changed_at == T0 + 5
    assert forced.describe() == "healthy (set by hand; by itself it would be rerouting)"
    assert overridden(forced, AUTO, T0 + 6).rerouting
    with pytest.raises(ValueError, match="expected one of"):
        overridden(route, "sometimes", T0)


# --- the table's entries ------------------------------------------------------------------


def test_entries_list_rerouting_providers_only() -> None:
    routes = [
        tripped(ProviderRoute("ionos"), "deferred", T0),
        ProviderRoute("gmx"),
    ]
    domains = {"ionos": {"kunde1.de": STUCK}, "gmx": {"gmx-kunde.de": STUCK}}
    configured = {"ionos": ["online.de"], "gmx": ["gmx.de"]}
    entries = table_entries(routes, domains, configured, RELAY)
    assert [(e.domain, e.transport, e.provider) for e in entries] == [
        ("kunde1.de", RELAY, "ionos"),
        ("online.de", RELAY, "ionos"),
    ]
    assert entries[1].why == f"ionos rerouting: {CONFIGURED}"
    assert table_entries(routes, domains, configured, RELAY, paused="relay1 full") == []


def test_entries_skip_what_a_table_cannot_key_on_and_keep_first_claim() -> None:
    routes = [tripped(ProviderRoute(p), "deferred", T0) for p in ("b", "a")]
    domains = {"a": {"shared.de": STUCK, "*.glob.de": STUCK}, "b": {"shared.de": STUCK}}
    entries = table_entries(routes, domains, {}, RELAY)
    assert [(e.domain, e.provider) for e in entries] == [("shared.de", "a")]


def test_relay_transport() -> None:
    assert relay_transport(("inet", "127.0.0.1", 10026)) == RELAY
    assert relay_transport(("inet", "::1", 25)) == "smtp:[::1]:25"
    sock = "/var/spool/postfix/private/queue-rescue"
    assert relay_transport(("unix", sock, 0), "/var/spool/postfix") == (
        "lmtp:unix:private/queue-rescue"
    )
    assert relay_transport(("unix", "/run/qr.sock", 0), "/var/spool/postfix") == (
        "lmtp:unix:/run/qr.sock"
    )


# --- what a cycle tells routing ------------------------------------------------------------

REFUSED = "host mx00.kundenserver.de[212.227.15.41] said: 421 invalid sender domain"


def message(qid: str, arrival: int, sender: str, *rcpts: str) -> QueuedMessage:
    recipients = tuple(Recipient(r, delay_reason=REFUSED) for r in rcpts)
    return QueuedMessage(qid, "deferred", arrival, 100, sender, recipients)


def test_trips_ignore_mail_held_back_only_by_min_messages() -> None:
    held = {("ionos", "min_age"): 2, ("gmx", "min_messages"): 1, ("web", "quota"): 1}
    assert trips({"ionos": 1}, held, "min_messages") == {"ionos": 3, "web": 1}


def test_stuck_domains_and_probe_target_come_from_the_providers_deferred_mail() -> None:
    messages = [
        message("A1", 10, "old@example.com", "x@kunde1.de", "y@elsewhere.de"),
        message("A2", 20, "new@example.com", "z@kunde2.de"),
    ]
    ionos = Classification("ionos", reason_matched="invalid sender domain")
    classes = {"A1": (ionos, Classification(None)), "A2": (ionos,)}
    assert stuck_domains(messages, classes, ["ionos"]) == {
        "ionos": {"kunde1.de": STUCK, "kunde2.de": STUCK}
    }
    assert probe_targets(messages, classes, ["ionos"]) == {
        "ionos": {
            "host": "mx00.kundenserver.de",
            "address": "212.227.15.41",
            "sender": "new@example.com",
            "recipient": "z@kunde2.de",
        }
    }
    assert probe_targets(messages, classes, ["gmx"]) == {}
    # A deferral that is not one of the provider's reasons (the relay's own 451) is no target.
    other = {"A1": classes["A1"], "A2": (Classification("ionos"),)}
    assert probe_targets(messages, other, ["ionos"])["ionos"]["sender"] == "old@example.com"


# --- the relay's parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("<alice@example.com> SIZE=10", "alice@example.com"),
        ("<>", ""),
        ('<"john doe"@example.com>', "john doe@example.com"),
        ('<"a>b"@example.com>', "a>b@example.com"),
        ("<@relay.example:bob@example.com>", "bob@example.com"),
        ("<postmaster>", "postmaster"),
    ],
)
def test_parse_path(text: str, address: str) -> None:
    assert parse_path(text)[0] == address


def test_parse_path_refuses_garbage() -> None:
    with pytest.raises(ProtocolError, match=r"^451 4\.1\.7"):
        parse_path("alice@example.com")


@pytest.mark.parametrize("value", ["env=42+x", "rfc822;bob@kunde1.de", "ünï côdé", "a b=c"])
def test_xtext_round_trip(value: str) -> None:
    assert xtext_decode(xtext(value)) == value


def test_params_keep_values_and_refuse_unknown_keys() -> None:
    assert parse_params("ret=HDRS ENVID=Ab+2B", frozenset({"RET", "ENVID"})) == {
        "RET": "HDRS",
        "ENVID": "Ab+2B",
    }
    with pytest.raises(ProtocolError, match=r"^451 4\.5\.4"):
        parse_params("AUTH=<>", frozenset({"RET"}))


def test_envelope_of_a_transaction_keeps_everything_as_sent() -> None:
    data = (
        b"Received: from client (x [127.0.0.1])\r\n"
        b"\tby lab.test (Postfix) with ESMTP id 4AbC12345\r\n"
        b"\tfor <z@kunde2.de>; now\r\n"
        b"Subject: \xc3\xa4\r\n\r\n.dot\r\nbare\rcr\r\n"
    )
    tx = Transaction(
        "alice@example.com",
        {"BODY": "8BITMIME", "SMTPUTF8": "", "ENVID": "env 1", "RET": "HDRS"},
        [("z@kunde2.de", {"NOTIFY": "SUCCESS,FAILURE", "ORCPT": "rfc822;z@kunde2.de"})],
        data,
    )
    assert queue_id_of(data) == "4AbC12345"
    envelope = envelope_of(tx, "4AbC12345")
    assert envelope.content.replace(b"\n", b"\r\n") == data
    assert (envelope.envid, envelope.ret, envelope.body, envelope.smtputf8) == (
        "env 1",
        "HDRS",
        "8BITMIME",
        True,
    )
    assert envelope.recipients[0].notify == "SUCCESS,FAILURE"
    assert envelope.recipients[0].orig_rcpt == "rfc822;z@kunde2.de"
    assert queue_id_of(b"Subject: no received header\r\n") == "relay"


# --- config ------------------------------------------------------------------------------------


def test_route_is_off_without_its_table(tmp_path: Path) -> None:
    assert parse_config(tmp_path / "c.toml", base_config(tmp_path)).route is None


def test_route_defaults(tmp_path: Path) -> None:
    cfg = parse_config(tmp_path / "c.toml", base_config(tmp_path, extra="[route]\n")).route
    assert cfg is not None
    assert cfg.map == "hash:/var/lib/queue-rescue/route"
    assert cfg.database == Path("/var/lib/queue-rescue/route.db")
    assert cfg.relay_listen == ("inet", "127.0.0.1", 10026)
    assert (cfg.probe_interval, cfg.recover_after, cfg.probe_port) == (60.0, 3, 25)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('map = "texthash:/etc/x"', "route.map"),
        ('map = "hash:relative"', "route.map"),
        ('relay_listen = "0.0.0.0:10026"', "route.relay_listen"),
        ('relay_listen = "192.0.2.1:25"', "route.relay_listen"),
        ('relay_listen = "unix:relative.sock"', "route.relay_listen"),
        ("recover_after = 0", "route.recover_after"),
        ('probe_interval = "0.1s"', "route.probe_interval"),
        ("probe_every = 1", "route.probe_every"),
        ("probe_port = 70000", "route.probe_port"),
    ],
)
def test_route_mistakes_name_the_key(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tmp_path / "c.toml", base_config(tmp_path, extra=f"[route]\n{line}\n"))
    assert info.value.key == key


def test_route_accepts_a_unix_socket_and_ipv6_loopback(tmp_path: Path) -> None:
    for listen, want in (
        ("unix:/var/spool/postfix/private/qr", ("unix", "/var/spool/postfix/private/qr", 0)),
        ("[::1]:10026", ("inet", "::1", 10026)),
    ):
        text = base_config(tmp_path, extra=f'[route]\nrelay_listen = "{listen}"\n')
        cfg = parse_config(tmp_path / "c.toml", text).route
        assert cfg is not None and cfg.relay_listen == want


def test_mail_from_before_a_recovery_does_not_trip_the_breaker_again() -> None:
    ionos = Classification("ionos", reason_matched="invalid sender domain")
    messages = [message("A1", 100, "a@example.com", "x@kunde1.de")]
    other = [message("B1", 300, "b@example.com", "y@kunde1.de")]
    classes = {"A1": (ionos,), "B1": (Classification("ionos"),)}
    newest = newest_matching(messages + other, classes)
    assert newest == {"ionos": 100}  # B1's deferral is not one of the provider's reasons
    recovered = probed(tripped(ProviderRoute("ionos"), "x", 50), True, "ok", 200, recover_after=1)
    assert stale_trip(recovered, newest["ionos"])
    assert not stale_trip(recovered, 201)  # arrived after the recovery: trouble again
    assert not stale_trip(ProviderRoute("ionos"), 100)  # never changed: a first trip
    assert not stale_trip(recovered, None)


# --- the service's routing with a scripted probe ----------------------------------------------


def test_probes_bring_a_provider_back_and_empty_the_table(tmp_path: Path) -> None:
    postmap = Path("/usr/sbin/postmap")
    if not postmap.exists():
        pytest.skip("postmap is not installed (apt-get install postfix)")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "main.cf").write_text("")  # postmap -c wants a main.cf, no Postfix
    table = LookupTable("hash", tmp_path / "route", config_dir=tmp_path / "etc")
    store = RouteStore(tmp_path / "journal.sqlite3", clock=lambda: T0)
    store.save(tripped(ProviderRoute("ionos"), "deferred", T0))
    target = {
        "host": "mx00.kundenserver.de",
        "address": "192.0.2.7",
        "sender": "a@b.de",
        "recipient": "x@kunde1.de",
    }
    store.save_target("ionos", target)
    store.add_domains("ionos", {"kunde1.de": STUCK})
    answers = [
        fail("probe", "ionos", "421 no", "fix"),
        ok("probe", "ionos", "250"),
        ok("probe", "ionos", "250"),
    ]
    asked: list[ProbeTarget] = []

    async def scripted(probe_target: ProbeTarget) -> Result:
        asked.append(probe_target)
        return answers.pop(0)

    control = RouteControl(
        RouteConfig(recover_after=2),
        table=table,
        store=store,
        catalog=load_catalog(()),
        srs=SrsRewriter(domain="srs.example.net", secrets=["s" * 24], clock=lambda: T0),
        smarthosts=lambda: ((SmarthostConfig("relay1", "127.0.0.1"),), None),
        probe=scripted,
        clock=lambda: T0 + 60,
        transport=RELAY,
    )

    async def probes() -> None:
        control.refresh()
        assert table.query("kunde1.de") == RELAY
        await control.probe_once()  # refused
        await control.probe_once()  # accepted, 1 in a row
        assert store.routes()["ionos"].state == REROUTING
        assert table.query("kunde1.de") == RELAY
        await control.probe_once()  # accepted, 2 in a row: healthy

    asyncio.run(probes())
    route = store.routes()["ionos"]
    assert (route.state, route.changed_at) == (HEALTHY, T0 + 60)
    assert route.reason.startswith("2 probes in a row accepted")
    assert table.query("kunde1.de") is None
    assert store.domains() == {}
    assert asked == [ProbeTarget(provider="ionos", **target)] * 3
    assert answers == []
    # Healthy: no more probes.
    asyncio.run(control.probe_once())
    assert len(asked) == 3
    store.close()


def test_a_journal_error_after_the_smarthost_accepted_still_answers_250(
    tmp_path: Path,
) -> None:
    # The smarthost has the message: without the 250 Postfix would send it again.
    class FullJournal(RouteStore):
        def relay_ended(self, row: int, state: str, smarthost: str | None, reply: str) -> None:
            raise JournalError("journal: database or disk is full")

    class Pool:
        sent = 0

        async def deliver(self, *args: object, **kwargs: object) -> Accepted:
            Pool.sent += 1
            return Accepted("relay1", "250 2.0.0 queued as XYZ")

    store = FullJournal(tmp_path / "journal.sqlite3")
    relay = Relay(
        srs=SrsRewriter(domain="srs.example.net", secrets=["s3cret-s3cret-s3cret"]),
        store=store,
        smarthosts=lambda: ((SmarthostConfig("relay1", "127.0.0.1"),), None),
        dispatcher=lambda hosts: Pool(),  # type: ignore[arg-type,return-value]
        provider_of=lambda domain: "ionos",
        report=lambda outcome: None,
    )
    tx = Transaction(
        sender="a@example.com", recipients=[("b@kunde.de", {})], data=b"Subject: x\r\n\r\nhi\r\n"
    )

    answer = asyncio.run(relay(tx))

    assert answer.code == 250 and Pool.sent == 1
