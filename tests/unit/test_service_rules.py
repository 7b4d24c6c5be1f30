"""The service's decisions without Postfix: auto rules, smarthost quotas, its config,
sd_notify and the journal counts the quotas come from."""

from __future__ import annotations

import socket
import threading
from collections.abc import Collection, Sequence
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from rescue.classify.catalog import Provider, load_catalog
from rescue.config import ConfigError, SmarthostConfig, parse_config
from rescue.journal.store import ACCEPTED, DELETED, HELD, RELEASED, SENDING, Journal
from rescue.model import Classification, QueuedMessage, Recipient
from rescue.service.autorules import (
    BACKOFF,
    MAX_PER_CYCLE,
    MIN_AGE,
    MIN_MESSAGES,
    QUOTA,
    UNKNOWN_PROVIDER,
    choose_auto,
    remaining,
    smarthost_quota,
    within_budget,
)
from rescue.service.metrics import Metrics
from rescue.service.sdnotify import Notifier

NOW = 1_700_000_000.0
REASON = "421 invalid sender domain"
MATCHED = "invalid sender domain"
IONOS = Provider(name="ionos", label="IONOS", reroute="auto")
GMX = Provider(name="gmx", label="GMX", reroute="auto")
MANUAL = Provider(name="web", label="WEB.DE")  # reroute = "manual"


class Queue:
    """A made-up queue listing with a classification per recipient."""

    def __init__(self) -> None:
        self.messages: list[QueuedMessage] = []
        self.classes: dict[str, tuple[Classification, ...]] = {}

    def add(
        self,
        *providers: str | None,
        age: float = 3600,
        matched: str | None = MATCHED,
        queue: str = "deferred",
    ) -> str:
        qid = f"Q{len(self.messages):05d}"
        rcpts = tuple(Recipient(f"u{i}@d{i}.test", REASON) for i in range(len(providers)))
        self.messages.append(
            QueuedMessage(qid, queue, int(NOW - age), 1000, "a@example.com", rcpts)
        )
        self.classes[qid] = tuple(
            Classification(p, reason_matched=matched if p else None) for p in providers
        )
        return qid

    def choose(
        self, providers: Sequence[Provider], backoff: Collection[str] = ()
    ) -> tuple[list[str], dict[tuple[str, str], int]]:
        choice = choose_auto(self.messages, self.classes, providers, NOW, backoff=backoff)
        return [s.message.queue_id for s in choice.selection], dict(choice.held_back)


# --- auto rules -----------------------------------------------------------------------------


def test_only_auto_providers_with_a_matching_reason_are_taken() -> None:
    q = Queue()
    taken = q.add("ionos")
    q.add("web")  # manual: only `flush` takes it
    q.add("ionos", matched=None)  # deferred for a reason rerouting does not help
    q.add(None)  # no known provider
    q.add("ionos", queue="hold")  # someone put it on hold
    q.add("ionos", queue="active")  # Postfix is delivering it
    assert q.choose([IONOS, MANUAL]) == ([taken], {})


def test_oldest_first_across_providers() -> None:
    q = Queue()
    young = q.add("ionos", age=60)
    old = q.add("gmx", age=7200)
    middle = q.add("ionos", age=600)
    assert q.choose([IONOS, GMX])[0] == [old, middle, young]


def test_min_age_counts_from_arrival() -> None:
    q = Queue()
    old = q.add("ionos", age=601)
    q.add("ionos", age=599)
    provider = Provider(name="ionos", label="IONOS", reroute="auto", min_age=600)
    assert q.choose([provider]) == ([old], {("ionos", MIN_AGE): 1})


def test_min_messages_counts_every_matching_deferral_young_or_old() -> None:
    provider = Provider(name="ionos", label="IONOS", reroute="auto", min_messages=3, min_age=60)
    q = Queue()
    q.add("ionos")
    q.add("ionos", matched=None)  # does not count: not a matching reason
    q.add("web")
    assert q.choose([provider]) == ([], {("ionos", MIN_MESSAGES): 1})
    q.add("ionos", age=10)
    assert q.choose([provider]) == ([], {("ionos", MIN_MESSAGES): 2})
    q.add("ionos", age=10)  # three now: the old one goes, the young ones wait for min_age
    assert q.choose([provider]) == (["Q00000"], {("ionos", MIN_AGE): 2})


def test_max_per_cycle_keeps_the_oldest() -> None:
    provider = Provider(name="ionos", label="IONOS", reroute="auto", max_per_cycle=2)
    q = Queue()
    ids = [q.add("ionos", age=1000 - n) for n in range(5)]
    assert q.choose([provider]) == (ids[:2], {("ionos", MAX_PER_CYCLE): 3})


