"""A large flush split over worker processes, so that both CPUs of a small server work.

One Python thread carries a flush's SMTP sessions, and that thread's CPU is what a
large flush waits for. Here the parent reads the queue's listing and hands each
message to one of a few forked workers, each a whole Flush of its own (core.py): its
own holds, SMTP sessions, settles, journal connection and side file. Every safety
property of a flush therefore holds in each worker. The parent lists, reports, and,
should a worker die, repairs what it left (the journal's recovery) once the other
workers have ended, instead of at the next run.

A message goes to the worker its queue id hashes to: listed twice, it reaches the
same worker, which takes it once. Parent and worker talk over a socket pair:
batches one way, outcomes the other, each a length-prefixed pickle.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rescue.aio import outcome_of
from rescue.errors import RescueError
from rescue.flush.core import Flush
from rescue.flush.plan import Outcome, Summary, batched, chain
from rescue.model import Selected

log = logging.getLogger(__name__)

# A selection whose first part is smaller than this is flushed in one process.
SPLIT_FROM = 200
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
_LENGTH = struct.Struct("!I")

# Builds worker `index`'s Flush in the worker, reporting through the callable given.
FlushFactory = Callable[[int, Callable[[Outcome], None]], Flush]


class WorkerDied(RescueError):
    """A worker process ended without saying how its flush ended."""


def worker_of(queue_id: str, workers: int) -> int:
    """The worker a message goes to: the same for the same queue id."""
    return zlib.crc32(queue_id.encode()) % workers


def split(batch: Sequence[Selected], workers: int) -> list[list[Selected]]:
    """One batch as each worker's share, each in the batch's order (oldest first)."""
    shares: list[list[Selected]] = [[] for _ in range(workers)]
    for selected in batch:
        shares[worker_of(selected.message.queue_id, workers)].append(selected)
    return shares


def portable(exc: BaseException) -> BaseException:
    """The error as the parent can receive it: itself when it pickles, else the nearest
    of its classes that takes just a message (PostsuperFailed becomes PostfixError), so
    that the command ends with the same exit code."""
    for cls in type(exc).__mro__:
        if not issubclass(cls, BaseException):
            continue
        try:
            candidate = exc if cls is type(exc) else cls(str(exc))
            pickle.loads(pickle.dumps(candidate))  # noqa: S301  (our own object)
        except Exception:  # noqa: S112  (not this class: try its base)
            continue
        return candidate
    return RescueError(str(exc))  # pragma: no cover  (Exception itself always pickles)


_OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))


def astuple(outcome: Outcome) -> tuple[object, ...]:
    """The outcome's values in field order (dataclasses.astuple would copy them deeply)."""
    return tuple(getattr(outcome, name) for name in _OUTCOME_FIELDS)


def frame(value: object) -> bytes:
    data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next value; None at the end of the stream (also one cut short)."""
    try:
        header = await reader.readexactly(_LENGTH.size)
        data = await reader.readexactly(_LENGTH.unpack(header)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    return pickle.loads(data)  # noqa: S301  (our own child, over our own socket pair)


@dataclass
class End:
    """A worker's last message: what it could not give back, and why it stopped."""

    left_on_hold: list[str] = field(default_factory=list)
    error: BaseException | None = None
    stopped: bool = False  # by SIGTERM (from the parent, or anyone else)


# --- in a worker -------------------------------------------------------------------------


class _Outbox:
    """A worker's outcomes to the parent: those of one turn of the event loop together."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[Outcome] = []

    def outcome(self, outcome: Outcome) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self.send)
        self._pending.append(outcome)

    def send(self) -> None:
        pending, self._pending = self._pending, []
        if pending and not self._writer.is_closing():
            # As tuples: pickling a slotted dataclass asks for its fields each time.
            self._writer.write(frame([astuple(o) for o in pending]))


async def _batches(reader: asyncio.StreamReader) -> AsyncIterator[list[Selected]]:
    while (batch := await read_frame(reader)) is not None:
        yield batch


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(option, value)


def _die_with_parent(parent: int) -> None:
    """Be stopped as by SIGTERM (what is untouched goes back to Postfix) when the
    parent dies, also by SIGKILL."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before that took effect
        os.kill(os.getpid(), signal.SIGTERM)


