"""A copy of a Postfix queue directory as a MailQueue: rescue mail with no Postfix running.

The copy is changed only by moving files, never by deleting them. A message
this tool holds moves to ``queue-rescue/held/`` (keeping its path below the
queue directory, so it can go back where it was), one a smarthost accepted
to ``queue-rescue/done/``. The journal of the runs on a copy lives in
``queue-rescue/`` too: recovery then only ever looks at this copy. A second
run finds nothing left to send, and the copy shows what was rerouted.

Mail in ``incoming/`` and ``active/`` counts as deferred: in a copy nothing
is being delivered, and Postfix itself would try that mail again on start.
``maildrop/`` (not yet picked up, another file format) is not read.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from rescue.errors import QueueFileError, RescueError
from rescue.journal.recovery import RecoveryReport
from rescue.journal.store import ACCEPTED, DELETED, OPEN_STATES, Journal
from rescue.model import Envelope, QueuedMessage, Recipient
from rescue.postfix.commands import valid_queue_id
from rescue.postfix.deferlog import DeferEntry, read_defer_log
from rescue.postfix.listing import BadLine
from rescue.postfix.queue import MailQueue
from rescue.postfix.queuefile import QueueFile, notify_text, read_queue_file

log = logging.getLogger(__name__)

# What this tool adds to a copy (or an export): journal, lock, held/ and done/.
SIDE_FOLDER = "queue-rescue"
HELD_FOLDER = "held"
DONE_FOLDER = "done"
JOURNAL_NAME = "journal.sqlite3"

# Queues whose mail waits for delivery (listed as "deferred"), and the one Postfix's
# admin put mail on hold in (listed as "hold", never selected).
WAITING_QUEUES = ("deferred", "active", "incoming")
HOLD_QUEUE = "hold"
DEFER_LOGS = "defer"
# mail_queue.h MAIL_QUEUE_STAT_READY: cleanup gives the owner rwx once a queue file is
# complete; showq and the queue manager pass over a file without it.
READY_MODE = stat.S_IRWXU
# The master holds an flock on this file while Postfix runs (master.c, myflock).
MASTER_PID = PurePosixPath("pid/master.pid")


# Where a message goes from where it is (both below the queue directory); None: not from here.
_Target = Callable[[PurePosixPath], PurePosixPath | None]


class SpoolError(RescueError):
    """A folder is not a usable copy of a queue directory."""


@dataclass(frozen=True, slots=True)
class BadFile(BadLine):
    """A file of a spool copy or an export that cannot be used: reported, then skipped."""

    path: str = ""


def bad_file(path: Path, problem: str, queue_id: str | None = None) -> BadFile:
    return BadFile(number=0, problem=problem, queue_id=queue_id, path=str(path))


# --- moving files safely --------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in a folder survive a power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def move(src: Path, dst: Path, touched: set[Path]) -> None:
    """Rename src to dst (creating dst's folders); remember the folders to fsync.

    Refuses to replace a file: nothing the user has is ever overwritten.
    """
    if dst.exists():
        raise FileExistsError(f"{dst} already exists")
    created = [p for p in (dst.parent, *dst.parent.parents) if not p.exists()]
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)
    touched.update((src.parent, dst.parent, *(p.parent for p in created)))


def sync_folders(touched: Iterable[Path]) -> None:
    for folder in sorted(set(touched)):
        try:
            fsync_dir(folder)
        except OSError as exc:
            log.warning("cannot fsync %s: %s", folder, exc)


def free_name(path: Path) -> Path:
    """`path`, or `path.1`, `path.2`, ... whichever does not exist yet (for done/)."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate


def _regular_files(folder: Path) -> Iterator[Path]:
    """Every entry below `folder` that is not a folder, hashed subfolders included."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.is_dir(follow_symlinks=False):
            yield from _regular_files(Path(entry.path))
        else:
            yield Path(entry.path)


def postfix_running(root: Path) -> bool:
    """True while a Postfix master runs on this queue directory (on this host)."""
    try:
        fd = os.open(root / MASTER_PID, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops our own shared lock
    return False


def _pending(qf: QueueFile, entries: dict[str, DeferEntry]) -> tuple[Recipient, ...]:
    """Pending recipients with their delay reasons (matched by record offset, else address)."""
    by_offset = {e.offset: e for e in entries.values() if e.offset is not None}
    recipients = []
    for rcpt in qf.pending():
        entry = by_offset.get(rcpt.offset) or entries.get(rcpt.address)
        recipients.append(
            Recipient(
                address=rcpt.address,
                delay_reason=entry.reason if entry else "",
                orig_rcpt=rcpt.dsn_orcpt,
                notify=notify_text(rcpt.notify),
            )
        )
    return tuple(recipients)


class SpoolQueue:
    """A MailQueue over a copy of a Postfix queue directory; no Postfix may run on it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.side = self.root / SIDE_FOLDER
        self._held = PurePosixPath(SIDE_FOLDER, HELD_FOLDER)
        self._done = PurePosixPath(SIDE_FOLDER, DONE_FOLDER)
        self._where: dict[str, PurePosixPath] = {}  # queue id -> path below root

    @property
    def journal_path(self) -> Path:
        return self.side / JOURNAL_NAME

    def check(self) -> None:
        """Raise SpoolError unless `root` is a queue directory no Postfix runs on."""
        if not self.root.is_dir():
            raise SpoolError(f"{self.root}: no such folder")
        queues = (*WAITING_QUEUES, HOLD_QUEUE)
        if not any((self.root / q).is_dir() for q in queues):
            raise SpoolError(
                f"{self.root} does not look like a Postfix queue directory "
                f"(none of {', '.join(f'{q}/' for q in queues)})"
            )
        if postfix_running(self.root):
            raise SpoolError(
                f"Postfix is running on {self.root} ({MASTER_PID} is locked): "
                "work on a copy, or stop Postfix first"
            )

    # --- reading ------------------------------------------------------------------------

    def listing(self) -> Iterator[QueuedMessage | BadLine]:
        """Every message file, each queue id once; unusable files come as BadFile."""
        logs = {path.name: path for path in _regular_files(self.root / DEFER_LOGS)}
        self._where.clear()
        # The listing's own record of what it listed: `_where` (where each file is now)
        # also changes while a flush holds, releases and re-indexes part way through.
        listed: dict[str, PurePosixPath] = {}
        for rel in self._message_files():
            queue_id = rel.name
            path = self.root / rel
            if rel.parts[0] == SIDE_FOLDER:
                queue_name = HOLD_QUEUE  # held by us
            else:
                queue_name = "deferred" if rel.parts[0] in WAITING_QUEUES else HOLD_QUEUE
            if not valid_queue_id(queue_id):
                yield bad_file(path, "not a queue file (the name is not a queue id)")
                continue
            if queue_id in listed:
                if self._where.get(queue_id) == rel:
                    continue  # listed already, and moved here since (held, then released)
                seen = self.root / listed[queue_id]
                yield bad_file(path, f"same queue id as {seen}; skipped", queue_id)
                continue
            problem = self._unusable(path, rel)
            if problem:
                yield bad_file(path, problem, queue_id)
                continue
            try:
                qf = read_queue_file(path, queue_id)
            except QueueFileError as exc:
                yield bad_file(path, exc.problem, queue_id)
                continue
            except OSError as exc:
                yield bad_file(path, f"cannot read: {exc.strerror or exc}", queue_id)
                continue
            self._where[queue_id] = listed[queue_id] = rel
            entries: dict[str, DeferEntry] = {}
            if queue_name != HOLD_QUEUE and queue_id in logs:
                try:
                    entries = read_defer_log(logs[queue_id])
                except OSError as exc:
                    log.warning("%s: cannot read defer log %s: %s", queue_id, logs[queue_id], exc)
            yield QueuedMessage(
                queue_id=queue_id,
                queue_name=queue_name,
                arrival_time=int(qf.arrival_time),
                size=qf.message_size,
                sender=qf.sender,
                recipients=_pending(qf, entries),
            )

    def _message_files(self) -> Iterator[PurePosixPath]:
        """Paths below root: ours on hold first (they win over a stray copy), then queues."""
        for folder in (self._held, *WAITING_QUEUES, HOLD_QUEUE):
            for path in _regular_files(self.root / folder):
                yield PurePosixPath(path.relative_to(self.root))

    @staticmethod
    def _unusable(path: Path, rel: PurePosixPath) -> str | None:
        try:
            mode = path.lstat().st_mode
        except OSError as exc:
            return f"cannot read: {exc.strerror or exc}"
        if not stat.S_ISREG(mode):
            return "not a regular file"
        if rel.parts[0] == "incoming" and mode & READY_MODE != READY_MODE:
            return (
                f"not marked complete (mode {stat.S_IMODE(mode):04o}): still being written "
                "when the copy was made, or the copy did not keep file modes"
            )
        return None

    def read_envelope(self, queue_id: str) -> Envelope:
        """Envelope and content of a message we hold; FileNotFoundError when it is gone."""
        rel = self._locate(queue_id)
        if rel is None:
            raise FileNotFoundError(queue_id)
        return read_queue_file(self.root / rel, queue_id).envelope()

    # --- changing the copy (moves only) -------------------------------------------------

    def hold(self, queue_ids: Iterable[str]) -> set[str]:
        """Move waiting messages to queue-rescue/held/; returns those moved."""

        def target(rel: PurePosixPath) -> PurePosixPath | None:
            return self._held / rel if rel.parts[0] in WAITING_QUEUES else None

        return self._move_all(queue_ids, target, "hold")

    def release(self, queue_ids: Iterable[str]) -> set[str]:
        """Move messages we hold back where they were."""

        def target(rel: PurePosixPath) -> PurePosixPath | None:
            return rel.relative_to(self._held) if rel.is_relative_to(self._held) else None

        return self._move_all(queue_ids, target, "release")

    def delete(self, queue_ids: Iterable[str]) -> set[str]:
        """Move messages we hold to queue-rescue/done/ (they are rerouted; kept for the record)."""

        def target(rel: PurePosixPath) -> PurePosixPath | None:
            if not rel.is_relative_to(self._held):
                return None
            return self._done / rel.relative_to(self._held)

        return self._move_all(queue_ids, target, "delete")

    def _move_all(self, queue_ids: Iterable[str], target_of: _Target, what: str) -> set[str]:
        moved: set[str] = set()
        touched: set[Path] = set()
        indexed = False
        for queue_id in queue_ids:
            rel = self._where.get(queue_id)
            if (rel is None or not (self.root / rel).exists()) and not indexed:
                self._index()  # not seen yet, or moved meanwhile: look once per batch
                indexed = True
                rel = self._where.get(queue_id)
            target = target_of(rel) if rel is not None else None
            if rel is None or target is None:
                continue
            dst = self.root / target
            if what == "delete":
                dst = free_name(dst)
            try:
                move(self.root / rel, dst, touched)
            except FileNotFoundError:
                self._where.pop(queue_id, None)
                continue
            except OSError as exc:
                log.error("%s: cannot %s %s: %s", queue_id, what, self.root / rel, exc)
                continue
            self._where[queue_id] = PurePosixPath(dst.relative_to(self.root))
            moved.add(queue_id)
        sync_folders(touched)
        return moved

    def _index(self) -> None:
        """Where each message file is, by name only (the first of a queue id wins)."""
        self._where.clear()
        for rel in self._message_files():
            self._where.setdefault(rel.name, rel)

    def _locate(self, queue_id: str) -> PurePosixPath | None:
        rel = self._where.get(queue_id)
        if rel is None or not (self.root / rel).exists():
            self._index()
            rel = self._where.get(queue_id)
        return rel


# --- after recovery: what the journal no longer tracks -------------------------------


def settle_strays(journal: Journal, queue: MailQueue) -> RecoveryReport:
    """Files in queue-rescue/held/ that no unfinished journal entry covers.

    Recovery acts only on what the journal tracks; after it, a held file the
    journal says was accepted goes to done/, any other goes back (also when the
    journal was lost). Without this such a file would stay hidden in held/.
    """
    held = {
        item.key: item
        for item in queue.listing()
        if isinstance(item, QueuedMessage) and item.queue_name == HOLD_QUEUE
    }
    if not held:
        return RecoveryReport()
    states = journal.states(held)
    strays = {k: m for k, m in held.items() if states.get(k) not in OPEN_STATES}
    sent = [m.queue_id for k, m in strays.items() if states.get(k) in (ACCEPTED, DELETED)]
    back = [m.queue_id for k, m in strays.items() if states.get(k) not in (ACCEPTED, DELETED)]
    deleted = queue.delete(sent)
    released = queue.release(back)
    for queue_id in sorted(deleted):
        log.info("%s: recovery: accepted in an earlier run; moved to done", queue_id)
    for queue_id in sorted(released):
        log.info("%s: recovery: held by an earlier run the journal lost; moved back", queue_id)
    return RecoveryReport(deleted=tuple(sorted(deleted)), released=tuple(sorted(released)))