def test_messages_released_lately_wait() -> None:
    q = Queue()
    q.add("ionos")
    fresh = q.add("ionos")
    backoff = {q.messages[0].key}
    assert q.choose([IONOS], backoff=backoff) == ([fresh], {("ionos", BACKOFF): 1})


def test_a_message_for_two_auto_providers_is_taken_once() -> None:
    q = Queue()
    both = q.add("gmx", "ionos")
    ids, held = q.choose([IONOS, GMX])
    assert ids == [both] and held == {}
    choice = choose_auto(q.messages, q.classes, [IONOS, GMX], NOW)
    assert choice.selection[0].provider == "ionos"  # the first auto provider in the catalog


def test_deferred_counts_by_provider() -> None:
    q = Queue()
    q.add("ionos", "ionos", None)
    q.add("ionos")
    q.add("gmx", queue="hold")  # not deferred
    choice = choose_auto(q.messages, q.classes, [IONOS], NOW)
    assert choice.deferred == {"ionos": (2, 3), UNKNOWN_PROVIDER: (1, 1)}


@given(
    st.lists(
        st.tuples(st.sampled_from(["ionos", "gmx", "web", None]), st.integers(0, 7200)),
        max_size=40,
    ),
    st.integers(1, 5),
    st.one_of(st.none(), st.integers(1, 10)),
    st.one_of(st.none(), st.integers(0, 20)),
)
@example([("ionos", 0)] * 3, 2, 1, 0)
def test_every_matching_message_is_taken_or_held_back_once(
    listing: list[tuple[str | None, int]],
    min_messages: int,
    per_cycle: int | None,
    budget: int | None,
) -> None:
    providers = [
        Provider(
            name=name,
            label=name,
            reroute="auto",
            min_age=1800,
            min_messages=min_messages,
            max_per_cycle=per_cycle,
        )
        for name in ("ionos", "gmx")
    ]
    q = Queue()
    for provider, age in listing:
        q.add(provider, age=age)
    choice = within_budget(choose_auto(q.messages, q.classes, providers, NOW), budget)
    matching = sum(1 for p, _ in listing if p in ("ionos", "gmx"))
    assert len(choice.selection) + sum(choice.held_back.values()) == matching
    assert budget is None or len(choice.selection) <= budget
    for provider in providers:
        mine = [s for s in choice.selection if s.provider == provider.name]
        assert per_cycle is None or len(mine) <= per_cycle
        assert all(NOW - s.message.arrival_time >= 1800 for s in mine)
    arrivals = [s.message.arrival_time for s in choice.selection]
    assert arrivals == sorted(arrivals)


# --- smarthost quotas -----------------------------------------------------------------------


def host(name: str, hour: int | None = None, day: int | None = None) -> SmarthostConfig:
    return SmarthostConfig(name=name, host="127.0.0.1", max_per_hour=hour, max_per_day=day)


def test_remaining_is_the_tighter_limit() -> None:
    assert remaining(host("a"), 10**6, 10**6) is None
    assert remaining(host("a", hour=100), 40, 900) == 60
    assert remaining(host("a", hour=100, day=1000), 40, 990) == 10
    assert remaining(host("a", hour=100), 130, 0) == 0  # over (a flush by hand): none left


def test_without_limits_every_smarthost_and_no_budget() -> None:
    quota = smarthost_quota([host("a"), host("b")], {}, {}, demand=500)
    assert [h.name for h in quota.smarthosts] == ["a", "b"]
    assert quota.budget is None and quota.full == ()


def test_a_full_primary_sits_out_and_the_next_sets_the_budget() -> None:
    quota = smarthost_quota([host("a", hour=10), host("b", day=50)], {"a": 10}, {"a": 10}, 70)
    assert [h.name for h in quota.smarthosts] == ["b"]
    assert quota.budget == 50
    # Only the limit it has is named (it printed "max_per_day None").
    assert quota.full == ("a took 10 in the last hour (max_per_hour 10), 10 in the last day",)


def test_a_standby_needs_room_for_the_whole_cycle() -> None:
    hosts = [host("a", hour=100), host("b", hour=30), host("c")]
    # The cycle sends at most 20: b (room 30) may take them all if a fails.
    quota = smarthost_quota(hosts, {"b": 0}, {}, demand=20)
    assert [h.name for h in quota.smarthosts] == ["a", "b", "c"]
    # 80 to send: b could be handed all 80, more than its 30.
    quota = smarthost_quota(hosts, {}, {}, demand=80)
    assert [h.name for h in quota.smarthosts] == ["a", "c"] and quota.budget == 100
    # An unlimited primary: a standby with a limit joins when the demand fits it.
    quota = smarthost_quota([host("a"), host("b", hour=30)], {}, {}, demand=31)
    assert [h.name for h in quota.smarthosts] == ["a"] and quota.budget is None


