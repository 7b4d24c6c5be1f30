"""The journal: where each message we touch stands, written before and after each step.

States of a message (keyed by queue id, arrival time and size, since Postfix
reuses queue ids):

    holding -> held -> sending(smarthost) -> accepted(reply) -> deleted
    holding | held | sending -> released            (given back to Postfix)
    holding -> skipped                               (not in the deferred queue any more)

`deleted`, `released` and `skipped` are final. After a crash, recovery deletes
what was accepted (never sending it again) and releases everything else.

While a flush writes behind (a thread commits its rows), each `sending` and
`accepted` is also appended to a side file (PATH-steps) with one write(2) before
anything else happens: once the smarthost's 250 is read, or before a message's
first byte goes out, a crash of the process cannot lose the step. Recovery folds
the side file into the journal (replay_steps) before it acts.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from rescue.errors import JournalError
from rescue.journal.rows import (
    CACHE_SIZE,
    SCHEMA,
    SELECT,
    UPSERT,
    UPSERT_COLUMNS,
    Entry,
    Event,
    Run,
    entry_of,
    event_of,
    transaction,
)
from rescue.journal.writer import BackgroundWriter

log = logging.getLogger(__name__)

HOLDING = "holding"
HELD = "held"
SENDING = "sending"
ACCEPTED = "accepted"
DELETED = "deleted"
RELEASED = "released"
SKIPPED = "skipped"
FINAL_STATES = frozenset({DELETED, RELEASED, SKIPPED})
OPEN_STATES = frozenset({HOLDING, HELD, SENDING, ACCEPTED})
# Open states in the order a message passes through them (see replay_steps).
STEP_ORDER = (HOLDING, HELD, SENDING, ACCEPTED)


class Journal:
    """SQLite in WAL mode; every state change is its own committed transaction."""

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        fsync: Callable[[int], None] = os.fsync,
        worker: int | None = None,
    ) -> None:
        """`clock` gives the time of each step; `fsync` is how a file is put on disk
        (tests give a fixed clock, and an fsync that fails). `worker`: this connection
        is one of a split flush's worker processes (rescue.flush.parallel), which each
        append to a side file of their own: one truncating its file after a clean end
        must never drop a line another process still needs."""
        self.path = path
        self._clock = clock
        suffix = "" if worker is None else f"-{worker}"
        self.steps_path = Path(f"{path}-steps{suffix}")
        self._fsync = fsync
        self._steps_fd: int | None = None
        self._db = self._connect()
        self.run_id = 0
        self._writer: BackgroundWriter | None = None

    def _connect(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: each committed step survives a crash of this
            # process (SIGKILL, a bug). Surviving a power loss as well is what
            # sync() is for: it runs before every step that cannot be undone.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(CACHE_SIZE)
            db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        return db

    @contextmanager
    def closed_for_fork(self) -> Iterator[None]:
        """Closed while this process forks (a split flush's workers), opened again after.

        A connection open across fork() hands SQLite's record of this process's locks
        to the child: the child's own connections would then believe they hold locks
        they do not, and once this process is gone another one could take the journal
        for unused, checkpoint it and delete the write-ahead log they still write to.
        """
        if self._writer is not None:
            raise RuntimeError("closed_for_fork while a flush writes behind")
        self._db.close()
        try:
            yield
        finally:
            self._db = self._connect()

    def close(self) -> None:
        try:
            self.stop_writing_behind()
        finally:
            self._close_steps()
            self._db.close()

    @contextmanager
    def writing_behind(self) -> Iterator[None]:
        """While inside, record() hands rows to a writer thread (in order) and returns.

        For the flush's busy part: the event loop goes on while SQLite writes.
        sync() and leaving the block wait until everything is committed.
        """
        self._writer = BackgroundWriter(self.path, UPSERT, [CACHE_SIZE])
        try:
            yield
        finally:
            self.stop_writing_behind()

    def stop_writing_behind(self) -> None:
        """Wait until the writer has committed everything; then the side file is not needed."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()
            self._close_steps()
            # Every line of the side file is committed now: start the next flush afresh.
            # (Only emptied after a clean close: a writer that failed keeps it for recovery.)
            self._truncate_steps()

    def sync(self) -> None:
        """Put every committed step on disk (fsync the WAL), also across a power loss.

        Called before messages are deleted from Postfix: a deleted message's
        `accepted` must never be lost, or a restart would send it again. Any
        failure (the writer's, or EIO or ENOSPC at fsync) is a JournalError.
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
        except OSError as exc:
            raise JournalError(f"journal {self.path}-wal: {exc}") from exc
        try:
            self._fsync(fd)
        except OSError as exc:
            raise JournalError(f"journal {self.path}-wal: fsync: {exc}") from exc
        finally:
            os.close(fd)

    # --- the side file of `sending` and `accepted` ---------------------------------------

    def _append_steps(self, values: Sequence[tuple[object, ...]]) -> None:
        """Append these rows to the side file: one write(2), before the writer has them."""
        data = b"".join(json.dumps(row).encode() + b"\n" for row in values)
        try:
            if self._steps_fd is None:
                self._steps_fd = os.open(
                    self.steps_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
                )
            written = os.write(self._steps_fd, data)
        except OSError as exc:
            raise JournalError(f"journal {self.steps_path}: {exc}") from exc
        if written != len(data):
            raise JournalError(f"journal {self.steps_path}: short write ({written} bytes)")

    def _close_steps(self) -> None:
        fd, self._steps_fd = self._steps_fd, None
        if fd is not None:
            os.close(fd)

    def _truncate_steps(self, path: Path | None = None) -> None:
        path = path or self.steps_path
        try:
            os.truncate(path, 0)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise JournalError(f"journal {path}: {exc}") from exc

    def replay_steps(self) -> int:
        """Fold what a crashed run appended to the side file into the journal.

        A line counts only while the journal has the message in an earlier open state
        of the same run (a row the writer had not committed); then the journal is
        synced and the side file emptied. Returns how many messages changed.
        """
        if self._writer is not None:
            raise RuntimeError("replay_steps while a flush writes behind")
        # This process's side file and those of a split flush's workers.
        paths = sorted(self.path.parent.glob(f"{glob.escape(self.path.name)}-steps*"))
        lines: list[bytes] = []
        for path in paths:
            try:
                # Line by line of each file: one cut short by a crash ends in its own file.
                lines += path.read_bytes().splitlines()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise JournalError(f"journal {path}: {exc}") from exc
        if not lines:
            return 0
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by the crash: its write never returned
                continue
            if isinstance(row, list) and len(row) == len(UPSERT_COLUMNS):
                rows.append(tuple(row))
        current = {e.key: e for e in self.unfinished()}
        due: dict[str, tuple[object, ...]] = {}
        for row in rows:  # in the order written: the furthest step of each message wins
            entry = current.get(str(row[0]))
            if entry is None or entry.run_id != row[2] or row[3] not in STEP_ORDER:
                continue
            reached = due.get(entry.key, (None, None, None, entry.state))[3]
            if STEP_ORDER.index(str(row[3])) > STEP_ORDER.index(str(reached)):
                due[entry.key] = row
        if due:
            with self._transaction() as db:
                db.executemany(UPSERT, list(due.values()))
        try:
            self.sync()
        except JournalError as exc:
            # Kept for the next recovery (replaying it again changes nothing): recovery
            # goes on, or what the crashed run held would stay on hold.
            log.error("%s; %s is kept", exc, ", ".join(map(str, paths)))
            return len(due)
        for path in paths:
            self._truncate_steps(path)
        return len(due)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        return transaction(self._db, self.path)

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
            if state in (SENDING, ACCEPTED):
                # Before a message goes out, and once the smarthost has it: on disk (the
                # page cache) before this returns, whatever becomes of the process; the
                # writer commits it soon after.
                self._append_steps(values)
            self._writer.put(values)
            return
        if len(values) == 1:
            # One statement is its own transaction (autocommit).
            try:
                self._db.execute(UPSERT, values[0])
            except sqlite3.Error as exc:
                raise JournalError(f"journal {self.path}: {exc}") from exc
            return
        with self._transaction() as db:
            db.executemany(UPSERT, values)

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
        row = self._db.execute(SELECT + " WHERE key = ?", (key,)).fetchone()
        return entry_of(row) if row else None

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
            SELECT + f" WHERE state IN ({marks}) ORDER BY updated",
            tuple(sorted(OPEN_STATES)),
        ).fetchall()
        return [entry_of(r) for r in rows]

    def recent(self, since: float) -> list[Entry]:
        rows = self._db.execute(
            SELECT + " WHERE updated >= ? ORDER BY updated", (since,)
        ).fetchall()
        return [entry_of(r) for r in rows]

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
        return [event_of(row) for row in rows]

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
