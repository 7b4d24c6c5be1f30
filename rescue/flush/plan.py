"""What a flush decides and reports: its actions, each message's outcome, the SRS plan.

Pure: the dry run and the flush itself report through these; nothing here changes the
queue.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from rescue.errors import (
    RescueError,
)
from rescue.model import Envelope, Selected, WorkItem
from rescue.srs.rewriter import SrsRewriter
from rescue.tally import Tally

log = logging.getLogger(__name__)

REROUTED = "rerouted"
WOULD_REROUTE = "would-reroute"
RELEASED_ACTION = "released"
FAILED = "failed"
SKIPPED_ACTION = "skipped"
ACTIONS = (REROUTED, WOULD_REROUTE, RELEASED_ACTION, FAILED, SKIPPED_ACTION)


# A selection is held this many messages at a time (one postsuper call each).
BATCH_SIZE = 500


async def batched(selection: Sequence[Selected]) -> AsyncIterator[Sequence[Selected]]:
    """A list as the batches a flush takes; oldest first, as given."""
    for start in range(0, len(selection), BATCH_SIZE):
        yield selection[start : start + BATCH_SIZE]


async def chain(
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
class Item(WorkItem):
    envelope_sender: str
    smarthost: str | None = None
    reply: str | None = None
    detail: str = ""
    uncertain: bool = False
    recipients: tuple[str, ...] = ()
    broken: bool = False  # could not be read: reported as failed once released
    claimed: bool = False  # its `sending` is in the journal
    accepted: bool = False  # a smarthost took it: it is deleted, never released


def outcome_of_item(item: Item, action: str) -> Outcome:
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
) -> tuple[list[Item], list[Item]]:
    """Rewrite each sender with SRS (`forward`): (ready to send, cannot be rewritten)."""
    ready, broken = [], []
    for selected in selection:
        try:
            sender = forward(selected.message.sender)
        except RescueError as exc:
            broken.append(Item(selected, "", detail=f"cannot rewrite sender: {exc}"))
            continue
        ready.append(Item(selected, sender, smarthost=primary))
    return ready, broken


def dry_run(
    selection: Sequence[Selected], srs: SrsRewriter, primary: str, report: Callable[[Outcome], None]
) -> Summary:
    """What a flush would do, message by message; changes nothing (not even a hold)."""
    summary = Summary()
    ready, broken = plan(selection, functools.cache(srs.forward), primary)
    for item, action in [(i, FAILED) for i in broken] + [(i, WOULD_REROUTE) for i in ready]:
        outcome = outcome_of_item(item, action)
        summary.add(outcome)
        report(outcome)
    summary.elapsed = time.monotonic() - summary.started
    return summary
