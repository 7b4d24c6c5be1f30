"""The journal's SQLite schema, its statements, and the rows read back as values."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import JournalError

# SQLite's page cache per connection (KiB): rows are found by key, so a small cache
# does; the default (2 MiB each for this connection and the writer's) would fill up
# as the journal grows and make a long flush's memory grow with it.
CACHE_SIZE = "PRAGMA cache_size=-512"

SCHEMA = """
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
-- Every state a message passes through is kept as an event (what `status` shows),
-- written by SQLite itself in the same statement, so a step costs one write.
CREATE TRIGGER IF NOT EXISTS messages_inserted AFTER INSERT ON messages BEGIN
    INSERT INTO events(key, queue_id, run_id, state, smarthost, reply, detail, at)
    VALUES (NEW.key, NEW.queue_id, NEW.run_id, NEW.state, NEW.smarthost, NEW.reply,
            NEW.detail, NEW.updated);
END;
CREATE TRIGGER IF NOT EXISTS messages_updated AFTER UPDATE ON messages BEGIN
    INSERT INTO events(key, queue_id, run_id, state, smarthost, reply, detail, at)
    VALUES (NEW.key, NEW.queue_id, NEW.run_id, NEW.state, NEW.smarthost, NEW.reply,
            NEW.detail, NEW.updated);
END;
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


@dataclass(frozen=True, slots=True)
class Event:
    """One state change of a message, with what the journal knows of the message."""

    at: float
    key: str
    queue_id: str
    state: str
    provider: str | None
    sender: str | None
    recipients: tuple[str, ...]
    smarthost: str | None
    reply: str | None
    detail: str | None
    command: str | None  # of the run that did it: "flush", "run" (the service)


@dataclass(frozen=True, slots=True)
class Run:
    run_id: int
    command: str
    pid: int
    started: float
    ended: float | None
    summary: dict[str, int]


UPSERT = """INSERT INTO messages(key, queue_id, run_id, state, provider, sender, recipients,
                                  smarthost, reply, detail, updated)
              VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
              ON CONFLICT(key) DO UPDATE SET
                run_id = excluded.run_id, state = excluded.state,
                provider = COALESCE(excluded.provider, provider),
                sender = COALESCE(excluded.sender, sender),
                recipients = COALESCE(excluded.recipients, recipients),
                smarthost = COALESCE(excluded.smarthost, smarthost),
                reply = COALESCE(excluded.reply, reply),
                detail = excluded.detail, updated = excluded.updated"""

UPSERT_COLUMNS = (
    "key", "queue_id", "run_id", "state", "provider", "sender", "recipients",
    "smarthost", "reply", "detail", "updated",
)  # fmt: skip

SELECT = """SELECT key, queue_id, run_id, state, provider, sender, recipients, smarthost,
                    reply, detail, updated FROM messages"""


def entry_of(row: tuple[object, ...]) -> Entry:
    recipients = json.loads(str(row[6])) if row[6] else []
    return Entry(
        key=str(row[0]),
        queue_id=str(row[1]),
        run_id=int(str(row[2])),
        state=str(row[3]),
        provider=optional(row[4]),
        sender=optional(row[5]),
        recipients=tuple(recipients),
        smarthost=optional(row[7]),
        reply=optional(row[8]),
        detail=optional(row[9]),
        updated=float(str(row[10])),
    )


def optional(value: object) -> str | None:
    return None if value is None else str(value)


def event_of(row: tuple[object, ...]) -> Event:
    return Event(
        at=float(str(row[0])),
        key=str(row[1]),
        queue_id=str(row[2]),
        state=str(row[3]),
        provider=optional(row[4]),
        sender=optional(row[5]),
        recipients=tuple(json.loads(str(row[6]))) if row[6] else (),
        smarthost=optional(row[7]),
        reply=optional(row[8]),
        detail=optional(row[9]),
        command=optional(row[10]),
    )


@contextmanager
def transaction(db: sqlite3.Connection, path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction on a connection of the journal at `path` (isolation_level
    None): taken at once (BEGIN IMMEDIATE), rolled back on any exception; a SQLite
    error becomes a JournalError that names the file."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        raise JournalError(f"journal {path}: {exc}") from exc
