"""`queue-rescue run` as systemd runs it: a process of its own, a notify socket, signals.

Against the lab Postfix of world.py: the fake provider defers the kunde*.test mail like
1&1 does, partner.test is deferred too but at a provider nobody marked "auto".
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.rescue_cli import Rescue, smarthost_entry
from tests.integration.world import OTHER_DOMAIN, World, body
from tests.lab import wait_for
from tests.lab.faults import Fault
from tests.lab.smtpd import RecordingSmarthost
from tests.lab.submission import Submission
from tests.lab.system import free_port

INTERVAL = 1.0
# "Within two intervals" of the deferral, plus the test's own polling on a busy machine.
TWO_INTERVALS = 2 * INTERVAL + 1.0
UNIT = Path(__file__).parents[2] / "systemd" / "queue-rescue.service"
# The unit's TimeoutStopSec: after SIGTERM systemd would kill the service after this long.
TIMEOUT_STOP = float(re.findall(r"^TimeoutStopSec=(\d+)s$", UNIT.read_text(), re.M)[0])
# The unit's WatchdogSec in microseconds, shortened so that the test sees pings soon.
WATCHDOG_USEC = 1_000_000
SENDER = "alice@example.com"
AUTO_IONOS = '[[provider]]\nname = "ionos"\nreroute = "auto"\n'
# partner.test's MX, made a provider whose every deferral is rerouted.
AUTO_OTHER = (
    '[[provider]]\nname = "other"\nmx = ["mx.other-provider.test"]\nreasons = []\n'
    'reroute = "auto"\n'
)


class NotifySocket:
    """The datagram socket systemd listens on ($NOTIFY_SOCKET); keeps all it was told.

    Read all the time by a thread, as systemd does: a socket nobody reads fills up
    (net.unix.max_dgram_qlen, 10 by default) and the service's next sendto() blocks.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.received: list[str] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-socket", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                self.received.append(self.sock.recv(4096).decode())

    def wait_for(self, line: str, *, after: int = 0, timeout: float = 30) -> str:
        """The first datagram from number `after` on with a line that starts with `line`."""
        found: list[str] = []

        def seen() -> bool:
            for message in self.received[after:]:
                if any(field.startswith(line) for field in message.splitlines()):
                    found.append(message)
                    return True
            return False

        wait_for(seen, timeout, f"{line} from the service", lambda: str(self.received))
        return found[0]

    def next_cycle(self) -> None:
        """Wait until a cycle that started after now has ended (its STATUS says so)."""
        self.wait_for("STATUS=last cycle", after=len(self.received))  # the one under way
        self.wait_for("STATUS=last cycle", after=len(self.received))

    def close(self) -> None:
        self._closed.set()
        self._reader.join(timeout=5)
        self.sock.close()


@dataclass
class Service:
    proc: subprocess.Popen[str]
    notify: NotifySocket
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in the log", self.log)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def terminate(self) -> int:
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout=TIMEOUT_STOP)


def service_rescue(w: World, name: str, *, providers: str = AUTO_IONOS, extra: str = "") -> Rescue:
    rescue = w.rescue(name)
    rescue.providers = providers
    rescue.extra += f'\n[service]\ninterval = "{INTERVAL:g}s"\n{extra}'
    return rescue


@contextmanager
def running(rescue: Rescue, folder: Path, *options: str) -> Iterator[Service]:
    """`queue-rescue [OPTIONS] run` in its own process group, as systemd would start it."""
    folder.mkdir(parents=True, exist_ok=True)
    notify = NotifySocket(folder / "notify")
    log_path = folder / "service.log"
    env = dict(os.environ)
    env.pop("QUEUE_RESCUE_CONFIG", None)
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC=str(WATCHDOG_USEC))
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            rescue.command(*options, "run"),
            stdout=subprocess.DEVNULL,
            stderr=log,
            text=True,
            env=env,
            cwd=Path(__file__).parents[2],
            start_new_session=True,
        )
    try:
        yield Service(proc, notify, log_path)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        notify.close()


def kunde(n: int) -> Submission:
    return Submission(SENDER, (f"u{n}@kunde{n}.test",), body(n))


