"""Recovery after a crash acts only on queue files the crashed run recorded.

README (After a crash): it "acts only on queue files it recorded (same queue id, arrival
time and size), so mail someone put on hold by hand is never touched". The crash here is
a SIGKILL right after postsuper held the selection (postsuper's wrapper kills its
parent, the flush), so nothing of the run had the chance to clean up.
"""

from __future__ import annotations

import hashlib
import signal
from pathlib import Path

import pytest

from tests.integration.test_bad_input import command_folder
from tests.integration.world import World, body
from tests.lab.postfix import PostfixLab
from tests.lab.submission import Submission

pytestmark = pytest.mark.postfix

KILL_AFTER_HOLD = (
    'REAL/postsuper "$@"; status=$?\n'
    'case " $* " in *" -h "*) kill -KILL $PPID;; esac\n'
    "exit $status\n"
)


def held_file(lab: PostfixLab, queue_id: str) -> str:
    """A hash of the message's queue file in the hold queue (it must be there)."""
    [path] = [p for p in (lab.queue_dir / "hold").rglob(queue_id) if p.is_file()]
    return hashlib.sha256(path.read_bytes()).hexdigest()


def crash_after_hold(w: World, tmp_path: Path, n: int) -> tuple[list[str], str]:
    """`n` messages held by a flush that was then killed, and one held by hand before."""
    ids = w.lab.submit_many(
        Submission("alice@example.com", (f"c{i}@kunde{i + 1}.test",), body(i)) for i in range(n)
    )
    by_hand = w.lab.submit("alice@example.com", ["boss@kunde9.test"], body(9))
    w.lab.wait_deferred(n + 1)
    assert w.lab.hold_ids([by_hand]) == [by_hand]
    crashing = w.rescue(
        "crash",
        command_dir=command_folder(tmp_path / "bin", w.lab.command_dir, postsuper=KILL_AFTER_HOLD),
    )
    result = crashing.run("flush", "--yes", "--provider", "ionos", "--json")
    assert result.code == -signal.SIGKILL, result.stderr
    assert sorted(w.lab.queue_ids("hold")) == sorted([*ids, by_hand])
    assert w.smarthost.received == []
    return ids, by_hand


def test_a_message_held_by_hand_survives_a_crash_and_recovery(w: World, tmp_path: Path) -> None:
    ids, by_hand = crash_after_hold(w, tmp_path, 3)
    before = held_file(w.lab, by_hand)

    # The same journal, real postsuper: recovery first, then the flush goes on.
    result = w.rescue("crash").run("flush", "--yes", "--provider", "ionos", "--json")

    assert result.code == 0, result.stderr
    assert "recovered from an interrupted run: 0 accepted message(s) deleted, 3 released" in (
        result.stderr
    )
    assert set(result.outcomes) == set(ids)
    assert sorted(r.rcpt_tos[0] for r in w.smarthost.received) == sorted(
        f"c{i}@kunde{i + 1}.test" for i in range(3)
    )
    assert w.lab.queue_ids("hold") == [by_hand]
    assert held_file(w.lab, by_hand) == before


def test_recovery_leaves_a_held_file_that_is_not_the_one_it_recorded(
    w: World, tmp_path: Path
) -> None:
    ids, by_hand = crash_after_hold(w, tmp_path, 2)
    # The same queue id, but another arrival time: to the journal a different queue file
    # (Postfix reuses queue ids), so not the crashed run's to release.
    [entry] = [m for m in w.lab.queue() if m["queue_id"] == ids[0]]
    w.lab.set_arrival(ids[0], entry["arrival_time"] - 3600, queue_name="hold")
    other = held_file(w.lab, ids[0])

    result = w.rescue("crash").run("flush", "--yes", "--provider", "ionos", "--json")

    assert result.code == 0, result.stderr
    assert "0 accepted message(s) deleted, 1 released" in result.stderr
    assert list(result.outcomes) == [ids[1]]
    assert [r.rcpt_tos[0] for r in w.smarthost.received] == ["c1@kunde2.test"]
    assert sorted(w.lab.queue_ids("hold")) == sorted([ids[0], by_hand])
    assert held_file(w.lab, ids[0]) == other
