"""`--wait`: a flush or export by hand waits for whoever has the queue, then goes on.

The test itself holds the queue lock as another command would (the same flock), so
the wait ends exactly when the test says.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rescue.journal.lock import InstanceLock
from tests.integration.world import World, body
from tests.lab import wait_for
from tests.lab.submission import Submission

pytestmark = pytest.mark.postfix


def defer(w: World, n: int) -> list[str]:
    ids = w.lab.submit_many(
        Submission("alice@example.com", (f"c{i}@kunde{i + 1}.test",), body(i)) for i in range(n)
    )
    w.lab.wait_deferred(n)
    return ids


def test_a_flush_waits_for_the_holder_then_sends_each_message_once(
    w: World, tmp_path: Path
) -> None:
    ids = defer(w, 3)
    rescue = w.rescue("wait-flush")
    lock = InstanceLock(Path(f"{rescue.journal_path}.lock"), "export")
    lock.acquire()
    err_path = tmp_path / "flush.err"
    try:
        flush = rescue.popen("flush", "--provider", "ionos", "--yes", "--json", stderr_to=err_path)
        waiting = "waiting for the lock, held by pid "
        wait_for(lambda: waiting in err_path.read_text(), 60, "the flush to wait")
        assert "(queue-rescue export, since " in err_path.read_text()
        assert w.smarthost.received == []
        assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)  # nothing held meanwhile
    finally:
        lock.release()
    out, _ = flush.communicate(timeout=120)
    assert flush.returncode == 0, out + err_path.read_text()
    assert sorted(r.rcpt_tos[0] for r in w.smarthost.received) == sorted(
        f"c{i}@kunde{i + 1}.test" for i in range(3)
    )
    assert w.lab.queue() == []


def test_an_export_gives_up_after_its_wait_naming_the_holder(w: World, tmp_path: Path) -> None:
    ids = defer(w, 2)
    rescue = w.rescue("wait-export")
    with InstanceLock(Path(f"{rescue.journal_path}.lock"), "flush"):
        result = rescue.run(
            "export", "--to", str(tmp_path / "out"), "--provider", "ionos", "--yes", "--wait", "1s"
        )
    assert result.code == 3, result.stdout + result.stderr
    assert "waiting for the lock, held by pid" in result.stderr
    assert "(queue-rescue flush, since" in result.stderr
    assert re.search(r"\(waited \d+s; --wait sets how long\)", result.stderr)
    assert sorted(w.lab.queue_ids("deferred")) == sorted(ids)
    assert not list((tmp_path / "out").glob("*.eml"))