def test_all_full_sends_nothing() -> None:
    quota = smarthost_quota([host("a", day=5)], {}, {"a": 5}, demand=3)
    assert quota.smarthosts == () and quota.budget == 0


def test_within_budget_keeps_the_oldest_and_says_why_the_rest_wait() -> None:
    q = Queue()
    ids = [q.add("ionos", age=1000 - n) for n in range(4)]
    q.add("gmx", age=10)
    choice = within_budget(choose_auto(q.messages, q.classes, [IONOS, GMX], NOW), 3)
    assert [s.message.queue_id for s in choice.selection] == ids[:3]
    assert choice.held_back == {("ionos", QUOTA): 1, ("gmx", QUOTA): 1}


# --- the journal's counts (what a restart keeps) --------------------------------------------


def sent(journal: Journal, key: str, smarthost: str) -> None:
    item = [(key, key.partition(":")[0])]
    journal.start([(item[0], "ionos", "a@example.com", ["b@kunde1.test"])])
    journal.record(item, HELD)
    journal.record(item, SENDING, smarthost=smarthost)
    journal.record(item, ACCEPTED, smarthost=smarthost, reply="250 ok")
    journal.record(item, DELETED)


def test_quota_counts_survive_a_restart(tmp_path: Path) -> None:
    clock = [NOW - 7200]  # two hours before the test's "now"
    journal = Journal(tmp_path / "journal.sqlite3", clock=lambda: clock[0])
    journal.begin_run("run", 1)
    sent(journal, "OLD:1:1", "relay1")
    clock[0] = NOW
    sent(journal, "A:1:1", "relay1")
    sent(journal, "B:1:1", "relay1")
    sent(journal, "C:1:1", "relay2")
    journal.close()
    again = Journal(tmp_path / "journal.sqlite3", clock=lambda: NOW)
    assert again.accepted_since(NOW - 3600) == {"relay1": 2, "relay2": 1}  # the last hour
    assert again.accepted_since(NOW - 86400) == {"relay1": 3, "relay2": 1}  # the last day
    assert again.accepted_since(NOW + 1) == {}


