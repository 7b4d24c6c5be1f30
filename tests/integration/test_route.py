"""Routing new mail around a failing provider, with the lab Postfix reading the service's table.

The world's Postfix names the service's table first in transport_maps (then the lab's
inline map). The fake provider refuses kunde*.test mail like 1&1; the service trips the
provider's breaker, lists its domains, and Postfix hands new mail to the relay endpoint.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescue.postfix.lookuptable import LookupTable
from tests.integration.rescue_cli import Rescue
from tests.integration.test_service import SENDER, Service, kunde, running, service_rescue
from tests.integration.world import ACCEPTING_DOMAIN, CUSTOMER_DOMAINS, OTHER_DOMAIN, World, body
from tests.lab import wait_for
from tests.lab.faults import Fault, Received
from tests.lab.postfix import PostfixLab, free_port, inline_map, processes_in

# trivial-rewrite looks at its tables every 10 seconds (Postfix's trivial-rewrite.c); a
# busy machine adds its own delay.
TABLE_SEEN = 40.0


@pytest.fixture
def table(routed: Path, w: World) -> Iterator[Path]:
    """The table; after the test it is empty again, and Postfix has seen it so (a test's
    last table, or a killed service's, would route the next test's mail to a relay that
    is gone)."""
    yield routed
    lookup = LookupTable("hash", routed, command_dir=w.lab.command_dir, config_dir=w.lab.config_dir)
    since = log_size(w.lab)
    lookup.write({})
    wait_table_seen(w.lab, routed, since)


def rewrite_running(lab: PostfixLab) -> bool:
    """Whether the lab runs a trivial-rewrite (it exits when idle, and reads the table
    afresh when it starts again)."""
    rewriting = [p for p in processes_in(lab.queue_dir) if command_name(p) == "trivial-rewrite"]
    return bool(rewriting)


@pytest.fixture(scope="module")
def routed(world: World) -> Iterator[Path]:
    """The service's table, named first in the world Postfix's transport_maps."""
    path = world.root / "route" / "table"
    path.parent.mkdir()
    path.parent.chmod(0o755)
    transports = {d: world.provider.next_hop for d in [*CUSTOMER_DOMAINS, OTHER_DOMAIN]}
    transports[ACCEPTING_DOMAIN] = world.accepting.next_hop
    # The table must exist before Postfix reads main.cf: `route init` makes it.
    init = route_rescue(world, "init", path).run("route", "init")
    assert init.code == 0, init.stderr
    assert init.stdout.strip() == f"hash:{path}: created, empty"
    world.lab.postconf(transport_maps=f"hash:{path}, {inline_map(transports)}")
    yield path
    world.lab.restore_config()


def route_rescue(w: World, name: str, table: Path, *, service: str = "", **route: object) -> Rescue:
    settings: dict[str, object] = {
        "map": f"hash:{table}",
        "relay_listen": f"127.0.0.1:{free_port()}",
        "probe_interval": "1s",
        "recover_after": 2,
        "probe_port": w.provider.port,
        "probe_timeout": "5s",
    }
    settings.update(route)
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in settings.items())
    return service_rescue(w, name, extra=f"{service}\n[route]\n{lines}")


def relay_port(rescue: Rescue) -> int:
    match = re.search(r'relay_listen = "127\.0\.0\.1:(\d+)"', rescue.config_path.read_text())
    assert match
    return int(match.group(1))


def command_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def log_size(lab: PostfixLab) -> int:
    return len(lab.log())


def wait_table_seen(lab: PostfixLab, table: Path, since: int) -> None:
    """Until Postfix uses the table written after log offset `since`: its trivial-rewrite
    has restarted for it, or none runs (the next one to start reads it afresh)."""
    # "trivial-rewrite[PID]: table hash:PATH(0,lock|...) has changed -- restarting"
    seen = re.compile(rf"table hash:{re.escape(str(table))}\(.*\) has changed -- restarting")
    lab.wait_for(
        lambda: seen.search(lab.log()[since:]) is not None or not rewrite_running(lab),
        TABLE_SEEN,
        "Postfix to see the new table",
    )


def postfix_lines(lab: PostfixLab, queue_id: str) -> list[str]:
    return [line for line in lab.log().splitlines() if f" {queue_id}: " in line]


def entries(rescue: Rescue) -> dict[str, dict[str, str]]:
    shown = rescue.run("route", "show", "--json")
    assert shown.code == 0, shown.stderr
    return {e["domain"]: e for e in shown.lines if "domain" in e}


def states(rescue: Rescue) -> dict[str, dict[str, object]]:
    shown = rescue.run("route", "show", "--json")
    return {p["provider"]: p for p in shown.lines[-1]["providers"]}


def srs_of(rescue: Rescue, sender: str) -> str:
    return rescue.run("srs", "forward", sender).stdout.strip()


def with_subject(received: list[Received], n: int) -> list[Received]:
    return [r for r in received if f"Subject: order {n}\r\n".encode() in r.content]


def postmap_query(lab: PostfixLab, table: Path, key: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(lab.command_dir / "postmap"), "-c", str(lab.config_dir), "-q", key, f"hash:{table}"],
        capture_output=True,
        text=True,
        check=False,
    )


def trip(w: World, table: Path, svc: Service, *numbers: int) -> int:
    """With the backlog deferred before the start: wait until the provider is rerouted
    and Postfix uses the new table; the Postfix log's offset from before."""
    since = log_size(w.lab)
    svc.notify.wait_for("READY=1")
    svc.wait_log("provider ionos: healthy -> rerouting")
    w.smarthost.wait_for_count(len(numbers))  # the backlog, flushed as before
    wait_table_seen(w.lab, table, since)
    return since


