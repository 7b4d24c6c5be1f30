"""Repair what an interrupted run left: delete what was accepted, release the rest.

Runs at the start of every command that changes the queue, under the lock. It
acts only on queue files the journal recorded (same queue id, arrival time and
size), so mail someone put on hold by hand is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rescue.errors import PostsuperFailed
from rescue.journal.rows import Entry
from rescue.journal.store import ACCEPTED, DELETED, RELEASED, SENDING, SKIPPED, Journal
from rescue.model import QueuedMessage
from rescue.postfix.queue import MailQueue

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Uncertain:
    """A message that was being sent when the previous run stopped: it may have been
    delivered by the smarthost, and will be delivered again by Postfix."""

    queue_id: str
    smarthost: str | None
    action: str  # what recovery did: "released", or "gone" (no longer on hold)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    deleted: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()
    uncertain: tuple[Uncertain, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.deleted or self.released or self.gone)


def _on_hold(queue: MailQueue) -> dict[str, QueuedMessage]:
    held: dict[str, QueuedMessage] = {}
    for item in queue.listing():
        if isinstance(item, QueuedMessage) and item.queue_name == "hold":
            held[item.key] = item
    return held


def _acted(act: Callable[[Iterable[str]], set[str]], ids: list[str], what: str) -> set[str]:
    """What postsuper did; when it failed part way, what it reported (the rest stays
    open in the journal, and the next recovery tries again)."""
    if not ids:
        return set()
    try:
        return act(ids)
    except PostsuperFailed as exc:
        if not exc.done:
            raise
        log.error("recovery: could not %s all %d messages: %s", what, len(ids), exc)
        return set(exc.done)


def recover(journal: Journal, queue: MailQueue) -> RecoveryReport:
    # The steps a crashed run appended to the side file, before the rest is judged.
    journal.replay_steps()
    entries = journal.unfinished()
    if not entries:
        return RecoveryReport()
    held = _on_hold(queue)
    to_delete = [e for e in entries if e.state == ACCEPTED and e.key in held]
    to_release = [e for e in entries if e.state != ACCEPTED and e.key in held]
    gone = [e for e in entries if e.key not in held]

    deleted = _acted(queue.delete, [e.queue_id for e in to_delete], "delete")
    _record(
        journal,
        [e for e in to_delete if e.queue_id in deleted],
        DELETED,
        "recovery: accepted by the smarthost in an earlier run; deleted, not sent again",
    )
    for entry in to_delete:
        if entry.queue_id in deleted:
            log.info(
                "%s: recovery: accepted earlier by %s (%s); deleted from hold",
                entry.queue_id,
                entry.smarthost,
                entry.reply,
            )

    released = _acted(queue.release, [e.queue_id for e in to_release], "release")
    for entry in to_release:
        if entry.queue_id not in released:
            continue
        if entry.state == SENDING:
            log.warning(
                "%s: recovery: was being sent to %s when the previous run stopped; released "
                "to Postfix (if the smarthost took it, it may be delivered twice)",
                entry.queue_id,
                entry.smarthost,
            )
        else:
            log.info("%s: recovery: held by an earlier run; released to Postfix", entry.queue_id)
    _record(
        journal,
        [e for e in to_release if e.queue_id in released],
        RELEASED,
        "recovery: released to Postfix",
    )

    # Not on hold any more: someone (or our own delete/release just before a crash)
    # already moved it. The journal stops tracking it.
    for entry in gone:
        final = DELETED if entry.state == ACCEPTED else SKIPPED
        log.info("%s: recovery: no longer on hold; marked %s", entry.queue_id, final)
    _record(journal, [e for e in gone if e.state == ACCEPTED], DELETED, "recovery: already gone")
    _record(journal, [e for e in gone if e.state != ACCEPTED], SKIPPED, "recovery: already gone")
    gone_keys = {e.key for e in gone}
    uncertain = [
        Uncertain(e.queue_id, e.smarthost, "released" if e.queue_id in released else "gone")
        for e in entries
        if e.state == SENDING and (e.queue_id in released or e.key in gone_keys)
    ]
    return RecoveryReport(
        deleted=tuple(sorted(deleted)),
        released=tuple(sorted(released)),
        gone=tuple(sorted(e.queue_id for e in gone)),
        uncertain=tuple(sorted(uncertain, key=lambda u: u.queue_id)),
    )


def _record(journal: Journal, entries: Iterable[Entry], state: str, detail: str) -> None:
    journal.record(((e.key, e.queue_id) for e in entries), state, detail=detail)
