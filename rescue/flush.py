"""The flush: hold, read, send, settle; shared by the `flush` command and the service.

The order is what keeps mail safe. Every message this run holds ends either
accepted by a smarthost and deleted from Postfix, or released back to Postfix's
deferred queue, also when the run is cancelled; the journal records each step
before it is taken so that a crash is repaired by the next start (recovery.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from rescue.dispatch import Dispatcher
from rescue.errors import DeliveryError, PostfixError, QueueFileError, RescueError
from rescue.journal import ACCEPTED, DELETED, HELD, RELEASED, SENDING, SKIPPED, Journal
from rescue.model import Envelope, Selected
from rescue.queue import MailQueue
from rescue.srs import SrsRewriter

log = logging.getLogger(__name__)

REROUTED = "rerouted"
WOULD_REROUTE = "would-reroute"
RELEASED_ACTION = "released"
FAILED = "failed"
SKIPPED_ACTION = "skipped"
ACTIONS = (REROUTED, WOULD_REROUTE, RELEASED_ACTION, FAILED, SKIPPED_ACTION)

# Settle (delete accepted, release refused) this often, so a long flush gives
# mail back to Postfix as it goes, not only at the end.
SETTLE_INTERVAL = 0.5


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
class Summary:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTIONS, 0))
    uncertain: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float = 0.0

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.action] += 1
        self.uncertain += outcome.uncertain

    @property
    def selected(self) -> int:
        return sum(self.counts.values())

    @property
    def complete(self) -> bool:
        """True when every selected message was rerouted (or would be)."""
        return self.selected == self.counts[REROUTED] + self.counts[WOULD_REROUTE]

    def as_dict(self) -> dict[str, object]:
        rate = self.counts[REROUTED] / self.elapsed if self.elapsed > 0 else 0.0
        return {
            "selected": self.selected,
            **{k.replace("-", "_"): v for k, v in self.counts.items()},
            "uncertain": self.uncertain,
            "elapsed_seconds": round(self.elapsed, 3),
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
    selection: Sequence[Selected], srs: SrsRewriter, primary: str
) -> tuple[list[_Item], list[_Item]]:
    """Rewrite each sender with SRS: (ready to send, cannot be rewritten)."""
    ready, broken = [], []
    for selected in selection:
        try:
            sender = srs.forward(selected.message.sender)
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
    ready, broken = plan(selection, srs, primary)
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
    ) -> None:
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

    # --- planning (no change to the queue) --------------------------------------------

    def _report(self, item: _Item, action: str) -> None:
        outcome = _outcome(item, action)
        self.summary.add(outcome)
        self._report_cb(outcome)

    def _plan(self, selection: Sequence[Selected]) -> list[_Item]:
        ready, broken = plan(selection, self._srs, self._primary)
        for item in broken:
            log.error("%s: %s; left in Postfix", item.queue_id, item.detail)
            self._report(item, FAILED)
        return ready

    # --- the flush ------------------------------------------------------------------------

    async def run(self, selection: Sequence[Selected]) -> Summary:
        items = self._skip_already_sent(self._plan(selection))
        try:
            held = self._hold(items)
            await self._send_all(held)
        finally:
            # Whatever happened (an error, Ctrl-C, SIGTERM): nothing we hold stays on hold.
            self._settle()
            for item in self._open.values():  # held, but neither accepted nor refused
                item.detail = item.detail or "interrupted before the smarthost accepted it"
                self._refused.append(item)
            self._settle()
            await self._dispatcher.close()
            self.summary.elapsed = time.monotonic() - self.summary.started
        return self.summary

    def _skip_already_sent(self, items: list[_Item]) -> list[_Item]:
        states = self._journal.states(i.selected.message.key for i in items)
        keep = []
        for item in items:
            if states.get(item.selected.message.key) in (ACCEPTED, DELETED):
                item.detail = "already accepted by a smarthost in an earlier run; not sent again"
                log.warning("%s: %s", item.queue_id, item.detail)
                self._report(item, SKIPPED_ACTION)
            else:
                keep.append(item)
        return keep

    def _hold(self, items: list[_Item]) -> list[_Item]:
        if not items:
            return []
        self._journal.start(
            (
                item.key,
                item.selected.provider,
                item.selected.message.sender,
                [r.address for r in item.selected.message.recipients],
            )
            for item in items
        )
        held_ids = self._queue.hold(i.queue_id for i in items)
        held = [i for i in items if i.queue_id in held_ids]
        self._open.update((i.queue_id, i) for i in held)
        self._journal.record([i.key for i in held], HELD)
        gone = [i for i in items if i.queue_id not in held_ids]
        self._journal.record([i.key for i in gone], SKIPPED, detail="not in the deferred queue")
        for item in gone:
            item.detail = "no longer in the deferred queue (Postfix delivered or moved it)"
            log.info("%s: %s", item.queue_id, item.detail)
            self._report(item, SKIPPED_ACTION)
        log.info("held %d of %d selected messages", len(held), len(items))
        return held

    async def _send_all(self, items: list[_Item]) -> None:
        todo: asyncio.Queue[_Item | None] = asyncio.Queue()
        for item in items:
            todo.put_nowait(item)
        workers = max(1, min(self._dispatcher.concurrency, len(items)))
        for _ in range(workers):
            todo.put_nowait(None)
        settler = asyncio.create_task(self._settle_periodically())
        try:
            await asyncio.gather(*(self._worker(todo) for _ in range(workers)))
        finally:
            settler.cancel()
            await asyncio.gather(settler, return_exceptions=True)

    async def _worker(self, todo: asyncio.Queue[_Item | None]) -> None:
        while (item := await todo.get()) is not None:
            try:
                await self._send_one(item)
            except (asyncio.CancelledError, KeyboardInterrupt):
                raise
            except Exception as exc:  # a bug in one message must not stop the others
                log.exception("%s: unexpected error; released to Postfix", item.queue_id)
                item.detail = f"unexpected error: {exc!r}"
                item.broken = True
                self._refused.append(item)

    async def _send_one(self, item: _Item) -> None:
        qid = item.queue_id
        try:
            envelope = await asyncio.to_thread(self._read, qid)
        except FileNotFoundError:
            item.detail = "queue file vanished while on hold (deleted by someone else)"
            log.warning("%s: %s", qid, item.detail)
            self._open.pop(qid, None)
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
            item.envelope_sender = self._srs.forward(envelope.sender)
        except RescueError as exc:
            item.detail = f"cannot rewrite sender {envelope.sender!r}: {exc}"
            item.broken = True
            log.error("%s: %s; left in Postfix", qid, item.detail)
            self._refused.append(item)
            return

        def sending(smarthost: str) -> None:
            item.smarthost = smarthost
            self._journal.record([item.key], SENDING, smarthost=smarthost)

        try:
            accepted = await self._dispatcher.deliver(
                replace(envelope, sender=item.envelope_sender), item.envelope_sender, sending
            )
        except DeliveryError as exc:
            item.detail = str(exc)
            item.uncertain = exc.uncertain
            if exc.uncertain:
                log.warning("%s: %s", qid, exc)
            self._refused.append(item)
            return
        item.smarthost, item.reply = accepted.smarthost, accepted.reply
        self._journal.record(
            [item.key], ACCEPTED, smarthost=accepted.smarthost, reply=accepted.reply
        )
        log.info(
            "%s: rerouted to %s via %s: %s",
            qid,
            ",".join(item.recipients),
            accepted.smarthost,
            accepted.reply,
        )
        self._accepted.append(item)

    async def _settle_periodically(self) -> None:
        while True:
            await asyncio.sleep(SETTLE_INTERVAL)
            self._settle()

    def _settle(self) -> None:
        """Delete what smarthosts accepted, release what they did not (batched).

        Runs in the event loop's thread (a postsuper call takes milliseconds), so
        the lists and the journal are only ever touched from one thread.
        """
        accepted, self._accepted = self._accepted, []
        refused, self._refused = self._refused, []
        self._delete(accepted)
        self._release(refused)

    def _delete(self, items: list[_Item]) -> None:
        if not items:
            return
        self._journal.sync()  # "accepted" is on disk before the message leaves Postfix
        try:
            deleted = self._queue.delete(i.queue_id for i in items)
        except RescueError as exc:
            log.error("could not delete %d accepted messages from hold: %s", len(items), exc)
            deleted = set()
        self._journal.record([i.key for i in items if i.queue_id in deleted], DELETED)
        for item in items:
            self._open.pop(item.queue_id, None)
            if item.queue_id not in deleted:
                item.detail = "accepted, but still on hold: the next run deletes it"
                log.error("%s: %s", item.queue_id, item.detail)
            self._report(item, REROUTED)

    def _release(self, items: list[_Item]) -> None:
        if not items:
            return
        try:
            released = self._queue.release(i.queue_id for i in items)
        except RescueError as exc:
            log.error("could not release %d messages: %s", len(items), exc)
            released = set()
        by_reason: dict[str, list[tuple[str, str]]] = {}
        for item in items:
            if item.queue_id in released:
                by_reason.setdefault(item.detail or "released", []).append(item.key)
        for reason, keys in by_reason.items():  # `status` shows why each was released
            self._journal.record(keys, RELEASED, detail=reason)
        for item in items:
            self._open.pop(item.queue_id, None)
            if item.queue_id in released:
                log.info("%s: released to Postfix: %s", item.queue_id, item.detail)
                self._report(item, FAILED if item.broken else RELEASED_ACTION)
            else:
                item.detail = f"{item.detail}; release failed: the next run releases it"
                log.error("%s: %s", item.queue_id, item.detail)
                self._report(item, FAILED)