def test_release_reasons_and_history(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3", clock=lambda: NOW)
    journal.begin_run("run", 1)
    sent(journal, "A:1:1", "relay1")
    item = [("B:1:1", "B")]
    journal.start([(item[0], "ionos", "a@example.com", ["c@kunde2.test"])])
    journal.record(item, SENDING, smarthost="relay1")
    journal.record(item, RELEASED, detail="relay1 refused at MAIL: 550 no")
    assert journal.released_since(NOW) == {"B:1:1"}
    assert journal.released_since(NOW + 1) == set()
    events = journal.history(NOW, [ACCEPTED, RELEASED])
    assert [(e.queue_id, e.state) for e in events] == [("A", ACCEPTED), ("B", RELEASED)]
    assert events[0].reply == "250 ok" and events[0].command == "run"
    assert events[1].detail == "relay1 refused at MAIL: 550 no"
    assert events[1].recipients == ("c@kunde2.test",)
    run = journal.last_run("run")
    assert run is not None and run.pid == 1 and run.ended is None


# --- the [service] table and smarthost limits -----------------------------------------------


def config_text(tmp_path: Path, extra: str = "", smarthost: str = "") -> str:
    secret = tmp_path / "srs-secrets"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    return (
        f'[srs]\ndomain = "srs.example.net"\nsecret_file = "{secret}"\n'
        f'[[smarthost]]\nname = "relay1"\nhost = "127.0.0.1"\ntls = "none"\n{smarthost}\n'
        f"{extra}\n"
    )


def test_service_defaults(tmp_path: Path) -> None:
    cfg = parse_config(tmp_path / "c.toml", config_text(tmp_path))
    assert cfg.service.interval == 60.0 and cfg.service.metrics_listen is None
    assert cfg.service.stop_timeout == 20.0
    assert cfg.smarthosts[0].max_per_hour is None and cfg.smarthosts[0].max_per_day is None


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9465", ("127.0.0.1", 9465)),
        ("[::1]:9465", ("::1", 9465)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_metrics_listen(tmp_path: Path, listen: str, expected: tuple[str, int]) -> None:
    extra = f'[service]\ninterval = "2m"\nmetrics_listen = "{listen}"'
    cfg = parse_config(tmp_path / "c.toml", config_text(tmp_path, extra))
    assert cfg.service.metrics_listen == expected and cfg.service.interval == 120.0


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ('[service]\nmetrics_listen = "9465"', "service.metrics_listen"),
        ('[service]\nmetrics_listen = "host:99999"', "service.metrics_listen"),
        ('[service]\ninterval = "500ms"', "service.interval"),
        ('[service]\ninterval = "soon"', "service.interval"),
        ("[service]\nintervall = 5", "service.intervall"),
        ('[service]\nstop_timeout = "0s"', "service.stop_timeout"),
        ('[service]\nstop_timeout = "2m"', "service.stop_timeout"),
    ],
)
def test_bad_service_values_name_the_key(tmp_path: Path, extra: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(tmp_path / "c.toml", config_text(tmp_path, extra))
    assert info.value.key == key


def test_smarthost_limits(tmp_path: Path) -> None:
    text = config_text(tmp_path, smarthost="max_per_hour = 100\nmax_per_day = 1000")
    cfg = parse_config(tmp_path / "c.toml", text)
    assert (cfg.smarthosts[0].max_per_hour, cfg.smarthosts[0].max_per_day) == (100, 1000)
    with pytest.raises(ConfigError) as info:
        parse_config(tmp_path / "c.toml", config_text(tmp_path, smarthost="max_per_day = 0"))
    assert info.value.key == "smarthost[0].max_per_day"


def test_a_systemd_credential_stands_in_for_its_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    copy = credentials / "srs-secrets"
    copy.write_text("from-the-credential\n")
    copy.chmod(0o400)  # as systemd makes it
    text = config_text(tmp_path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    assert parse_config(tmp_path / "c.toml", text).srs.secrets[0].value == "from-the-credential"
    copy.unlink()  # no such credential: the file the config names
    assert parse_config(tmp_path / "c.toml", text).srs.secrets[0].value == "s3cret"


def test_example_config_is_valid_with_its_files(tmp_path: Path) -> None:
    example = Path(__file__).parents[2] / "config.example.toml"
    text = example.read_text()
    for name in ("srs-secrets", "relay1.password"):
        secret = tmp_path / name
        secret.write_text("s3cret\n")
        secret.chmod(0o600)
        text = text.replace(f"/etc/queue-rescue/{name}", str(secret))
    cfg = parse_config(example, text)
    assert cfg.service.interval == 60.0
    assert cfg.providers[0].reroute == "manual"
    # Its [[provider]] changes no list of the built-in entry (init writes this file).
    builtin = load_catalog().by_name["ionos"]
    assert load_catalog(cfg.providers).by_name["ionos"] == builtin
    # Its [[provider]] changes no list of the built-in entry (init writes this file).
    builtin = load_catalog().by_name["ionos"]
    assert load_catalog(cfg.providers).by_name["ionos"] == builtin


# --- sd_notify and metrics ------------------------------------------------------------------


def test_notifier_sends_datagrams(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        notifier.ready("1 rerouted")
        notifier.watchdog()
        notifier.stopping("bye")
        got = [sock.recv(4096).decode() for _ in range(3)]
    assert got == ["READY=1\nSTATUS=1 rerouted", "WATCHDOG=1", "STOPPING=1\nSTATUS=bye"]


def test_notifier_never_blocks_when_systemd_stops_reading(tmp_path: Path) -> None:
    # A receiver that reads nothing: its queue fills after a few datagrams, and a
    # blocking send would hang here (and freeze the service) instead of returning.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "notify")})
        sent = threading.Thread(target=lambda: [notifier.status(f"{n}") for n in range(500)])
        sent.start()
        sent.join(timeout=60)  # generous: 500 non-blocking sends take milliseconds
        assert not sent.is_alive()
        sock.settimeout(5)
        assert sock.recv(4096) == b"STATUS=0"  # what fitted in the queue arrived


def test_notifier_abstract_socket_and_watchdog_interval() -> None:
    name = f"queue-rescue-test-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "30000000"})
        notifier.status("idle")
        assert sock.recv(4096) == b"STATUS=idle"
    assert notifier.watchdog_interval == 15.0
    # For another process (WATCHDOG_PID), or none at all: no pings.
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}).watchdog_interval is None
    quiet = Notifier({})
    assert quiet.watchdog_interval is None
    quiet.ready("nobody listens")  # no socket: nothing happens


def test_metrics_drop_providers_gone_from_the_queue() -> None:
    metrics = Metrics()
    metrics.deferred({"ionos": (3, 4), "gmx": (1, 1)})
    metrics.rerouted.labels("ionos", "relay1").inc()
    metrics.errors({"relay1": {"MAIL": 2}})
    metrics.deferred({"ionos": (1, 1)})
    text = generate_latest(metrics.registry).decode()
    assert 'queue_rescue_deferred_messages{provider="ionos"} 1.0' in text
    assert 'provider="gmx"' not in text
    assert 'queue_rescue_rerouted_messages_total{provider="ionos",smarthost="relay1"} 1.0' in text
    assert 'queue_rescue_smarthost_errors_total{kind="MAIL",smarthost="relay1"} 2.0' in text
