"""The steps every run that takes mail shares: skip what was sent, hold the rest, and
say how each message given back ended.

Used by the flush and by the export; both journal each message as `holding`
before postsuper holds it, so that a crash right after the hold is repaired.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from rescue.errors import RescueError
from rescue.flush.plan import FAILED, RELEASED_ACTION, SKIPPED_ACTION
from rescue.journal.store import ACCEPTED, DELETED, HELD, RELEASED, SKIPPED, Journal
from rescue.model import Selected
from rescue.postfix.queue import MailQueue

log = logging.getLogger(__name__)

NOT_DEFERRED = "no longer in the deferred queue (Postfix delivered or moved it)"
HOLD_FAILED = "the hold failed; released"
# A message to give back that a postsuper which went through did not report releasing:
# not on hold (a hold that failed never held it; someone else released or deleted it),
# or, rarely, a file postsuper would not touch (its mode, a changed hash layout). The
# journal keeps it open, so that the next run's recovery looks at the hold queue again.
NOT_ON_HOLD = "postsuper did not find it on hold to give back; the next run checks again"
RELEASE_FAILED = "release failed: the next run releases it"


class Taken(Protocol):
    selected: Selected
    detail: str

    @property
    def queue_id(self) -> str: ...

    @property
    def key(self) -> tuple[str, str]: ...


T = TypeVar("T", bound=Taken)


def already_sent(journal: Journal, items: Sequence[T]) -> tuple[list[T], list[T]]:
    """(to take, already accepted by a smarthost or exported in an earlier run)."""
    states = journal.states(i.selected.message.key for i in items)
    keep, done = [], []
    for item in items:
        if states.get(item.selected.message.key) in (ACCEPTED, DELETED):
            done.append(item)
        else:
            keep.append(item)
    return keep, done


def skip_sent(
    journal: Journal, items: Sequence[T], detail: str, report: Callable[[T], None]
) -> list[T]:
    """The items to take; each one already sent is logged and reported with `detail`."""
    keep, done = already_sent(journal, items)
    for item in done:
        item.detail = detail
        log.warning("%s: %s", item.queue_id, item.detail)
        report(item)
    return keep


def hold(journal: Journal, queue: MailQueue, items: Sequence[T]) -> tuple[list[T], list[T]]:
    """Journal, then hold: (held, no longer in the deferred queue).

    A hold that fails (also part way, or interrupted) is undone before its error goes
    on: every message it was asked to hold is released (those it did not hold stay
    deferred). So are the held ones when the journal cannot record the hold.
    """
    if not items:
        return [], []
    begin_hold(journal, items)
    try:
        held_ids = queue.hold(i.queue_id for i in items)
    except BaseException:
        # Also a KeyboardInterrupt (Ctrl-C, an export's SIGTERM) once postsuper is done.
        undo_hold(journal, queue, items)
        raise
    try:
        return end_hold(journal, items, held_ids)
    except BaseException:
        # Held, but the journal could not say so: nobody would release them.
        undo_hold(journal, queue, [i for i in items if i.queue_id in held_ids])
        raise


def undo_hold(journal: Journal, queue: MailQueue, items: Sequence[T]) -> None:
    """Release whatever a failed hold may have held; a failure here is left to recovery."""
    try:
        released = queue.release(i.queue_id for i in items)
        journal.record(
            [i.key for i in items if i.queue_id in released], RELEASED, detail=HOLD_FAILED
        )
    except RescueError as exc:
        log.error("releasing after a failed hold: %s; the next run's recovery does it", exc)


def begin_hold(journal: Journal, items: Sequence[T]) -> None:
    """Journal each message as `holding`: committed before postsuper may hold it."""
    journal.start(
        (
            item.key,
            item.selected.provider,
            item.selected.message.sender,
            [r.address for r in item.selected.message.recipients],
        )
        for item in items
    )


def end_hold(journal: Journal, items: Sequence[T], held_ids: set[str]) -> tuple[list[T], list[T]]:
    """Journal what the hold did: (held, no longer in the deferred queue)."""
    held = [i for i in items if i.queue_id in held_ids]
    gone = [i for i in items if i.queue_id not in held_ids]
    journal.record([i.key for i in held], HELD)
    journal.record([i.key for i in gone], SKIPPED, detail="not in the deferred queue")
    for item in gone:
        item.detail = NOT_DEFERRED
        log.info("%s: %s", item.queue_id, item.detail)
    log.info("held %d of %d selected messages", len(held), len(items))
    return held, gone


class GivenBack(Protocol):
    detail: str
    broken: bool

    @property
    def queue_id(self) -> str: ...


def given_back(item: GivenBack, released: set[str], finished: bool) -> str:
    """The action a message given back ends with, logged: `released` by the postsuper
    call (which `finished`, or failed part way), not found on hold by it, or maybe still
    on hold (the call failed before it said)."""
    if item.queue_id in released:
        log.info("%s: released to Postfix: %s", item.queue_id, item.detail)
        return FAILED if item.broken else RELEASED_ACTION
    if finished:
        item.detail = f"{item.detail or 'given back'}; {NOT_ON_HOLD}"
        log.warning("%s: %s", item.queue_id, item.detail)
        return FAILED if item.broken else SKIPPED_ACTION
    item.detail = f"{item.detail}; {RELEASE_FAILED}"
    log.error("%s: %s", item.queue_id, item.detail)
    return FAILED
