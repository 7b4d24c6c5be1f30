"""README promises of `queue-rescue run` that test_service.py does not hold: a refused
message offered again only after its backoff, `max_per_day` counted over a day, every
metric, and no secret in a -vv service log.

Five minutes, hours and days are not waited for: the journal entries the service counts
are dated back, as if that time had passed (the service reads them afresh every cycle).
"""

from __future__ import annotations

import base64
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest

from rescue.service.autorules import RELEASE_BACKOFF
from tests.integration.rescue_cli import SRS_SECRET, Rescue, smarthost_entry
from tests.integration.test_service import kunde, running, service_rescue
from tests.integration.world import World
from tests.lab.certs import default_certs
from tests.lab.faults import Fault
from tests.lab.smtpd import RecordingSmarthost
from tests.lab.system import free_port

pytestmark = pytest.mark.postfix


def date_back(rescue: Rescue, state: str, seconds: float, queue_id: str | None = None) -> None:
    """Make the journal say this happened `seconds` earlier (to one message, or all)."""
    query = "UPDATE events SET at = at - ? WHERE state = ?"
    args: tuple[object, ...] = (seconds, state)
    if queue_id is not None:
        query, args = query + " AND queue_id = ?", (*args, queue_id)
    with sqlite3.connect(rescue.journal_path) as db:
        db.execute(query, args)


def metrics(port: int) -> dict[str, float]:
    """The service's metrics: each sample line as {name{labels}: value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("queue_rescue_"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_a_refused_message_is_offered_again_after_its_backoff(w: World, tmp_path: Path) -> None:
    refused_rcpt = "u1@kunde1.test"
    w.smarthost.script(
        Fault(stage="RCPT", reply="550 5.7.1 not now", recipient=refused_rcpt, times=None)
    )
    rescue = service_rescue(w, "backoff")
    with running(rescue, tmp_path) as svc:
        svc.notify.wait_for("READY=1")
        refused, control = w.lab.submit_many([kunde(1), kunde(2)])
        w.smarthost.wait_for_count(1, timeout=60)
        svc.wait_log(f"{refused}: released")
        tried = w.smarthost.transactions_attempted
        assert tried == 2  # each offered once

        # Within the backoff: cycle after cycle, the refused message is left alone.
        for _ in range(3):
            svc.notify.next_cycle()
        assert w.smarthost.transactions_attempted == tried
        assert w.lab.queue_ids("deferred") == [refused]

        # The backoff has passed.
        w.smarthost.clear_faults()
        date_back(rescue, "released", RELEASE_BACKOFF + 60, refused)

        received = w.smarthost.wait_for_count(2, timeout=60)
        w.lab.wait_empty()  # deleted from hold once accepted

    assert sorted(r.rcpt_tos for r in received) == [(refused_rcpt,), ("u2@kunde2.test",)]
    assert f"{control}: rerouted" in svc.log()


def test_max_per_day_counts_a_day_and_every_metric_says_what_happened(
    w: World, tmp_path: Path
) -> None:
    port = free_port()
    rescue = service_rescue(w, "day", extra=f'metrics_listen = "127.0.0.1:{port}"\n')
    rescue.smarthosts[0]["max_per_day"] = 2
    w.smarthost.script(
        Fault(stage="RCPT", reply="550 5.7.1 not now", recipient="u4@kunde4.test", times=None)
    )
    # Oldest first: the refused one, then three the smarthost takes, two of them today.
    ids = w.lab.submit_many(kunde(n) for n in (4, 1, 2, 3))
    w.lab.wait_deferred(4)
    now = int(time.time())
    for age, qid in zip((400, 300, 200, 100), ids, strict=True):
        w.lab.set_arrival(qid, now - age)  # one arrival second each, in this order
    started = time.time()
    with running(rescue, tmp_path / "first") as svc:
        svc.notify.wait_for("READY=1")
        svc.wait_log("smarthost quota reached: relay1 took 2 in the last hour")
        svc.notify.next_cycle()
        got = metrics(port)
        assert svc.terminate() == 0
    assert sorted(r.rcpt_tos for r in w.smarthost.received) == [
        ("u1@kunde1.test",),
        ("u2@kunde2.test",),
    ]
    assert sorted(w.lab.queue_ids("deferred")) == sorted([ids[0], ids[3]])
    # README (Metrics): deferred messages and recipients by provider, rerouted and failed
    # by provider and smarthost, smarthost errors by kind, messages held back by a limit,
    # last cycle time and duration.
    ionos = '{provider="ionos"}'
    assert got["queue_rescue_deferred_messages" + ionos] == 2
    assert got["queue_rescue_deferred_recipients" + ionos] == 2
    by = '{provider="ionos",smarthost="relay1"}'
    assert got["queue_rescue_rerouted_messages_total" + by] == 2
    assert got["queue_rescue_failed_messages_total" + by] == 1
    assert got['queue_rescue_smarthost_errors_total{kind="RCPT TO",smarthost="relay1"}'] == 1
    assert got['queue_rescue_held_back_messages{limit="quota",provider="ionos"}'] == 1
    assert got['queue_rescue_held_back_messages{limit="backoff",provider="ionos"}'] == 1
    assert started < got["queue_rescue_last_cycle_timestamp_seconds"] <= time.time()
    assert 0 < got["queue_rescue_last_cycle_duration_seconds"] < time.time() - started
    assert got["queue_rescue_cycle_errors_total"] == 0

    # Two hours later the hour is over, the day is not: still nothing more.
    date_back(rescue, "accepted", 2 * 3600)
    with running(rescue, tmp_path / "second") as svc:
        svc.notify.wait_for("READY=1")
        svc.notify.next_cycle()
        assert svc.terminate() == 0
    assert "relay1 took 0 in the last hour, 2 in the last day (max_per_day 2)" in svc.log()
    assert len(w.smarthost.received) == 2

    # A day later there is room again.
    date_back(rescue, "accepted", 24 * 3600)
    with running(rescue, tmp_path / "third") as svc:
        svc.notify.wait_for("READY=1")
        w.smarthost.wait_for_count(3, timeout=60)
        assert svc.terminate() == 0
    assert sorted(r.rcpt_tos for r in w.smarthost.received)[-1] == ("u3@kunde3.test",)
    assert w.lab.queue_ids("deferred") == [ids[0]]  # the refused one, in its backoff


def test_a_vv_service_logs_no_secret(w: World, tmp_path: Path) -> None:
    password = "svc-pw-Qz7-never-logged"
    pw_file = tmp_path / "password"
    pw_file.write_text(password + "\n")
    pw_file.chmod(0o600)
    certs = default_certs()
    with RecordingSmarthost(
        starttls=True, certs=certs, require_auth=("rescue", password), auth_require_tls=True
    ) as server:
        rescue = service_rescue(w, "secrets")
        rescue.smarthosts = [
            smarthost_entry(
                "relay1",
                server.port,
                tls="starttls",
                ca_file=str(certs.ca_file),
                username="rescue",
                password_file=str(pw_file),
            )
        ]
        with running(rescue, tmp_path / "svc", "-vv") as svc:
            svc.notify.wait_for("READY=1")
            [qid] = w.lab.submit_many([kunde(1)])
            svc.wait_log(f"{qid}: rerouted")
            assert svc.terminate() == 0
        assert [r.auth_user for r in server.received] == ["rescue"]
    log = svc.log()
    plain = base64.b64encode(f"\0rescue\0{password}".encode()).decode()
    for secret in (password, plain, base64.b64encode(password.encode()).decode(), SRS_SECRET):
        assert secret not in log
