"""The journal: where each message we touch stands, written before and after each step.

States of a message (keyed by queue id, arrival time and size, since Postfix
reuses queue ids):

    holding -> held -> sending(smarthost) -> accepted(reply) -> deleted
    holding | held | sending -> released            (given back to Postfix)
    holding -> skipped                               (not in the deferred queue any more)

`deleted`, `released` and `skipped` are final. After a crash, recovery deletes
what was accepted (never sending it again) and releases everything else.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import JournalError

HOLDING = "holding"
HELD = "held"
SENDING = "sending"
ACCEPTED = "accepted"
DELETED = "deleted"
RELEASED = "released"
SKIPPED = "skipped"
FINAL_STATES = frozenset({DELETED, RELEASED, SKIPPED})
OPEN_STATES = frozenset({HOLDING, HELD, SENDING, ACCEPTED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id     INTEGER PRIMARY KEY,
    command    TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    started    REAL NOT NULL,
    ended      REAL,
    summary    TEXT
);
CREATE TABLE IF NOT EXISTS messages (
    key        TEXT PRIMARY KEY,
    queue_id   TEXT NOT NULL,
    run_id     INTEGER NOT NULL,
    state      TEXT NOT NULL,
    provider   TEXT,
    sender     TEXT,
    recipients TEXT,
    smarthost  TEXT,
    reply      TEXT,
    detail     TEXT,
    updated    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_state ON messages(state);
CREATE INDEX IF NOT EXISTS messages_updated ON messages(updated);
CREATE TABLE IF NOT EXISTS events (
    id         INTEGER PRIMARY KEY,
    key        TEXT NOT NULL,
    queue_id   TEXT NOT NULL,
    run_id     INTEGER NOT NULL,
    state      TEXT NOT NULL,
    smarthost  TEXT,
    reply      TEXT,
    detail     TEXT,
    at         REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events(at);
"""


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    queue_id: str
    run_id: int
    state: str
    provider: str | None
    sender: str | None
    recipients: tuple[str, ...]
    smarthost: str | None
    reply: str | None
    detail: str | None
    updated: float


class Journal:
    """SQLite in WAL mode; every state change is its own committed transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            # FULL: a state change is on disk before the next step is taken,
            # also across a power loss (the journal is what recovery trusts).
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        self.run_id = 0

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(f"journal {self.path}: {exc}") from exc

    # --- runs ---------------------------------------------------------------------------

    def begin_run(self, command: str, pid: int) -> int:
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO runs(command, pid, started) VALUES (?, ?, ?)",
                (command, pid, time.time()),
            )
        self.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def end_run(self, summary: dict[str, int]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET ended = ?, summary = ? WHERE run_id = ?",
                (time.time(), json.dumps(summary), self.run_id),
            )

    # --- message states -----------------------------------------------------------------

    def record(
        self,
        items: Iterable[tuple[str, str]],
        state: str,
        *,
        provider: str | None = None,
        sender: str | None = None,
        recipients: Iterable[str] | None = None,
        smarthost: str | None = None,
        reply: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Move messages (key, queue_id) to `state` in one transaction."""
        now = time.time()
        rcpts = json.dumps(list(recipients)) if recipients is not None else None
        rows = list(items)
        if not rows:
            return
        with self._transaction() as db:
            db.executemany(
                """INSERT INTO messages(key, queue_id, run_id, state, provider, sender,
                                        recipients, smarthost, reply, detail, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(key) DO UPDATE SET
                     run_id = excluded.run_id, state = excluded.state,
                     provider = COALESCE(excluded.provider, provider),
                     sender = COALESCE(excluded.sender, sender),
                     recipients = COALESCE(excluded.recipients, recipients),
                     smarthost = COALESCE(excluded.smarthost, smarthost),
                     reply = COALESCE(excluded.reply, reply),
                     detail = excluded.detail, updated = excluded.updated""",
                [
                    (
                        key,
                        qid,
                        self.run_id,
                        state,
                        provider,
                        sender,
                        rcpts,
                        smarthost,
                        reply,
                        detail,
                        now,
                    )
                    for key, qid in rows
                ],
            )
            db.executemany(
                """INSERT INTO events(key, queue_id, run_id, state, smarthost, reply, detail, at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)""",
                [
                    (key, qid, self.run_id, state, smarthost, reply, detail, now)
                    for key, qid in rows
                ],
            )

    def start(self, rows: Iterable[tuple[tuple[str, str], str | None, str, list[str]]]) -> None:
        """Record messages about to be held: ((key, queue_id), provider, sender, recipients)."""
        now = time.time()
        values = [
            (key, qid, self.run_id, HOLDING, provider, sender, json.dumps(rcpts), now)
            for (key, qid), provider, sender, rcpts in rows
        ]
        with self._transaction() as db:
            db.executemany(
                """INSERT INTO messages(key, queue_id, run_id, state, provider, sender,
                                        recipients, updated)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                   ON CONFLICT(key) DO UPDATE SET
                     run_id = excluded.run_id, state = excluded.state,
                     provider = excluded.provider, sender = excluded.sender,
                     recipients = excluded.recipients, smarthost = NULL, reply = NULL,
                     detail = NULL, updated = excluded.updated""",
                values,
            )
            db.executemany(
                "INSERT INTO events(key, queue_id, run_id, state, at) VALUES (?, ?, ?, ?, ?)",
                [(v[0], v[1], self.run_id, HOLDING, now) for v in values],
            )

    def get(self, key: str) -> Entry | None:
        row = self._db.execute(_SELECT + " WHERE key = ?", (key,)).fetchone()
        return _entry(row) if row else None

    def states(self, keys: Iterable[str]) -> dict[str, str]:
        """The current state of each of these keys the journal knows."""
        out: dict[str, str] = {}
        batch = list(keys)
        for start in range(0, len(batch), 500):
            chunk = batch[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for key, state in self._db.execute(
                f"SELECT key, state FROM messages WHERE key IN ({marks})",  # noqa: S608
                chunk,
            ):
                out[key] = state
        return out

    def unfinished(self) -> list[Entry]:
        """Messages a previous run left in a non-final state (recovery's work list)."""
        marks = ",".join("?" * len(OPEN_STATES))
        rows = self._db.execute(
            _SELECT + f" WHERE state IN ({marks}) ORDER BY updated",
            tuple(sorted(OPEN_STATES)),
        ).fetchall()
        return [_entry(r) for r in rows]

    def recent(self, since: float) -> list[Entry]:
        rows = self._db.execute(
            _SELECT + " WHERE updated >= ? ORDER BY updated", (since,)
        ).fetchall()
        return [_entry(r) for r in rows]


_SELECT = """SELECT key, queue_id, run_id, state, provider, sender, recipients, smarthost,
                    reply, detail, updated FROM messages"""


def _entry(row: tuple[object, ...]) -> Entry:
    recipients = json.loads(str(row[6])) if row[6] else []
    return Entry(
        key=str(row[0]),
        queue_id=str(row[1]),
        run_id=int(str(row[2])),
        state=str(row[3]),
        provider=_opt(row[4]),
        sender=_opt(row[5]),
        recipients=tuple(recipients),
        smarthost=_opt(row[7]),
        reply=_opt(row[8]),
        detail=_opt(row[9]),
        updated=float(str(row[10])),
    )


def _opt(value: object) -> str | None:
    return None if value is None else str(value)