async def _work(index: int, sock: socket.socket, factory: FlushFactory) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def stop() -> None:
        if not task.cancelling():  # once: the settle that follows must not be cut short
            task.cancel()

    reader, writer = await asyncio.open_unix_connection(sock=sock)
    outbox = _Outbox(writer)
    end = End()
    flush: Flush | None = None
    loop.add_signal_handler(signal.SIGTERM, stop)
    try:
        flush = factory(index, outbox.outcome)
        await flush.run(_batches(reader))
    except asyncio.CancelledError:
        end.stopped = True  # SIGTERM: what this worker held is settled, as in any flush
    except Exception as exc:
        log.debug("worker %d failed", index, exc_info=exc)
        end.error = portable(exc)
    finally:
        # A SIGTERM from now on changes nothing (and must not kill the worker before
        # the parent has its End): settled is settled.
        loop.add_signal_handler(signal.SIGTERM, _ignore)
    if flush is not None:
        end.left_on_hold = list(flush.left_on_hold)
    outbox.send()
    writer.write(frame(end))
    with contextlib.suppress(ConnectionError):  # the parent is gone: the journal has it all
        await writer.drain()
    writer.close()


def _ignore() -> None:
    pass


def _worker_main(index: int, sock: socket.socket, factory: FlushFactory, parent: int) -> int:
    # Ctrl-C reaches the whole process group: the parent hears it and tells each
    # worker once, with SIGTERM; a second Ctrl-C must not cut a worker's settle short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)  # the parent's event loop's
    asyncio.events._set_running_loop(None)  # forked inside the parent's running loop
    _die_with_parent(parent)
    asyncio.run(_work(index, sock, factory))
    return 0


# --- in the parent -----------------------------------------------------------------------


class _Worker:
    def __init__(self, index: int, pid: int) -> None:
        self.index = index
        self.pid = pid
        self.end: End | None = None
        self.status = 0  # as os.waitpid gives it
        self.writer: asyncio.StreamWriter | None = None
        self.listener: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        return self.listener is not None and not self.listener.done()