@pytest.mark.postfix
def test_service_reroutes_the_providers_deferrals_and_nothing_else(
    w: World, tmp_path: Path
) -> None:
    port = free_port()
    rescue = service_rescue(w, "svc", extra=f'metrics_listen = "127.0.0.1:{port}"\n')
    with running(rescue, tmp_path) as svc:
        assert svc.notify.wait_for("READY=1").startswith("READY=1\nSTATUS=last cycle")
        svc.notify.wait_for("WATCHDOG=1")

        started = time.monotonic()
        ids = w.lab.submit_many(kunde(n) for n in (1, 2, 3))
        other = w.lab.submit(SENDER, [f"boss@{OTHER_DOMAIN}"], body(9))
        received = w.smarthost.wait_for_count(3, timeout=TWO_INTERVALS)
        assert time.monotonic() - started <= TWO_INTERVALS
        assert sorted(r.rcpt_tos for r in received) == [(f"u{n}@kunde{n}.test",) for n in (1, 2, 3)]
        assert all(r.mail_from.startswith("SRS0=") for r in received)

        # The other destination stays with Postfix, cycle after cycle.
        svc.notify.next_cycle()
        assert [(m["queue_id"], m["queue_name"]) for m in w.lab.queue()] == [(other, "deferred")]
        assert len(w.smarthost.received) == 3
        # One line per action: queue id, provider, recipients, smarthost, reply.
        for qid, n in zip(ids, (1, 2, 3), strict=True):
            line = f"{qid}: rerouted: provider ionos, to u{n}@kunde{n}.test via relay1: 250"
            assert line in svc.log()
        assert len(re.findall(r": rerouted: ", svc.log())) == 3

        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        text = metrics.decode()
        assert (
            'queue_rescue_rerouted_messages_total{provider="ionos",smarthost="relay1"} 3.0' in text
        )
        assert 'queue_rescue_deferred_messages{provider="(unknown)"} 1.0' in text
        assert "queue_rescue_last_cycle_duration_seconds " in text

        # `status` reads the journal while the service holds the lock.
        status = rescue.run("status", "--json", "--since", "10m")
        assert status.code == 0, status.stderr
        rerouted = {o["queue_id"]: o for o in status.lines if o.get("action") == "rerouted"}
        assert set(rerouted) == set(ids)
        assert all(o["reply"].startswith("250") and o["by"] == "run" for o in rerouted.values())
        assert all(o["provider"] == "ionos" for o in rerouted.values())
        assert status.summary["rerouted"] == 3 and status.summary["service"]["running"]
        table = rescue.run("status")
        assert table.code == 0 and "Service: running" in table.stdout
        assert ids[0] in table.stdout

        # The provider takes mail again: new mail goes the normal way.
        w.provider.accept_all()
        w.lab.flush()
        w.provider.wait_for_count(1)  # the partner.test mail Postfix had deferred
        w.lab.submit_many([kunde(4)])
        got = w.provider.wait_for_count(2)
        assert ("u4@kunde4.test",) in [r.rcpt_tos for r in got]
        svc.notify.next_cycle()
        assert len(w.smarthost.received) == 3

        assert svc.terminate() == 0
        svc.notify.wait_for("STOPPING=1")
    assert w.lab.queue_ids("hold") == []
    after = rescue.run("status", "--json").summary["service"]
    assert not after["running"] and after["ended"] is not None


@pytest.mark.postfix
def test_sighup_keeps_a_broken_config_and_takes_a_good_one(w: World, tmp_path: Path) -> None:
    rescue = service_rescue(w, "hup")
    with running(rescue, tmp_path) as svc, draining(svc.notify):
        partner = w.lab.submit(SENDER, [f"boss@{OTHER_DOMAIN}"], body(1))

        rescue.config_path.write_text("[service\ninterval = ")
        svc.signal(signal.SIGHUP)
        svc.wait_log("reload failed, keeping the configuration in use")
        assert svc.proc.poll() is None
        w.lab.submit_many([kunde(2)])  # the old config still works
        assert w.smarthost.wait_for_count(1, timeout=TWO_INTERVALS)[0].rcpt_tos == (
            "u2@kunde2.test",
        )
        svc.notify.next_cycle()
        assert w.lab.queue_ids("deferred") == [partner]

        rescue.providers = AUTO_IONOS + AUTO_OTHER
        rescue.write_config()
        svc.signal(signal.SIGHUP)
        svc.wait_log(f"reloaded {rescue.config_path}")
        got = w.smarthost.wait_for_count(2, timeout=TWO_INTERVALS)
        assert (f"boss@{OTHER_DOMAIN}",) in [r.rcpt_tos for r in got]
        svc.wait_log(f"{partner}: rerouted: provider other, to boss@{OTHER_DOMAIN} via relay1")
        assert svc.terminate() == 0
    assert w.lab.queue() == []


