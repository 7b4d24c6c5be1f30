"""The journal forgets settled messages after [journal] keep, never open ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rescue.journal.store import ACCEPTED, DELETED, HELD, RELEASED, SKIPPED, Journal

DAY = 86400.0
# One fixed "now" for the journal's clock and for every age the test sets: the test
# means the same thing on any date it runs.
NOW = 1_900_000_000.0


def clock() -> float:
    return NOW


def journal_with(tmp_path: Path, states: dict[str, tuple[str, float]]) -> Journal:
    """A journal whose message KEY is in STATE since AGE seconds, for each entry,
    after a run that ended 40 days ago."""
    journal = Journal(tmp_path / "journal.sqlite3", clock=clock)
    journal.begin_run("flush", 1)
    journal.end_run({})
    with sqlite3.connect(journal.path) as db:
        db.execute("UPDATE runs SET started = ?, ended = ?", (NOW - 41 * DAY,) * 2)
    journal.begin_run("flush", 2)
    for key, (state, age) in states.items():
        journal.record([(key, key.split(":")[0])], state)
        with sqlite3.connect(journal.path) as db:
            # As if written back then: the update trigger writes the one event, aged.
            db.execute("DELETE FROM events WHERE key = ?", (key,))
            db.execute("UPDATE messages SET updated = ? WHERE key = ?", (NOW - age, key))
    return journal


def test_prune_forgets_old_settled_messages_and_keeps_the_rest(tmp_path: Path) -> None:
    journal = journal_with(
        tmp_path,
        {
            "OLD1:1:1": (DELETED, 40 * DAY),
            "OLD2:1:1": (RELEASED, 40 * DAY),
            "OLD3:1:1": (SKIPPED, 31 * DAY),
            "OPEN1:1:1": (ACCEPTED, 40 * DAY),  # recovery still needs it
            "OPEN2:1:1": (HELD, 40 * DAY),
            "NEW1:1:1": (DELETED, 2 * DAY),
        },
    )

    assert journal.prune(NOW - 30 * DAY) == 3

    keys = ["OLD1:1:1", "OLD2:1:1", "OLD3:1:1", "OPEN1:1:1", "OPEN2:1:1", "NEW1:1:1"]
    left = journal.states(keys)
    assert left == {"OPEN1:1:1": ACCEPTED, "OPEN2:1:1": HELD, "NEW1:1:1": DELETED}
    with sqlite3.connect(journal.path) as db:
        keys = {k for (k,) in db.execute("SELECT DISTINCT key FROM events")}
        runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
    assert keys == {"OPEN1:1:1", "OPEN2:1:1", "NEW1:1:1"}
    assert runs == 1  # the ended run is gone; the one that is still running stays


def test_a_run_prunes_when_it_begins(tmp_path: Path) -> None:
    journal = journal_with(tmp_path, {"OLD1:1:1": (DELETED, 40 * DAY)})
    journal.close()

    again = Journal(tmp_path / "journal.sqlite3", clock=clock)
    again.begin_run("flush", 2, keep=30 * DAY)

    assert again.states(["OLD1:1:1"]) == {}