@pytest.mark.postfix
def test_new_mail_takes_the_route_and_goes_back_once_the_provider_recovers(
    w: World, table: Path, tmp_path: Path
) -> None:
    metrics = free_port()
    rescue = route_rescue(w, "flow", table, service=f'metrics_listen = "127.0.0.1:{metrics}"')
    w.lab.submit_many(kunde(n) for n in (1, 2))
    w.lab.wait_deferred(2)
    with running(rescue, tmp_path) as svc:
        trip(w, table, svc, 1, 2)
        port = relay_port(rescue)
        listed = entries(rescue)
        assert {"kunde1.test", "kunde2.test"} <= set(listed)
        assert listed["kunde1.test"]["transport"] == f"smtp:[127.0.0.1]:{port}"
        assert listed["kunde1.test"]["why"] == "ionos rerouting: stuck mail"
        assert states(rescue)["ionos"]["state"] == "rerouting"
        shown = rescue.run("route", "show").stdout
        assert f"Table hash:{table}: {len(listed)} entries" in shown
        assert f"kunde1.test\tsmtp:[127.0.0.1]:{port}\tionos rerouting: stuck mail" in shown
        assert "ionos\trerouting\t2 deferred messages match its reroute reasons\t" in shown
        assert postmap_query(w.lab, table, "kunde2.test").stdout.strip() == (
            f"smtp:[127.0.0.1]:{port}"
        )

        # New mail to a rerouted domain: straight to the relay, on to the smarthost.
        new = w.lab.submit(
            SENDER,
            ["u1@kunde1.test"],
            body(101, b"caf\xc3\xa9\n"),
            dsn_notify="SUCCESS,FAILURE",
            dsn_orcpt="rfc822;U1@kunde1.test",
            envid="env-101",
            ret="HDRS",
        )
        w.lab.wait_for(lambda: len(w.smarthost.received) == 3, what="the new mail relayed")
        w.lab.wait_empty()
        [mail] = with_subject(w.smarthost.received, 101)
        assert mail.mail_from == srs_of(rescue, SENDER)
        assert mail.rcpt_tos == ("u1@kunde1.test",)
        assert mail.content.endswith(b"\r\nHello 101.\r\ncaf\xc3\xa9\r\n")
        assert {"BODY=8BITMIME", "RET=HDRS", "ENVID=env-101"} <= set(mail.mail_options)
        assert mail.rcpt_options == (("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;U1@kunde1.test"),)
        lines = postfix_lines(w.lab, new)
        assert any(f"relay=127.0.0.1[127.0.0.1]:{port}" in x and "status=sent" in x for x in lines)
        assert not [x for x in lines if f":{w.provider.port}," in x], lines
        svc.wait_log(f"{new}: relayed: provider ionos, to u1@kunde1.test via relay1: 250")
        svc.notify.wait_for("STATUS=", after=0)
        assert any("route: ionos rerouting" in m for m in svc.notify.received)
        status = rescue.run("status", "--json")
        route = status.summary["route"]
        assert route["relayed"] == 1
        assert [(p["provider"], p["state"]) for p in route["providers"]] == [("ionos", "rerouting")]
        assert "Route: ionos rerouting since " in rescue.run("status").stdout
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10)
        text = scraped.read().decode()
        assert 'queue_rescue_route_state{provider="ionos",state="rerouting"} 1.0' in text
        assert 'queue_rescue_route_state{provider="ionos",state="healthy"} 0.0' in text
        assert (
            'queue_rescue_relayed_messages_total{provider="ionos",smarthost="relay1"} 1.0' in text
        )
        checked = rescue.run("check").stdout
        assert f"ok    transport_maps: hash:{table} comes first" in checked
        assert f"ok    route table: postmap -q answers from hash:{table}" in checked
        assert f"ok    relay endpoint: 127.0.0.1:{port} answers: 220 " in checked

        # The provider takes mail again: probes bring it back, its domains leave the table.
        since = log_size(w.lab)
        w.provider.accept_all()
        svc.wait_log("provider ionos: rerouting -> healthy: 2 probes in a row accepted")
        assert entries(rescue) == {}
        assert states(rescue)["ionos"]["state"] == "healthy"
        wait_table_seen(w.lab, table, since)
        # Postfix's queue manager still takes the provider for dead after its 421s (until
        # its own backoff ends); a flush makes it forget that, as it does in the lab.
        w.lab.flush()
        # Another address: Postfix's clients keep the last address they resolved, with
        # its old route, until they resolve another (resolve_clnt.c's one-entry cache).
        later = w.lab.submit(SENDER, ["u6@kunde1.test"], body(102))
        w.lab.wait_for(lambda: len(w.provider.received) == 1, what="mail at the provider")
        w.lab.wait_empty()
        assert len(with_subject(w.provider.received, 102)) == 1
        assert with_subject(w.smarthost.received, 102) == []
        assert any(f":{w.provider.port}," in x for x in postfix_lines(w.lab, later))
        # Exactly once: one copy of each message at the smarthost.
        assert sorted(len(with_subject(w.smarthost.received, n)) for n in (1, 2, 101)) == [1, 1, 1]
        assert svc.terminate() == 0
    assert svc.log().count("provider ionos: healthy -> rerouting") == 1