class ParallelFlush:
    """Flush a selection over `workers` forked processes; used as a Flush is.

    A selection whose first part is smaller than `split_from` is flushed by one Flush
    in this process (`single()`): forking would cost more than it saves.
    """

    def __init__(
        self,
        *,
        workers: int,
        factory: FlushFactory,
        single: Callable[[], Flush],
        report: Callable[[Outcome], None],
        repair: Callable[[], None],
        split_from: int = SPLIT_FROM,
        around_fork: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext,
    ) -> None:
        """`repair()` runs the journal's recovery, after a worker died (all have ended);
        `around_fork()` is entered while the workers are forked (the journal closes its
        connection meanwhile: see Journal.closed_for_fork)."""
        self._count = workers
        self._factory = factory
        self._single = single
        self._report_cb = report
        self._repair = repair
        self._split_from = split_from
        self._around_fork = around_fork
        self.summary = Summary()
        self.left_on_hold: list[str] = []
        self.workers_used = 1
        self._workers: list[_Worker] = []
        self._report_failed = False
        self._dropped = 0  # messages meant for a worker that had ended (still deferred)

    async def run(
        self, selection: Sequence[Selected] | AsyncIterable[Sequence[Selected]]
    ) -> Summary:
        batches = aiter(selection if isinstance(selection, AsyncIterable) else batched(selection))
        first = await anext(batches, None)
        if first is None:
            return self.summary
        if self._count < 2 or len(first) < self._split_from:
            flush = self._single()
            self.summary = flush.summary
            try:
                return await flush.run(chain(first, batches))
            finally:
                self.left_on_hold = flush.left_on_hold
        try:
            interrupted = await self._start()
        except OSError as exc:  # fork: EAGAIN, ENOMEM (those forked have ended)
            log.warning("cannot start flush workers (%s); flushing in this process", exc)
            self._count = 1
            return await self.run(chain(first, batches))
        self.workers_used = self._count
        log.info("flush split over %d worker processes", self._count)
        error = None
        if not interrupted:
            try:
                await self._feed(chain(first, batches))
            except asyncio.CancelledError:
                interrupted = True
            except Exception as exc:  # e.g. the listing failed: what the workers hold is sent
                error = exc
        interrupted = await self._finish(interrupted=interrupted)
        self.summary.elapsed = time.monotonic() - self.summary.started
        if interrupted:
            raise asyncio.CancelledError
        if error is not None:
            raise error
        self._raise_for_workers()
        return self.summary

    def _raise_for_workers(self) -> None:
        """A worker that died, was stopped on its own, or failed ends the run with an error."""
        died = [w for w in self._workers if w.end is None or w.status != 0]
        if died:
            pids = ", ".join(str(w.pid) for w in died)
            raise WorkerDied(f"flush worker(s) {pids} died; recovery settled what they held")
        stopped = [w for w in self._workers if w.end is not None and w.end.stopped]
        if stopped or self._dropped:
            pids = ", ".join(str(w.pid) for w in stopped)
            raise WorkerDied(
                f"flush worker(s) {pids} were stopped (SIGTERM) before the end; they gave "
                f"back what they had not sent, and {self._dropped} message(s) meant for "
                "them were not taken (still deferred)"
            )
        errors = [w.end.error for w in self._workers if w.end is not None and w.end.error]
        if errors:
            raise errors[0]

    # --- the workers' lives ---------------------------------------------------------------

    async def _start(self) -> bool:
        """Fork the workers, before this process starts a thread (a fork copies one);
        whether this run was cancelled meanwhile."""
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        kept: list[socket.socket] = []  # this process's ends of the pairs made so far
        # What exists now stays out of the workers' garbage collections: a collection
        # touches every object it looks at, and each page it touches stops being shared
        # with the parent (copy on write), so each worker would copy the parent's heap.
        gc.freeze()
        # Orphans of a worker (its postsuper: it runs in a session of its own and goes on
        # when the worker is killed) become this process's children, to be waited for.
        _prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            with self._around_fork():
                self._fork(parent, kept)
        except OSError:
            for sock in kept:  # those forked see the end of their selection and exit
                sock.close()
            for worker in self._workers:  # no thread yet: a fork may still follow
                os.waitpid(worker.pid, 0)
            self._workers.clear()
            raise
        finally:
            gc.unfreeze()  # in this process, collected as before
        # Through a cancellation too: each worker must have its listener, or nothing
        # would tell it the selection ended (or wait for it before a repair).
        try:
            _, cancelled = await outcome_of(self._connect(kept))
        except BaseException:
            self._abandon(kept)
            raise
        return cancelled

    def _abandon(self, kept: list[socket.socket]) -> None:
        """The workers could not all be connected to: stop and reap every one (they hold
        nothing yet: no batch was sent), so that none is left running."""
        for worker in self._workers:
            if worker.writer is not None:
                worker.writer.transport.abort()
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        for sock in kept:
            sock.close()
        for worker in self._workers:
            if worker.listener is not None:
                worker.listener.cancel()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(worker.pid, 0)
        self._workers.clear()

    async def _connect(self, kept: list[socket.socket]) -> None:
        for worker, sock in zip(self._workers, kept, strict=True):
            reader, worker.writer = await asyncio.open_unix_connection(sock=sock)
            worker.listener = asyncio.create_task(self._listen(worker, reader))

    def _fork(self, parent: int, kept: list[socket.socket]) -> None:
        for index in range(self._count):
            ours, theirs = socket.socketpair()
            pid = os.fork()
            if pid == 0:  # the worker: never returns from here
                status = 1
                try:
                    for sock in (*kept, ours):
                        sock.close()
                    status = _worker_main(index, theirs, self._factory, parent)
                except BaseException as exc:
                    log.error("worker %d: %r", index, exc)
                finally:
                    os._exit(status)
            theirs.close()
            kept.append(ours)
            self._workers.append(_Worker(index, pid))

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        """The worker's outcomes until it ends; then it is reaped, whatever came.

        Recovery (repair) must never run while a worker still sends: this returns only
        once the worker's process has ended.
        """
        try:
            while True:
                try:
                    message = await read_frame(reader)
                    if message is None:
                        break
                    self._received(worker, message)
                except Exception as exc:  # a report we cannot read: the journal has it
                    log.error("flush worker %d: unreadable report (%r)", worker.index, exc)
        finally:
            _, worker.status = await asyncio.to_thread(os.waitpid, worker.pid, 0)

    def _received(self, worker: _Worker, message: Any) -> None:
        if isinstance(message, End):
            worker.end = message
            self.left_on_hold += message.left_on_hold
            return
        for values in message:
            self._report(Outcome(*values))

    def _report(self, outcome: Outcome) -> None:
        self.summary.add(outcome)
        try:
            self._report_cb(outcome)
        except Exception as exc:  # e.g. stdout closed: the workers go on all the same
            if not self._report_failed:
                log.error("cannot report outcomes any more (%r); the flush goes on", exc)
            self._report_failed = True

    async def _feed(self, batches: AsyncIterator[Sequence[Selected]]) -> None:
        async for batch in batches:
            for worker, share in zip(self._workers, split(batch, self._count), strict=True):
                if share and not (worker.alive and worker.writer is not None):
                    self._dropped += len(share)
                elif share and worker.writer is not None:
                    worker.writer.write(frame(share))
                    # Waits while the worker is well ahead (it reads on as it holds).
                    with contextlib.suppress(ConnectionError):
                        await worker.writer.drain()

    def _interrupt(self) -> None:
        """SIGTERM each worker: it gives back what it has not sent, as one flush does."""
        for worker in self._workers:
            if worker.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGTERM)

    async def _finish(self, *, interrupted: bool) -> bool:
        """Tell each worker the selection ended, wait until every one has; whether this
        run was interrupted (also while it waited: then the workers are told)."""
        if interrupted:
            self._interrupt()
        for worker in self._workers:
            if worker.writer is not None and not worker.writer.is_closing():
                with contextlib.suppress(OSError):
                    worker.writer.write_eof()
        for worker in self._workers:
            listener = worker.listener
            while listener is not None and not listener.done():
                try:
                    await asyncio.shield(listener)
                except asyncio.CancelledError:
                    if not interrupted:
                        interrupted = True
                        self._interrupt()
                except Exception as exc:  # a bug in the listener: the worker is waited for
                    log.error("flush worker %d: %r", worker.index, exc)
            if worker.writer is not None:
                worker.writer.close()
        died = [w for w in self._workers if w.end is None or w.status != 0]
        for worker in died:
            log.error(
                "flush worker %d (pid %d) ended unexpectedly (%s); giving back or deleting "
                "what it held, as after a crash",
                worker.index,
                worker.pid,
                _status_text(worker.status),
            )
        if died:
            _wait_for_orphaned_postsuper()  # what it holds, recovery must see on hold
            self._repair()
        return interrupted


def _wait_for_orphaned_postsuper() -> None:
    """Wait for a killed worker's postsuper (now this process's child): a hold it is
    still doing would otherwise put a message on hold after recovery looked."""
    me = os.getpid()
    while True:
        pids = [pid for pid in _children(me) if _command(pid) == "postsuper"]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            out += map(int, task.read_text().split())
    return out


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _status_text(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
