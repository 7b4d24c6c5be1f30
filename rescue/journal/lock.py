"""One instance at a time: an flock on a file next to the journal, naming its holder.

Three files, each an flock the kernel drops when its process dies:

- the queue lock (`journal.sqlite3.lock`): whoever changes the queue holds it; a
  flush or an export for its whole run, the service for each cycle only;
- the turn (`journal.sqlite3.lock.next`): a flush or export that waits for the queue
  lock takes it first and keeps it to the end; while it is taken the service starts
  no cycle, so a waiting flush gets the queue when the cycle under way ends;
- the service lock (`journal.sqlite3.lock.service`): `run` holds it for its life, so
  two services never run on one journal.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from rescue.errors import JournalError, LockedError

# How often a waiting flush tries the lock again.
POLL = 0.2


def turn_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".next")


def service_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".service")


class InstanceLock:
    """Held for the whole command; the kernel drops it if the process dies."""

    def __init__(self, path: Path, command: str, *, note: str = "since") -> None:
        self.path = path
        self.command = command
        self.note = note
        self._fd: int | None = None

    def acquire(self) -> None:
        holder = self.try_acquire()
        if holder is not None:
            raise LockedError(self.path, holder)

    def try_acquire(self) -> str | None:
        """None once held; else who holds it (as its file names them)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise JournalError(f"cannot open lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            return holder
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
        text = f"pid {os.getpid()} (queue-rescue {self.command}, {self.note} {stamp})\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self._fd = fd
        return None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> InstanceLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def holder_of(path: Path) -> str | None:
    """Who holds the lock at `path`, from its file; None when nobody does.

    Reading, not trying, the lock: a try would make a flush that tries at the same
    moment wait a round. The file is emptied on release; a holder that died left
    its line, so the line counts only while its pid lives.
    """
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None
    words = text.split()
    if len(words) < 2 or words[0] != "pid" or not words[1].isdigit():
        return None
    return text if alive(int(words[1])) else None


Progress = Callable[[str, float], None]


class WaitingLock:
    """The queue lock for a flush or an export: waits up to `wait` seconds for it.

    Takes the turn first (so the service starts no new cycle), then the queue lock
    once the cycle under way ends. `progress(holder, waited)` is called while waiting.
    Gives up with LockedError, naming the holder, when `wait` has passed.
    """

    def __init__(
        self,
        path: Path,
        command: str,
        *,
        wait: float,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self.wait = wait
        self._queue = InstanceLock(path, command)
        self._turn = InstanceLock(turn_path(path), command, note="waiting since")
        self._progress = progress
        self._clock = clock
        self._sleep = sleep

    def acquire(self) -> None:
        started = self._clock()
        try:
            self._until(self._turn, started)
            self._until(self._queue, started)
        except BaseException:
            self._turn.release()
            raise

    def _until(self, lock: InstanceLock, started: float) -> None:
        while True:
            holder = lock.try_acquire()
            if holder is None:
                return
            waited = self._clock() - started
            # Name who has the queue: the turn's holder only waits for it too.
            current = holder_of(self.path) or holder
            if waited >= self.wait:
                raise LockedError(self.path, current, waited=waited)
            if self._progress is not None:
                self._progress(current, waited)
            self._sleep(min(POLL, self.wait - waited))

    def release(self) -> None:
        self._queue.release()
        self._turn.release()

    def __enter__(self) -> WaitingLock:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


class CycleLock:
    """The queue lock as the service takes it: for one cycle, unless someone waits."""

    def __init__(self, path: Path) -> None:
        self._queue = InstanceLock(path, "run", note="cycle since")
        self._turn = InstanceLock(turn_path(path), "run")

    def take(self) -> str | None:
        """None: held until give_back(); else who has (or waits for) the queue."""
        holder = self._turn.try_acquire()
        if holder is not None:
            return holder
        try:
            return self._queue.try_acquire()
        finally:
            self._turn.release()

    def give_back(self) -> None:
        self._queue.release()