@pytest.mark.postfix
@pytest.mark.parametrize(
    "fault",
    [
        Fault("MAIL", "451 4.3.0 try again later", times=None),
        Fault("DATA", action="hang", times=None),
    ],
    ids=["refusing", "hanging"],
)
def test_a_smarthost_that_refuses_or_hangs_leaves_the_mail_deferred_in_postfix(
    w: World, table: Path, tmp_path: Path, fault: Fault
) -> None:
    rescue = route_rescue(w, f"fault-{fault.stage}", table)
    w.lab.submit_many([kunde(1)])
    w.lab.wait_deferred(1)
    with running(rescue, tmp_path) as svc:
        trip(w, table, svc, 1)
        w.smarthost.script(fault)
        new = w.lab.submit(SENDER, ["u3@kunde1.test"], body(103))
        [deferred] = w.lab.wait_deferred(1, timeout=60)
        assert deferred["queue_id"] == new
        reason = deferred["recipients"][0]["delay_reason"]
        assert "queue-rescue relay" in reason and " 451 " in reason
        svc.wait_log(f"{new}: relay refused (Postfix keeps it): provider ionos")

        # The smarthost is back: Postfix's next try goes through, once.
        w.smarthost.clear_faults()
        w.lab.flush()
        w.lab.wait_empty(timeout=60)
        assert len(with_subject(w.smarthost.received, 103)) == 1
        assert svc.terminate() == 0


@pytest.mark.postfix
def test_sigkill_mid_relay_postfix_tries_again_and_the_doubt_is_counted(
    w: World, table: Path, tmp_path: Path
) -> None:
    rescue = route_rescue(w, "kill", table)
    w.lab.submit_many([kunde(1)])
    w.lab.wait_deferred(1)
    with running(rescue, tmp_path / "first") as svc:
        trip(w, table, svc, 1)
        # The smarthost takes the text, then keeps its answer: the end-of-data window.
        w.smarthost.script(Fault("EOD", action="hang", times=1))
        new = w.lab.submit(SENDER, ["u4@kunde1.test"], body(104))
        w.smarthost.wait_for_count(2)
        os.killpg(svc.proc.pid, signal.SIGKILL)
        svc.proc.wait(timeout=30)
    [deferred] = w.lab.wait_deferred(1, timeout=60)
    assert deferred["queue_id"] == new
    # The table still lists the domain (nothing emptied it); Postfix keeps accepting mail.
    assert "kunde1.test" in entries(rescue)
    other = w.lab.submit(SENDER, [f"x@{ACCEPTING_DOMAIN}"], body(7))

    with running(rescue, tmp_path / "second") as svc:
        svc.notify.wait_for("READY=1")
        svc.wait_log("relay to u4@kunde1.test was cut off before Postfix heard the answer")
        w.lab.flush()
        w.lab.wait_empty(timeout=60)
        assert svc.terminate() == 0
    # Postfix sent it again: two copies, the second one counted as may-be-duplicated.
    assert len(with_subject(w.smarthost.received, 104)) == 2
    assert [r.rcpt_tos for r in w.accepting.received] == [(f"x@{ACCEPTING_DOMAIN}",)]
    assert other not in w.lab.queue_ids()
    route = rescue.run("status", "--json").summary["route"]
    assert (route["relayed"], route["relay_uncertain"]) == (1, 1)


