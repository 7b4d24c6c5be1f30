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
import contextlib
import functools
import inspect
import itertools
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from rescue.aio import outcome_of
from rescue.errors import (
    DeliveryError,
    JournalError,
    PostfixError,
    PostsuperFailed,
    QueueFileError,
    RescueError,
)
from rescue.flush import holding
from rescue.flush.prefetch import Prefetcher
from rescue.journal.store import ACCEPTED, DELETED, RELEASED, SENDING, SKIPPED, Journal
from rescue.model import Envelope, Selected
from rescue.postfix.queue import MailQueue
from rescue.smarthost.pool import Dispatcher
from rescue.smarthost.session import Accepted, AcceptedWhileCancelled
from rescue.srs.rewriter import SrsRewriter
from rescue.tally import Tally

log = logging.getLogger(__name__)
T = TypeVar("T")

REROUTED = "rerouted"
WOULD_REROUTE = "would-reroute"
RELEASED_ACTION = "released"
FAILED = "failed"
SKIPPED_ACTION = "skipped"
ACTIONS = (REROUTED, WOULD_REROUTE, RELEASED_ACTION, FAILED, SKIPPED_ACTION)

# Settle (delete accepted, release refused) this often, so a long flush gives
# mail back to Postfix as it goes, not only at the end.
SETTLE_INTERVAL = 0.5
# A selection is held this many messages at a time (one postsuper call each).
BATCH_SIZE = 500
# `sending` is journaled for this many messages at a time (see Flush._claim).
CLAIM_AHEAD = 16
# Below this many messages (in the first batch) a helper process to read queue files
# costs more than it saves.
PREFETCH_FROM = 200
# The feeder holds the next batch once no more than this many held messages wait.
QUEUED_AHEAD = 500


async def _batched(selection: Sequence[Selected]) -> AsyncIterator[Sequence[Selected]]:
    """A list as the batches a flush takes; oldest first, as given."""
    for start in range(0, len(selection), BATCH_SIZE):
        yield selection[start : start + BATCH_SIZE]


async def _chain(
    first: Sequence[Selected], rest: AsyncIterator[Sequence[Selected]]
) -> AsyncIterator[Sequence[Selected]]:
    yield first
    async for batch in rest:
        yield batch