@pytest.mark.postfix
def test_sigterm_gives_what_is_in_flight_back_to_postfix(w: World, tmp_path: Path) -> None:
    # The smarthost never answers DATA: the message stays in flight until we stop.
    w.smarthost.script(Fault("DATA", action="hang"))
    rescue = service_rescue(w, "term")
    with running(rescue, tmp_path, "--log-format", "json") as svc:
        svc.notify.wait_for("READY=1")
        [qid] = w.lab.submit_many([kunde(1)])
        w.lab.wait_for(lambda: w.lab.queue_ids("hold") == [qid], what="the message on hold")
        w.smarthost.wait_for(lambda: w.smarthost.transactions_attempted == 1)

        stopping = time.monotonic()
        assert svc.terminate() == 0
        # Abandoned, not waited for: the smarthost's 5s timeout had not run out.
        assert time.monotonic() - stopping < 5
        logged = [json.loads(line) for line in svc.log().splitlines()]
        [line] = [e for e in logged if e["message"].startswith(f"{qid}: released")]
        assert line["level"] == "info"
        assert "provider ionos, to u1@kunde1.test, via relay1: interrupted" in line["message"]
    assert [(m["queue_id"], m["queue_name"]) for m in w.lab.queue()] == [(qid, "deferred")]
    assert w.smarthost.received == []
    status = rescue.run("status", "--json")
    [released] = [o for o in status.lines if o.get("action") == "released"]
    assert released["queue_id"] == qid
    assert "interrupted" in released["reason"]
    assert released["recipients"] == ["u1@kunde1.test"]


@pytest.mark.postfix
def test_a_smarthost_quota_holds_back_also_across_a_restart(w: World, tmp_path: Path) -> None:
    rescue = service_rescue(w, "quota")
    rescue.smarthosts[0]["max_per_hour"] = 2
    ids = w.lab.submit_many(kunde(n) for n in (1, 2, 3))
    w.lab.wait_deferred(3)
    with running(rescue, tmp_path / "first") as svc:
        svc.notify.wait_for("READY=1")
        svc.wait_log("ionos: 1 messages wait for a later cycle (quota)")
        svc.wait_log("smarthost quota reached: relay1 took 2 in the last hour")
        assert svc.terminate() == 0
    assert len(w.smarthost.received) == 2
    [left] = w.lab.queue_ids("deferred")
    assert left in ids

    with running(rescue, tmp_path / "second") as svc:
        svc.notify.wait_for("READY=1")
        svc.notify.next_cycle()
        assert "smarthost quota reached: relay1 took 2" in svc.log()
        assert svc.terminate() == 0
    assert len(w.smarthost.received) == 2
    assert w.lab.queue_ids("deferred") == [left]


@contextmanager
def draining(notify: NotifySocket) -> Iterator[None]:
    """Read what the service tells systemd while the test looks elsewhere, as systemd
    would: unread, its datagrams fill the socket's queue and the service's next one waits.
    """
    notify.wait_for("READY=1")
    stop = threading.Event()

    def drain() -> None:
        notify.sock.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                notify.received.append(notify.sock.recv(4096).decode())

    thread = threading.Thread(target=drain, name="notify-drain")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@pytest.mark.postfix