@pytest.mark.postfix
def test_sigterm_empties_the_table_and_postfix_routes_as_before(
    w: World, table: Path, tmp_path: Path
) -> None:
    rescue = route_rescue(w, "term", table)
    w.lab.submit_many([kunde(1)])
    w.lab.wait_deferred(1)
    with running(rescue, tmp_path) as svc:
        trip(w, table, svc, 1)
        assert "kunde1.test" in entries(rescue)
        since = log_size(w.lab)
        assert svc.terminate() == 0
        svc.wait_log(f"route table hash:{table} emptied")
    assert entries(rescue) == {}
    assert postmap_query(w.lab, table, "kunde1.test").returncode == 1
    # The state survives in the journal for the next start; Postfix sees the empty table.
    assert states(rescue)["ionos"]["state"] == "rerouting"
    wait_table_seen(w.lab, table, since)
    # Without the service Postfix still accepts mail, and hands it to the provider again.
    new = w.lab.submit(SENDER, ["u5@kunde1.test"], body(105))
    [deferred] = w.lab.wait_deferred(1, timeout=60)
    assert deferred["queue_id"] == new
    assert "invalid sender domain" in deferred["recipients"][0]["delay_reason"]
    assert any(f":{w.provider.port}," in x for x in postfix_lines(w.lab, new))

    # The next start rebuilds the table from the journal before its first cycle.
    with running(rescue, tmp_path / "again") as svc:
        svc.wait_log("provider ionos: rerouting (from the journal)")
        assert "kunde1.test" in entries(rescue)
        assert svc.terminate() == 0


@pytest.mark.postfix
def test_route_set_overrides_until_auto_and_shows_why(
    w: World, table: Path, tmp_path: Path
) -> None:
    rescue = route_rescue(w, "override", table)
    rescue.providers += '\n[[provider]]\nname = "ionos"\ndomains = ["kunde9.test"]\n'
    rescue.providers = rescue.providers.replace(
        '[[provider]]\nname = "ionos"\nreroute = "auto"\n', ""
    ).replace('domains = ["kunde9.test"]\n', 'domains = ["kunde9.test"]\nreroute = "auto"\n')
    done = rescue.run("route", "set", "ionos", "rerouting")
    assert done.code == 0, done.stderr
    assert done.stdout.strip() == (
        "ionos: rerouting (set by hand; by itself it would be healthy);"
        " the service applies it when it starts"
    )
    bad = rescue.run("route", "set", "nosuch", "rerouting")
    assert bad.code == 2 and "no provider 'nosuch'" in bad.stderr
    with running(rescue, tmp_path) as svc:
        svc.notify.wait_for("READY=1")
        wait_for(lambda: "kunde9.test" in entries(rescue), 30, "the configured domain listed")
        assert entries(rescue)["kunde9.test"]["why"] == (
            "ionos rerouting (set by hand; by itself it would be healthy): configured domain"
        )
        cleared = rescue.run("route", "set", "ionos", "auto")
        assert cleared.stdout.strip() == (
            "ionos: healthy; the running service applies it at its next cycle"
        )
        # Cleared, the provider is what the breaker says by itself: it never tripped,
        # so the domain leaves the table (it used to stay, waiting for probes that
        # need refused mail, which no longer went to the provider).
        wait_for(lambda: "kunde9.test" not in entries(rescue), 30, "the domain gone")
        assert states(rescue)["ionos"]["state"] == "healthy"
        assert svc.terminate() == 0
    rescue.run("route", "set", "ionos", "healthy")


