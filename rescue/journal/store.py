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
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import JournalError
from rescue.journal.writer import BackgroundWriter

HOLDING = "holding"
HELD = "held"
SENDING = "sending"
ACCEPTED = "accepted"
DELETED = "deleted"
RELEASED = "released"
SKIPPED = "skipped"
FINAL_STATES = frozenset({DELETED, RELEASED, SKIPPED})
OPEN_STATES = frozenset({HOLDING, HELD, SENDING, ACCEPTED})

# SQLite's page cache per connection (KiB): rows are found by key, so a small cache
# does; the default (2 MiB each for this connection and the writer's) would fill up
# as the journal grows and make a long flush's memory grow with it.
CACHE_SIZE = "PRAGMA cache_size=-512"

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


class Journal:
    """SQLite in WAL mode; every state change is its own committed transaction."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        # Every time the journal writes (state changes, runs, pruning) comes from here.
        self._clock = clock
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: each committed step survives a crash of this
            # process (SIGKILL, a bug). Surviving a power loss as well is what
            # sync() is for: it runs before every step that cannot be undone.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(CACHE_SIZE)
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open journal {path}: {exc}") from exc
        self.run_id = 0
        self._writer: BackgroundWriter | None = None

    def close(self) -> None:
        self.stop_writing_behind()
        self._db.close()

    @contextmanager
    def writing_behind(self) -> Iterator[None]:
        """While inside, record() hands rows to a writer thread (in order) and returns.

        For the flush's busy part: the event loop goes on while SQLite writes.
        sync() and leaving the block wait until everything is committed.
        """
        self._writer = BackgroundWriter(self.path, _UPSERT, [CACHE_SIZE])
        try:
            yield
        finally:
            self.stop_writing_behind()

    def stop_writing_behind(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def sync(self) -> None:
        """Put every committed step on disk (fsync the WAL), also across a power loss.

        Called before messages are deleted from Postfix: a deleted message's
        `accepted` must never be lost, or a restart would send it again.
        """
        if self._writer is not None:
            self._writer.drain()
        # Only the WAL, where committed steps live until a checkpoint (which syncs the
        # database file itself). Never open and close the database file here: closing any
        # descriptor of it drops every POSIX lock this process holds on it, SQLite's
        # included; another process closing its connection would then take this one for
        # gone, checkpoint and delete the WAL, and our later commits would go to a WAL
        # file no other process sees.
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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

    def begin_run(self, command: str, pid: int, *, keep: float | None = None) -> int:
        """Record a run's start; with `keep` (seconds), first forget what is older."""
        if keep is not None:
            self.prune(self._clock() - keep)
        with self._transaction() as db:
            cur = db.execute(
                "INSERT INTO runs(command, pid, started) VALUES (?, ?, ?)",
                (command, pid, self._clock()),
            )
        self.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def prune(self, before: float) -> int:
        """Forget settled messages, their events and ended runs last changed before `before`.

        Messages in an open state stay whatever their age: recovery needs them. Returns
        how many messages were forgotten.
        """
        final = ",".join("?" * len(FINAL_STATES))
        with self._transaction() as db:
            cur = db.execute(
                f"DELETE FROM messages WHERE state IN ({final}) AND updated < ?",  # noqa: S608
                (*sorted(FINAL_STATES), before),
            )
            db.execute(
                "DELETE FROM events WHERE at < ? AND key NOT IN (SELECT key FROM messages)",
                (before,),
            )
            db.execute("DELETE FROM runs WHERE ended IS NOT NULL AND ended < ?", (before,))
        return cur.rowcount

    def end_run(self, summary: dict[str, int]) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET ended = ?, summary = ? WHERE run_id = ?",
                (self._clock(), json.dumps(summary), self.run_id),
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
        now = self._clock()
        rcpts = json.dumps(list(recipients)) if recipients is not None else None
        rows = list(items)
        if not rows:
            return
        values = [
            (key, qid, self.run_id, state, provider, sender, rcpts, smarthost, reply, detail, now)
            for key, qid in rows
        ]
        if self._writer is not None:
            self._writer.put(values)
            return
        if len(values) == 1:
            # One statement is its own transaction (autocommit).
            try:
                self._db.execute(_UPSERT, values[0])
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc
            return
        with self._transaction() as db:
            db.executemany(_UPSERT, values)

    def start(self, rows: Iterable[tuple[tuple[str, str], str | None, str, list[str]]]) -> None:
        """Record messages about to be held: ((key, queue_id), provider, sender, recipients)."""
        now = self._clock()
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

    # --- reading, for the service's limits and `status` ------------------------------------

    def accepted_since(self, since: float) -> dict[str, int]:
        """Messages each smarthost accepted from `since` on, by smarthost name."""
        rows = self._db.execute(
            "SELECT smarthost, count(*) FROM events WHERE at >= ? AND state = ? GROUP BY smarthost",
            (since, ACCEPTED),
        ).fetchall()
        return {str(host): int(count) for host, count in rows if host is not None}

    def released_since(self, since: float) -> set[str]:
        """Keys of the messages released to Postfix from `since` on."""
        rows = self._db.execute(
            "SELECT DISTINCT key FROM events WHERE at >= ? AND state = ?", (since, RELEASED)
        ).fetchall()
        return {str(row[0]) for row in rows}

    def history(self, since: float, states: Iterable[str]) -> list[Event]:
        """Events in these states from `since` on, oldest first, with their message's data."""
        wanted = sorted(set(states))
        marks = ",".join("?" * len(wanted))
        rows = self._db.execute(
            f"""SELECT e.at, e.key, e.queue_id, e.state, m.provider, m.sender, m.recipients,
                       e.smarthost, e.reply, e.detail, r.command
                FROM events e LEFT JOIN messages m ON m.key = e.key
                              LEFT JOIN runs r ON r.run_id = e.run_id
                WHERE e.at >= ? AND e.state IN ({marks}) ORDER BY e.id""",  # noqa: S608
            (since, *wanted),
        ).fetchall()
        return [_event(row) for row in rows]

    def last_run(self, command: str) -> Run | None:
        """The latest run of this command (`run` is the service)."""
        row = self._db.execute(
            "SELECT run_id, command, pid, started, ended, summary FROM runs "
            "WHERE command = ? ORDER BY run_id DESC LIMIT 1",
            (command,),
        ).fetchone()
        if row is None:
            return None
        return Run(
            run_id=int(row[0]),
            command=str(row[1]),
            pid=int(row[2]),
            started=float(row[3]),
            ended=None if row[4] is None else float(row[4]),
            summary=json.loads(row[5]) if row[5] else {},
        )


_UPSERT = """INSERT INTO messages(key, queue_id, run_id, state, provider, sender, recipients,
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


def _event(row: tuple[object, ...]) -> Event:
    return Event(
        at=float(str(row[0])),
        key=str(row[1]),
        queue_id=str(row[2]),
        state=str(row[3]),
        provider=_opt(row[4]),
        sender=_opt(row[5]),
        recipients=tuple(json.loads(str(row[6]))) if row[6] else (),
        smarthost=_opt(row[7]),
        reply=_opt(row[8]),
        detail=_opt(row[9]),
        command=_opt(row[10]),
    )