def test_a_flush_by_hand_waits_for_the_cycle_and_each_message_goes_once(
    w: World, tmp_path: Path
) -> None:
    # The service reroutes partner.test; its first message hangs at DATA, so its cycle
    # holds the queue lock. Stopped there (SIGSTOP), the service keeps the lock for sure.
    w.smarthost.script(Fault("DATA", action="hang"))
    rescue = service_rescue(w, "beside", providers=AUTO_OTHER)
    rescue.smarthosts[0]["timeout"] = "5s"
    kunden = w.lab.submit_many(kunde(n) for n in (1, 2, 3))
    w.lab.wait_deferred(3)
    with running(rescue, tmp_path) as svc, draining(svc.notify):
        partner = w.lab.submit(SENDER, [f"boss@{OTHER_DOMAIN}"], body(9))
        w.lab.wait_for(lambda: w.lab.queue_ids("hold") == [partner], what="partner on hold")
        w.smarthost.wait_for(lambda: w.smarthost.transactions_attempted == 1)
        os.kill(svc.proc.pid, signal.SIGSTOP)
        err_path = tmp_path / "flush.err"
        try:
            flush = rescue.popen(
                "flush", "--provider", "ionos", "--yes", "--json", stderr_to=err_path
            )
            waiting = f"waiting for the lock, held by pid {svc.proc.pid} (queue-rescue run, cycle"
            wait_for(lambda: waiting in err_path.read_text(), 60, "the flush to wait")
            status = rescue.run("status")
            assert f"Lock: held by pid {svc.proc.pid} (queue-rescue run, cycle since" in (
                status.stdout
            )
            assert f"next: pid {flush.pid} (queue-rescue flush, waiting since" in status.stdout
            assert w.smarthost.received == []  # nothing sent while the cycle has the queue
        finally:
            os.kill(svc.proc.pid, signal.SIGCONT)
        out, _ = flush.communicate(timeout=90)
        assert flush.returncode == 0, out + err_path.read_text()
        outcomes = [json.loads(line) for line in out.splitlines() if '"queue_id"' in line]
        assert sorted(o["queue_id"] for o in outcomes) == sorted(kunden)
        assert {o["action"] for o in outcomes} == {"rerouted"}
        w.lab.wait_for(lambda: w.lab.queue() == [], what="an empty queue")
        # One service per journal, though it leaves the queue lock between cycles.
        second = rescue.run("run")
        assert second.code == 3
        assert f"journal.sqlite3.lock.service is held by pid {svc.proc.pid}" in second.stderr
        assert svc.terminate() == 0
    rcpts = sorted(r.rcpt_tos for r in w.smarthost.received)
    assert rcpts == sorted(
        [(f"u{n}@kunde{n}.test",) for n in (1, 2, 3)] + [(f"boss@{OTHER_DOMAIN}",)]
    )
    assert w.lab.queue() == []


@pytest.mark.postfix
def test_stop_while_the_smarthost_hangs_after_data(w: World, tmp_path: Path) -> None:
    # Two sessions each wait for the answer to a final dot that never comes (a smarthost
    # timeout of 120s), dozens of messages are held and not yet sent. `systemctl stop`
    # must give back the untouched ones at once, drop the two waits within the stop
    # timeout (those messages go back marked as maybe sent), delete what the smarthost
    # accepted and never release it, and be done before systemd would kill the service.
    hung = {"u7@kunde7.test", "u8@kunde8.test"}
    with RecordingSmarthost(reply_delay=0.05) as slow:
        for address in sorted(hung):
            slow.script(Fault("EOD", action="hang", recipient=address))
        rescue = service_rescue(w, "stop-hang", extra='stop_timeout = "6s"\n')
        rescue.smarthosts = [
            smarthost_entry("relay1", slow.port, max_connections=2, timeout="120s")
        ]
        ids = dict(
            zip(range(1, 31), w.lab.submit_many(kunde(n) for n in range(1, 31)), strict=True)
        )
        w.lab.wait_deferred(30)
        with running(rescue, tmp_path, "--log-format", "json") as svc:
            recorded = lambda: {r.rcpt_tos[0] for r in slow.received}  # noqa: E731
            slow.wait_for(lambda: hung <= recorded(), 60, "both sessions waiting after the dot")
            assert svc.terminate() == 0  # within the unit's TimeoutStopSec
            logged = [json.loads(line)["message"] for line in svc.log().splitlines()]

    assert w.lab.queue_ids("hold") == []
    accepted = recorded() - hung
    by_rcpt = {f"u{n}@kunde{n}.test": qid for n, qid in ids.items()}
    deferred = set(w.lab.queue_ids("deferred"))
    assert deferred.isdisjoint(by_rcpt[r] for r in accepted)  # never given back
    assert deferred == {qid for r, qid in by_rcpt.items() if r not in accepted}
    uncertain = [i for i, m in enumerate(logged) if "may be sent more than once" in m]
    untouched = [i for i, m in enumerate(logged) if "stopped before it was sent" in m]
    assert {logged[i].split(":")[0] for i in uncertain} == {by_rcpt[r] for r in hung}
    assert untouched and max(untouched) < min(uncertain)  # given back first, at once
