"""The flush: hold, read, send, settle; shared by the `flush` command and the service.

The order is what keeps mail safe. Every message this run holds ends either
accepted by a smarthost and deleted from Postfix, or released back to Postfix's
deferred queue, also when the run is cancelled; the journal records each step
before it is taken so that a crash is repaired by the next start (recovery.py).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import inspect
import itertools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from rescue.aio import outcome_of
from rescue.errors import (
    DeliveryError,
    JournalError,
    PostfixError,
    QueueFileError,
    RescueError,
)
from rescue.flush import holding
from rescue.flush.plan import (
    FAILED,
    SKIPPED_ACTION,
    EnvelopeReader,
    Item,
    Outcome,
    Summary,
    batched,
    chain,
    outcome_of_item,
    plan,
)
from rescue.flush.settle import Settling
from rescue.journal.store import ACCEPTED, SENDING, SKIPPED, Journal
from rescue.model import Envelope, Selected
from rescue.postfix.queue import MailQueue
from rescue.smarthost.pool import Dispatcher
from rescue.smarthost.session import Accepted, AcceptedWhileCancelled
from rescue.srs.rewriter import SrsRewriter

if TYPE_CHECKING:
    from rescue.flush.prefetch import Prefetcher

log = logging.getLogger(__name__)
T = TypeVar("T")

# `sending` is journaled for this many messages at a time (see Flush._claim).
CLAIM_AHEAD = 16
# Below this many messages (in the first batch) a helper process to read queue files
# costs more than it saves.
PREFETCH_FROM = 200
# The feeder holds the next batch once no more than this many held messages wait.
QUEUED_AHEAD = 500


class Flush(Settling):
    """One flush of a selection; `report` is called once per selected message."""

    def __init__(
        self,
        *,
        queue: MailQueue,
        journal: Journal,
        srs: SrsRewriter,
        dispatcher: Dispatcher,
        read_envelope: EnvelopeReader,
        report: Callable[[Outcome], None],
        primary: str,
        read_in_thread: bool = True,
        prefetch_from: str | None = None,
        stop_grace: float | None = None,
    ) -> None:
        """`stop_grace`: once the flush is cancelled, how long a message whose final dot
        is out may still wait for the smarthost's answer before its connection is
        dropped (it is then given back as uncertain); None waits the smarthost's timeout.
        """
        self._queue = queue
        self._journal = journal
        self._srs = srs
        self._dispatcher = dispatcher
        self._read = read_envelope
        self._report_cb = report
        self._primary = primary
        self.summary = Summary()
        self._open: dict[str, Item] = {}  # held by us, not yet settled
        self._accepted: list[Item] = []
        self._refused: list[Item] = []
        # A queue file read is a few microseconds; postcat is two process starts.
        self._read_in_thread = read_in_thread
        # The queue directory, when held messages' files may be read ahead by a helper.
        self._prefetch_from = prefetch_from
        self._prefetcher: Prefetcher | None = None
        self._senders: dict[str, str] = {}  # SRS address of each sender, made once a run
        self._todo: collections.deque[Item] = collections.deque()  # held, not yet sent
        self._fed = False  # every batch has been taken
        self._arrived = asyncio.Event()  # more in _todo, or _fed
        self._room = asyncio.Event()  # _todo is short enough for the next batch
        self._commands: concurrent.futures.ThreadPoolExecutor | None = None
        self._report_failed = False
        # Messages this run gave back to Postfix or found gone: a message listed again
        # later (it moved between queues while showq read them) is not taken twice.
        # Those a smarthost accepted are known to the journal (already_sent).
        self._given_back: set[str] = set()
        self._feed_error: BaseException | None = None
        self._stopping = False  # the flush is ending: no worker takes another message
        self._stop_grace = stop_grace
        # Held messages the closing settle could not give back or delete (postsuper
        # failed): on hold until the next run's recovery.
        self.left_on_hold: list[str] = []

    # --- planning (no change to the queue) --------------------------------------------

    def _report(self, item: Item, action: str) -> None:
        outcome = outcome_of_item(item, action)
        self.summary.add(outcome)
        try:
            self._report_cb(outcome)
        except Exception as exc:  # e.g. stdout closed by a pipe's reader: settle all the same
            if not self._report_failed:
                log.error("cannot report outcomes any more (%r); the flush goes on", exc)
            self._report_failed = True

    def _plan(self, selection: Sequence[Selected]) -> list[Item]:
        # The run's cache: a backlog has many messages from few senders.
        ready, broken = plan(selection, self._forward, self._primary)
        for item in broken:
            log.error("%s: %s; left in Postfix", item.queue_id, item.detail)
            self._report(item, FAILED)
        return ready

    # --- the flush ------------------------------------------------------------------------

    async def run(
        self, selection: Sequence[Selected] | AsyncIterable[Sequence[Selected]]
    ) -> Summary:
        """Flush a selection: a list, or batches as the queue's listing is read.

        Batches are held one at a time, while the messages held before are being
        sent; memory holds a few batches, not the queue.
        """
        batches = selection if isinstance(selection, AsyncIterable) else batched(selection)
        try:
            await self._flush(aiter(batches))
        finally:
            # Whatever happened (an error, Ctrl-C, SIGTERM): nothing we hold stays on hold.
            # A postsuper that failed part way leaves what it did not report open: the
            # second settle tries those again.
            self._settle()
            waiting = {i.queue_id for i in (*self._accepted, *self._refused)}
            for item in self._open.values():  # held, and not settled
                if item.queue_id in waiting:
                    continue
                if item.accepted:  # a smarthost has it: never back to Postfix
                    self._accepted.append(item)
                    continue
                item.detail = item.detail or "interrupted before the smarthost accepted it"
                self._refused.append(item)
            self._settle(last_try=True)
            await self._dispatcher.close()
            self.summary.elapsed = time.monotonic() - self.summary.started
        return self.summary

    async def _flush(self, batches: AsyncIterator[Sequence[Selected]]) -> None:
        first = await anext(batches, None)
        if first is None:
            return
        if self._prefetch_from is not None and len(first) >= PREFETCH_FROM:
            # Before the journal's writer thread and postsuper's threads start: it forks.
            # (Imported here: multiprocessing is a start-up cost a small flush, and each
            # worker of a split one, never needs.)
            from rescue.flush.prefetch import Prefetcher  # noqa: PLC0415

            self._prefetcher = Prefetcher(self._prefetch_from)
        # Two threads for postsuper (a hold and a settle may overlap) and the journal's
        # fsync: few threads, so few malloc arenas to grow.
        self._commands = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="queue-rescue-postsuper"
        )
        try:
            with self._journal.writing_behind():
                await self._feed_and_send(chain(first, batches))
        finally:
            self._commands.shutdown(wait=True)  # a postsuper call in progress ends first
            self._commands = None
            if self._prefetcher is not None:
                self._prefetcher.close()
                self._prefetcher = None

    async def _feed_and_send(self, batches: AsyncIterator[Sequence[Selected]]) -> None:
        stop = asyncio.Event()
        settler = asyncio.create_task(self._settle_periodically(stop))
        feeder = asyncio.create_task(self._feed(batches))
        workers = [asyncio.create_task(self._worker()) for _ in range(self._dispatcher.concurrency)]
        everything = asyncio.gather(feeder, *workers)
        try:
            # Shielded: a cancelled gather would wait for its tasks before it says so,
            # and a worker inside a wait that must not be cut short would go on to the
            # next message meanwhile. This way the flush learns of it at once.
            await asyncio.shield(everything)
        finally:
            # No worker starts another message, also one whose cancellation was taken
            # up by a wait that must not be cut short (see rescue.aio.outcome_of).
            self._stopping = True
            for task in (feeder, *workers):
                task.cancel()
            # Held, never started: given back now (the settler's next round), not after
            # the slowest answer to a final dot that is still awaited.
            self._give_back_untouched()
            ending = asyncio.gather(feeder, *workers, return_exceptions=True)
            try:
                if self._stop_grace is not None:
                    await outcome_of(asyncio.wait({ending}, timeout=self._stop_grace))
                    if not ending.done():
                        log.warning(
                            "stopping: answers still awaited after %gs; dropping those "
                            "connections (their messages go back as uncertain)",
                            self._stop_grace,
                        )
                        self._dispatcher.abort()
                # The feeder learns what a hold in progress did before it ends (see _take);
                # waited for also through a second cancellation.
                await outcome_of(ending)
            finally:
                # Let the settler finish the batch it may be in the middle of (its
                # postsuper runs in a thread; its result must not be lost).
                stop.set()
                await outcome_of(asyncio.gather(settler, return_exceptions=True))
                if everything.done() and not everything.cancelled():
                    everything.exception()  # seen (it was raised above, if any)
        if self._feed_error is not None:
            raise self._feed_error

    def _give_back_untouched(self) -> None:
        todo, self._todo = list(self._todo), collections.deque()
        for item in todo:
            item.detail = item.detail or "stopped before it was sent"
        self._refused.extend(todo)

    async def _feed(self, batches: AsyncIterator[Sequence[Selected]]) -> None:
        """Hold each batch and queue it for the senders, staying a little ahead of them.

        An error here (the listing failed, the journal cannot be written) stops the
        feeding, not the sending: what is held is sent, then the error is raised.
        """
        try:
            async for batch in batches:
                await self._take(batch)
                while len(self._todo) > QUEUED_AHEAD:
                    self._room.clear()
                    await self._room.wait()
        except Exception as exc:
            self._feed_error = exc
        finally:
            self._fed = True
            self._arrived.set()

    async def _take(self, batch: Sequence[Selected]) -> None:
        # A message listed twice (it moved between queues while showq read them) may
        # come again, in the same batch or a later one: it is taken once.
        fresh: dict[str, Selected] = {}
        for selected in batch:
            qid = selected.message.queue_id
            if qid not in self._open and qid not in self._given_back:
                fresh.setdefault(qid, selected)
        items = holding.skip_sent(
            self._journal,
            self._plan(list(fresh.values())),
            "already accepted by a smarthost in an earlier run; not sent again",
            lambda item: self._report(item, SKIPPED_ACTION),
        )
        if not items:
            return
        holding.begin_hold(self._journal, items)
        ids = [i.queue_id for i in items]
        # postsuper goes on in its thread also when the flush is cancelled meanwhile:
        # learn what it held all the same, so that it is released, not left on hold.
        try:
            held_ids, cancelled = await outcome_of(self._in_thread(self._queue.hold, ids))
        except RescueError as exc:
            # postsuper failed (or timed out), maybe part way: none of this hold is sent.
            # Any of them may be on hold now (also one it did not report, as its last
            # line can be lost when it stops): all released as the flush ends; those not
            # on hold stay deferred.
            for item in items:
                item.detail = f"the hold failed: {exc}"
                self._open[item.queue_id] = item
            self._refused.extend(items)
            raise
        self._queue_held(items, held_ids)
        if cancelled:
            raise asyncio.CancelledError

    def _queue_held(self, items: list[Item], held_ids: set[str]) -> None:
        # Known as held before anything else can fail: then the closing settle releases it.
        self._open.update((i.queue_id, i) for i in items if i.queue_id in held_ids)
        held, gone = holding.end_hold(self._journal, items, held_ids)
        self._given_back.update(i.queue_id for i in gone)
        for item in gone:
            self._report(item, SKIPPED_ACTION)
        if self._prefetcher is not None:
            self._prefetcher.add([i.queue_id for i in held])
        self._todo.extend(held)
        self._arrived.set()

    async def _worker(self) -> None:
        todo = self._todo
        while not self._stopping:
            while not todo and not self._fed:
                self._arrived.clear()
                await self._arrived.wait()
            if not todo:
                return
            item = todo.popleft()
            if len(todo) <= QUEUED_AHEAD:
                self._room.set()
            try:
                if not item.claimed:
                    self._claim(item, todo)
                await self._send_one(item)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a bug in one message must not stop the others
                if item.accepted:  # a smarthost has it: deleted, never given back
                    log.exception("%s: error after the smarthost accepted it", item.queue_id)
                    self._accepted.append(item)
                    continue
                log.exception("%s: unexpected error; released to Postfix", item.queue_id)
                item.detail = f"unexpected error: {exc!r}"
                item.broken = True
                self._refused.append(item)

    def _claim(self, item: Item, todo: collections.deque[Item]) -> None:
        """Journal `sending` for this message and the next few, in one transaction.

        One write for CLAIM_AHEAD messages instead of one each: after a crash a few
        messages that had not left yet are reported as "may have been sent", which
        changes nothing about what recovery does (it releases them).
        """
        batch = [item, *itertools.islice(todo, CLAIM_AHEAD - 1)]
        for claimed in batch:
            claimed.claimed = True
        self._journal.record([i.key for i in batch], SENDING, smarthost=self._primary)

    def _read_envelope(self, qid: str) -> Envelope | Awaitable[Envelope]:
        if self._read_in_thread:
            return asyncio.to_thread(self._read, qid)
        return self._read(qid)

    async def _held_envelope(self, qid: str) -> Envelope:
        """The message as it is on hold; FileNotFoundError when it is not on hold any more."""
        envelope = None
        if self._prefetcher is not None:
            envelope = await self._prefetcher.get(qid)
            if envelope is not None and not self._prefetcher.still_held(qid):
                raise FileNotFoundError(qid)  # released or deleted since it was read
        if envelope is None:
            read = self._read_envelope(qid)
            envelope = await read if inspect.isawaitable(read) else read
        return envelope

    async def _send_one(self, item: Item) -> None:
        qid = item.queue_id
        try:
            envelope = await self._held_envelope(qid)
        except FileNotFoundError:
            item.detail = (
                "queue file vanished while on hold, or no longer on hold "
                "(deleted or released by someone else); left to Postfix"
            )
            log.warning("%s: %s", qid, item.detail)
            self._open.pop(qid, None)
            self._given_back.add(qid)
            self._journal.record([item.key], SKIPPED, detail=item.detail)
            self._report(item, SKIPPED_ACTION)
            return
        except (QueueFileError, PostfixError) as exc:
            item.detail = f"cannot read the message: {exc}"
            item.broken = True
            log.error("%s: %s; left in Postfix", qid, item.detail)
            self._refused.append(item)
            return
        if not envelope.recipients:
            item.detail = "no pending recipients left"
            self._refused.append(item)
            return
        item.recipients = tuple(r.address for r in envelope.recipients)
        try:
            # The queue file's sender is the truth (the listing shows <> as MAILER-DAEMON).
            item.envelope_sender = self._forward(envelope.sender)
        except RescueError as exc:
            item.detail = f"cannot rewrite sender {envelope.sender!r}: {exc}"
            item.broken = True
            log.error("%s: %s; left in Postfix", qid, item.detail)
            self._refused.append(item)
            return

        def sending(smarthost: str) -> None:
            if smarthost != item.smarthost:  # a failover: say where it goes now
                item.smarthost = smarthost
                self._journal.record([item.key], SENDING, smarthost=smarthost)

        try:
            accepted = await self._dispatcher.deliver(
                replace(envelope, sender=item.envelope_sender),
                item.envelope_sender,
                sending,
                functools.partial(self._accepted_now, item),
            )
        except AcceptedWhileCancelled as exc:  # delivered: deleted as the flush ends
            self._took(item, exc.accepted)
            raise
        except DeliveryError as exc:  # logged by the dispatcher, uncertain or not
            item.detail = str(exc)
            item.uncertain = exc.uncertain
            self._refused.append(item)
            return
        self._took(item, accepted)

    def _accepted_now(self, item: Item, accepted: Accepted) -> None:
        """The smarthost's 250 was just read: journal it before anything else happens.

        From now on the message is deleted, never given back (see Journal.record:
        the step survives a crash of this process from here on).
        """
        if item.accepted:
            return
        item.smarthost, item.reply = accepted.smarthost, accepted.reply
        item.accepted = True
        try:
            self._journal.record(
                [item.key], ACCEPTED, smarthost=accepted.smarthost, reply=accepted.reply
            )
        except JournalError as exc:
            log.error(
                "%s: journal: %s; deleting the accepted message all the same", item.queue_id, exc
            )

    def _took(self, item: Item, accepted: Accepted) -> None:
        """A smarthost accepted the message: from now on it is deleted, never given back."""
        self._accepted_now(item, accepted)
        log.info(
            "%s: rerouted to %s via %s: %s",
            item.queue_id,
            ",".join(item.recipients),
            accepted.smarthost,
            accepted.reply,
        )
        self._accepted.append(item)

    def _forward(self, sender: str) -> str:
        forwarded = self._senders.get(sender)
        if forwarded is None:
            forwarded = self._senders[sender] = self._srs.forward(sender)
        return forwarded
