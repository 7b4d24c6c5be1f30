"""A thread that writes journal rows behind the event loop, in order, many per commit.

SQLite lets go of the GIL while it writes, so a second thread puts that work on
the machine's other core. Rows are written in the order they were given; a
drain() waits until everything given so far is committed.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rescue.errors import JournalError

_STOP = object()
DRAIN_CHECK = 1.0  # seconds between looks at whether the writer thread still runs
Rows = Sequence[tuple[Any, ...]]


class BackgroundWriter:
    def __init__(self, path: Path, statement: str, pragmas: Sequence[str] = ()) -> None:
        """Write with `statement`; `pragmas` are run on the thread's connection first."""
        self._path = path
        self._statement = statement
        self._pragmas = tuple(pragmas)
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    def put(self, rows: Rows) -> None:
        self._raise_failure()
        self._queue.put(rows)

    def drain(self) -> None:
        """Return once every row given so far is committed (or raise why it was not)."""
        done = threading.Event()
        self._queue.put(done)
        while not done.wait(DRAIN_CHECK):
            if not self._thread.is_alive():  # it died without saying why
                self._failure = self._failure or RuntimeError("the writer thread has stopped")
                break
        self._raise_failure()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        self._raise_failure()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise JournalError(f"journal {self._path}: {self._failure}") from self._failure

    def _run(self) -> None:
        db = sqlite3.connect(str(self._path), isolation_level=None, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")
        for pragma in self._pragmas:
            db.execute(pragma)
        try:
            while True:
                items = [self._queue.get()]
                while not self._queue.empty():  # group commit: whatever has piled up
                    items.append(self._queue.get())
                batch = [row for item in items if isinstance(item, Sequence) for row in item]
                if batch and self._failure is None:
                    self._write(db, batch)
                for item in items:
                    if isinstance(item, threading.Event):
                        item.set()
                if any(item is _STOP for item in items):
                    return
        finally:
            db.close()

    def _write(self, db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
        try:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(self._statement, rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._failure = exc
            if db.in_transaction:
                db.execute("ROLLBACK")
