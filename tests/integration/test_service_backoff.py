"""The service offers a message a smarthost refused again only after its backoff.

README (queue-rescue run): "A message a smarthost refused is offered again after 5
minutes." Five minutes are not waited for: once the refusal has been seen to hold for
cycles on end, its journal entry is dated back past the backoff, as if they had passed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from rescue.service.autorules import RELEASE_BACKOFF
from tests.integration.test_service import kunde, running, service_rescue
from tests.integration.world import World
from tests.lab.smtpd import Fault

pytestmark = pytest.mark.postfix


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
        with sqlite3.connect(rescue.journal_path) as db:
            db.execute(
                "UPDATE events SET at = at - ? WHERE queue_id = ? AND state = 'released'",
                (RELEASE_BACKOFF + 60, refused),
            )

        received = w.smarthost.wait_for_count(2, timeout=60)
        w.lab.wait_empty()  # deleted from hold once accepted

    assert sorted(r.rcpt_tos for r in received) == [(refused_rcpt,), ("u2@kunde2.test",)]
    assert f"{control}: rerouted" in svc.log()