@pytest.mark.postfix
def test_a_full_smarthost_quota_takes_the_domains_out_of_the_table(
    w: World, table: Path, tmp_path: Path
) -> None:
    rescue = route_rescue(w, "quota", table)
    rescue.smarthosts[0]["max_per_hour"] = 1
    w.lab.submit_many([kunde(1)])
    w.lab.wait_deferred(1)
    with running(rescue, tmp_path) as svc:
        svc.notify.wait_for("READY=1")
        svc.wait_log("provider ionos: healthy -> rerouting")
        svc.wait_log("smarthost quota reached (relay1 took 1 in the last hour")
        svc.wait_log("rerouted domains leave the table")
        assert entries(rescue) == {}
        assert states(rescue)["ionos"]["state"] == "rerouting"
        svc.notify.next_cycle()
        [*_, last] = [m for m in svc.notify.received if "STATUS=last cycle" in m]
        assert "route: ionos rerouting, 0 domains (paused: relay1 took 1 in the last hour" in last
        assert svc.terminate() == 0
    assert len(w.smarthost.received) == 1


@pytest.mark.postfix
def test_check_names_what_is_wrong_on_postfixs_side(w: World, table: Path) -> None:
    missing = w.root / "route" / "elsewhere"
    rescue = route_rescue(w, "check", missing)
    out = rescue.run("check")
    assert out.code == 1
    assert f"FAIL  route table: {missing}.db is missing" in out.stdout
    assert f"FAIL  transport_maps: transport_maps = hash:{table}, inline:" in out.stdout
    assert f"name hash:{missing} first" in out.stdout
    assert "ok    relay endpoint: 127.0.0.1:" in out.stdout
    assert "not listening yet" in out.stdout
    # route init: creates the table once, empties it only when asked.
    assert rescue.run("route", "init").stdout.strip() == f"hash:{missing}: created, empty"
    assert rescue.run("route", "init").stdout.strip() == f"hash:{missing}: exists"
    lookup = LookupTable(
        "hash", missing, command_dir=w.lab.command_dir, config_dir=w.lab.config_dir
    )
    lookup.write({"kunde1.test": "smtp:[127.0.0.1]:1"})
    assert rescue.run("route", "init").stdout.strip() == f"hash:{missing}: exists"
    assert lookup.query("kunde1.test") == "smtp:[127.0.0.1]:1"
    assert rescue.run("route", "init", "--empty").stdout.strip() == f"hash:{missing}: empty"
    assert lookup.query("kunde1.test") is None
    # A unix socket the chrooted lmtp client could not see (master.cf read, no reload).
    postconf = [str(w.lab.command_dir / "postconf"), "-c", str(w.lab.config_dir)]
    subprocess.run([*postconf, "-F", "lmtp/unix/chroot=y"], check=True)
    try:
        outside = route_rescue(w, "chroot", table, relay_listen="unix:/run/queue-rescue-test.sock")
        told = outside.run("check").stdout
    finally:
        subprocess.run([*postconf, "-F", "lmtp/unix/chroot=n"], check=True)
    assert (
        f"FAIL  relay endpoint: Postfix's lmtp client runs chrooted in {w.lab.queue_dir}, "
        "where /run/queue-rescue-test.sock cannot be seen" in told
    )
    plain = service_rescue(w, "plain")
    assert plain.run("route", "init").stdout.strip() == (
        "no [route] table in the configuration: nothing to do"
    )
    shown = plain.run("route", "show")
    assert shown.code == 2 and "route: no [route] table: routing is off" in shown.stderr


@pytest.mark.postfix
def test_lmtp_on_a_unix_socket_in_the_queue_directory(
    w: World, table: Path, tmp_path: Path
) -> None:
    sock = w.lab.queue_dir / "private" / "queue-rescue-test"
    rescue = route_rescue(w, "lmtp", table, relay_listen=f"unix:{sock}")
    w.lab.submit_many([kunde(1)])
    w.lab.wait_deferred(1)
    with running(rescue, tmp_path) as svc:
        trip(w, table, svc, 1)
        assert entries(rescue)["kunde1.test"]["transport"] == "lmtp:unix:private/queue-rescue-test"
        new = w.lab.submit(SENDER, ["a@kunde1.test", "b@kunde1.test"], body(106))
        w.lab.wait_for(lambda: len(w.smarthost.received) == 2, what="the LMTP mail relayed")
        w.lab.wait_empty()
        [mail] = with_subject(w.smarthost.received, 106)
        assert sorted(mail.rcpt_tos) == ["a@kunde1.test", "b@kunde1.test"]
        assert mail.mail_from == srs_of(rescue, SENDER)
        sent = [x for x in postfix_lines(w.lab, new) if "status=sent" in x]
        assert len(sent) == 2 and all("private/queue-rescue-test" in x for x in sent)
        assert svc.terminate() == 0