class EnvelopeReader(Protocol):
    def __call__(self, queue_id: str) -> Envelope: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one selected message; one JSON line in --json output."""

    queue_id: str
    action: str
    sender: str
    envelope_sender: str | None
    recipients: tuple[str, ...]
    provider: str | None
    smarthost: str | None = None
    reply: str | None = None
    detail: str = ""
    uncertain: bool = False
    arrival_time: int = 0
    reason: str | None = None


@dataclass
class Summary(Tally):
    actions = ACTIONS
    done = (REROUTED, WOULD_REROUTE)

    uncertain: int = 0

    def add(self, outcome: Outcome) -> None:
        self.count(outcome.action)
        self.uncertain += outcome.uncertain

    def as_dict(self) -> dict[str, object]:
        rate = self.counts[REROUTED] / self.elapsed if self.elapsed > 0 else 0.0
        return {
            **super().as_dict(),
            "uncertain": self.uncertain,
            "messages_per_second": round(rate, 1),
        }


@dataclass(slots=True)
class _Item:
    selected: Selected
    envelope_sender: str
    smarthost: str | None = None
    reply: str | None = None
    detail: str = ""
    uncertain: bool = False
    recipients: tuple[str, ...] = ()
    broken: bool = False  # could not be read: reported as failed once released
    claimed: bool = False  # its `sending` is in the journal
    accepted: bool = False  # a smarthost took it: it is deleted, never released

    @property
    def queue_id(self) -> str:
        return self.selected.message.queue_id

    @property
    def key(self) -> tuple[str, str]:
        return (self.selected.message.key, self.selected.message.queue_id)


def _outcome(item: _Item, action: str) -> Outcome:
    message = item.selected.message
    return Outcome(
        queue_id=message.queue_id,
        action=action,
        sender=message.sender,
        envelope_sender=item.envelope_sender,
        recipients=item.recipients or tuple(r.address for r in message.recipients),
        provider=item.selected.provider,
        smarthost=item.smarthost,
        reply=item.reply,
        detail=item.detail,
        uncertain=item.uncertain,
        arrival_time=message.arrival_time,
        reason=item.selected.reason_matched,
    )


def plan(
    selection: Sequence[Selected], forward: Callable[[str], str], primary: str
) -> tuple[list[_Item], list[_Item]]:
    """Rewrite each sender with SRS (`forward`): (ready to send, cannot be rewritten)."""
    ready, broken = [], []
    for selected in selection:
        try:
            sender = forward(selected.message.sender)
        except RescueError as exc:
            broken.append(_Item(selected, "", detail=f"cannot rewrite sender: {exc}"))
            continue
        ready.append(_Item(selected, sender, smarthost=primary))
    return ready, broken


def dry_run(
    selection: Sequence[Selected], srs: SrsRewriter, primary: str, report: Callable[[Outcome], None]
) -> Summary:
    """What a flush would do, message by message; changes nothing (not even a hold)."""
    summary = Summary()
    ready, broken = plan(selection, functools.cache(srs.forward), primary)
    for item, action in [(i, FAILED) for i in broken] + [(i, WOULD_REROUTE) for i in ready]:
        outcome = _outcome(item, action)
        summary.add(outcome)
        report(outcome)
    summary.elapsed = time.monotonic() - summary.started
    return summary


class Flush:
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
        self._open: dict[str, _Item] = {}  # held by us, not yet settled
        self._accepted: list[_Item] = []
        self._refused: list[_Item] = []
        # A queue file read is a few microseconds; postcat is two process starts.
        self._read_in_thread = read_in_thread
        # The queue directory, when held messages' files may be read ahead by a helper.
        self._prefetch_from = prefetch_from
        self._prefetcher: Prefetcher | None = None
        self._senders: dict[str, str] = {}  # SRS address of each sender, made once a run
        self._todo: collections.deque[_Item] = collections.deque()  # held, not yet sent
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

    def _report(self, item: _Item, action: str) -> None:
        outcome = _outcome(item, action)
        self.summary.add(outcome)
        try:
            self._report_cb(outcome)
        except Exception as exc:  # e.g. stdout closed by a pipe's reader: settle all the same
            if not self._report_failed:
                log.error("cannot report outcomes any more (%r); the flush goes on", exc)
            self._report_failed = True

    def _plan(self, selection: Sequence[Selected]) -> list[_Item]:
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
        batches = selection if isinstance(selection, AsyncIterable) else _batched(selection)
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
            self._prefetcher = Prefetcher(self._prefetch_from)
        # Two threads for postsuper (a hold and a settle may overlap) and the journal's
        # fsync: few threads, so few malloc arenas to grow.
        self._commands = concurrent.futures.ThreadPoolExecutor(
            max_workers=2, thread_name_prefix="queue-rescue-postsuper"
        )
        try:
            with self._journal.writing_behind():
                await self._feed_and_send(_chain(first, batches))
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

    def _queue_held(self, items: list[_Item], held_ids: set[str]) -> None:
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

    def _claim(self, item: _Item, todo: collections.deque[_Item]) -> None:
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

    async def _send_one(self, item: _Item) -> None:
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
        except DeliveryError as exc:
            item.detail = str(exc)
            item.uncertain = exc.uncertain
            if exc.uncertain:
                log.warning("%s: %s", qid, exc)
            self._refused.append(item)
            return
        self._took(item, accepted)

    def _accepted_now(self, item: _Item, accepted: Accepted) -> None:
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

    def _took(self, item: _Item, accepted: Accepted) -> None:
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

    async def _settle_periodically(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SETTLE_INTERVAL)
            await self._settle_async()

    async def _settle_async(self) -> None:
        """As _settle, with Postfix's commands in a thread: the SMTP sessions go on."""
        # Each postsuper call is seen through to its result also when the flush is
        # cancelled meanwhile: what it deleted or released must be known.
        accepted, self._accepted = self._accepted, []
        refused, self._refused = self._refused, []
        cancelled = False
        if accepted:
            _, cancelled = await outcome_of(self._in_thread(self._sync_journal))
            deleted, stopped = await outcome_of(self._in_thread(self._queue_op, "delete", accepted))
            self._after_delete(accepted, *deleted)
            cancelled = cancelled or stopped
        if refused:
            released, stopped = await outcome_of(
                self._in_thread(self._queue_op, "release", refused)
            )
            self._after_release(refused, *released)
            cancelled = cancelled or stopped
        if cancelled:
            raise asyncio.CancelledError

    def _in_thread(self, call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run a blocking call (postsuper, fsync) in the flush's command threads."""
        return asyncio.get_running_loop().run_in_executor(self._commands, call, *args)

    def _settle(self, *, last_try: bool = False) -> None:
        """Delete what smarthosts accepted, release what they did not (batched)."""
        accepted, self._accepted = self._accepted, []
        refused, self._refused = self._refused, []
        if accepted:
            self._sync_journal()
            self._after_delete(accepted, *self._queue_op("delete", accepted), last_try=last_try)
        if refused:
            self._after_release(refused, *self._queue_op("release", refused), last_try=last_try)

    def _sync_journal(self) -> None:
        """ "accepted" is on disk before the message leaves Postfix.

        If the journal itself fails, the accepted messages are still deleted: the
        smarthost has them, and giving them back to Postfix would send them twice.
        """
        try:
            self._journal.sync()
        except JournalError as exc:
            log.error("journal: %s; deleting the accepted messages all the same", exc)

    def _note(self, keys: list[tuple[str, str]], state: str, detail: str | None = None) -> None:
        """Journal the settled state; a journal failure here must not stop the settling."""
        try:
            self._journal.record(keys, state, detail=detail)
        except JournalError as exc:
            log.error("journal: %s; the next run's recovery puts it right", exc)

    def _queue_op(self, operation: str, items: list[_Item]) -> tuple[set[str], bool]:
        """Run the queue's delete or release for these items: (what it did, whether
        postsuper finished; if not, an id it did not report may or may not be done)."""
        act = self._queue.delete if operation == "delete" else self._queue.release
        try:
            return act(i.queue_id for i in items), True
        except PostsuperFailed as exc:
            log.error("could not %s all %d messages: %s", operation, len(items), exc)
            return set(exc.done), False
        except RescueError as exc:
            log.error("could not %s %d messages: %s", operation, len(items), exc)
            return set(), False

    def _retry_later(self, items: list[_Item], done: set[str], finished: bool) -> list[_Item]:
        """The items to settle now; after a postsuper that failed, those it did not
        report stay open (on hold, maybe): the flush's closing settle tries them again."""
        if finished:
            return items
        for item in items:
            if item.queue_id not in done:
                log.warning("%s: not reported by postsuper; tried again", item.queue_id)
        return [i for i in items if i.queue_id in done]

    def _after_delete(
        self, items: list[_Item], deleted: set[str], finished: bool, *, last_try: bool = False
    ) -> None:
        if not last_try:
            items = self._retry_later(items, deleted, finished)
        self._note([i.key for i in items if i.queue_id in deleted], DELETED)
        for item in items:
            self._open.pop(item.queue_id, None)
            if item.queue_id not in deleted:
                item.detail = "accepted, but still on hold: the next run deletes it"
                log.error("%s: %s", item.queue_id, item.detail)
                if not finished:
                    self.left_on_hold.append(item.queue_id)
            self._report(item, REROUTED)

    def _after_release(
        self, items: list[_Item], released: set[str], finished: bool, *, last_try: bool = False
    ) -> None:
        if not last_try:
            items = self._retry_later(items, released, finished)
        by_reason: dict[str, list[tuple[str, str]]] = {}
        for item in items:
            if item.queue_id in released:
                by_reason.setdefault(item.detail or "released", []).append(item.key)
        for reason, keys in by_reason.items():  # `status` shows why each was released
            self._note(keys, RELEASED, reason)
        for item in items:
            self._open.pop(item.queue_id, None)
            self._given_back.add(item.queue_id)
            if item.queue_id in released:
                log.info("%s: released to Postfix: %s", item.queue_id, item.detail)
                self._report(item, FAILED if item.broken else RELEASED_ACTION)
            else:
                item.detail = f"{item.detail}; release failed: the next run releases it"
                log.error("%s: %s", item.queue_id, item.detail)
                if not finished:
                    self.left_on_hold.append(item.queue_id)
                self._report(item, FAILED)
