"""Read held messages' queue files in a helper process, ahead of the SMTP sessions.

A flush is bound by one Python thread's CPU; parsing queue files is a fifth of it.
A forked helper reads them in batches, in the order the senders will want them,
while the event loop talks SMTP. Whatever the helper cannot settle (a file not
where it looked, not readable) is left to the ordinary reader in the flush.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.process
import contextlib
import ctypes
import multiprocessing
import os
import signal
from collections.abc import Sequence

from rescue.errors import QueueFileError
from rescue.model import Envelope
from rescue.postfix.queuefile import read_queue_file
from rescue.postfix.reader import hold_paths

BATCH = 64  # queue files a helper call reads
AHEAD = 4  # batches asked for before the senders need them

# What the helper found for one queue id.
FOUND = "found"
BROKEN = "broken"  # a QueueFileError: its text follows
ASK_AGAIN = "ask-again"  # not where it looked, or not readable: the flush's reader decides

Result = tuple[str, Envelope | str | None]

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def read_batch(queue_dir: str, queue_ids: Sequence[str]) -> dict[str, Result]:
    """In the helper process: each held message's envelope, or what went wrong."""
    out: dict[str, Result] = {}
    for queue_id in queue_ids:
        out[queue_id] = (ASK_AGAIN, None)
        for path in hold_paths(queue_dir, queue_id):
            try:
                out[queue_id] = (FOUND, read_queue_file(path, queue_id).envelope())
            except FileNotFoundError:
                continue
            except QueueFileError as exc:
                out[queue_id] = (BROKEN, exc.problem)
            except OSError:
                pass
            break
    return out


def _die_with_parent(parent: int) -> None:
    """In the helper: end with the flush's process, also when that one is killed
    (SIGKILL leaves no time to stop it; an orphan would wait for batches for ever and
    keep the flush's stdout and stderr open). Linux's PR_SET_PDEATHSIG."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before that took effect
        os._exit(0)


class Prefetcher:
    """Hands out envelopes read ahead by one forked helper process.

    Create it in the event loop, before any other thread starts (the helper is
    forked at once, and a fork copies only the calling thread); `add` the
    queue ids in the order they will be sent, as they are held; close() it when
    the flush ends.
    """

    def __init__(self, queue_dir: str, order: Sequence[str] = ()) -> None:
        self._queue_dir = queue_dir
        self._batches: dict[int, list[str]] = {}  # batch number -> ids, until asked for
        self._left: dict[int, int] = {}  # batch number -> envelopes not yet handed out
        self._batch_of: dict[str, int] = {}  # queue id -> its batch, until taken
        self._futures: dict[int, asyncio.Future[dict[str, Result]]] = {}
        self._added = 0  # batches made so far
        self._asked = 0  # batches submitted so far
        self._wanted = 0  # the highest batch a sender has asked for, plus AHEAD
        self._pool = concurrent.futures.ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("fork"),
            initializer=_die_with_parent,
            initargs=(os.getpid(),),
        )
        # Fork the helper now, while this is the only thread; it waits for batches.
        self._pool.submit(read_batch, queue_dir, ())
        self.add(order)

    def add(self, queue_ids: Sequence[str]) -> None:
        """Read these too, after those added before."""
        for start in range(0, len(queue_ids), BATCH):
            batch = list(queue_ids[start : start + BATCH])
            n = self._added
            self._added += 1
            self._batches[n] = batch
            self._left[n] = len(batch)
            self._batch_of.update(dict.fromkeys(batch, n))
        self._ask_up_to(max(self._wanted, AHEAD - 1))

    def _ask_up_to(self, last: int) -> None:
        self._wanted = max(self._wanted, last)
        while self._asked <= last and self._asked < self._added:
            n = self._asked
            submitted = self._pool.submit(read_batch, self._queue_dir, self._batches.pop(n))
            self._futures[n] = asyncio.wrap_future(submitted)
            self._asked += 1

    async def get(self, queue_id: str) -> Envelope | None:
        """The envelope, or None when the flush's own reader must look.

        Raises QueueFileError for a broken queue file, as the reader would.
        """
        n = self._batch_of.pop(queue_id, None)
        if n is None:
            return None
        self._ask_up_to(n + AHEAD)
        try:
            # Shielded: several senders wait on one batch; one being cancelled must
            # not cancel it for the others.
            results = await asyncio.shield(self._futures[n])
        except (concurrent.futures.process.BrokenProcessPool, OSError):
            return None  # the helper is gone: the flush reads the files itself
        finally:
            # Each envelope is handed out once; a batch is let go when all are taken,
            # so memory holds a few batches, not the whole queue.
            self._left[n] -= 1
            if self._left[n] <= 0:
                del self._left[n]
                self._futures.pop(n, None)
        kind, value = results.pop(queue_id, (ASK_AGAIN, None))
        if kind == FOUND and isinstance(value, Envelope):
            return value
        if kind == BROKEN:
            raise QueueFileError(queue_id, str(value))
        return None

    def still_held(self, queue_id: str) -> bool:
        """Whether the message read ahead is still on hold: someone may have released it
        (`postsuper -H`) since, and then it is Postfix's again. A few stat() calls."""
        return any(os.path.exists(path) for path in hold_paths(self._queue_dir, queue_id))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
