"""Export: move held messages out of Postfix into a folder of .eml + .json pairs.

The same steps as a flush, with a folder in place of a smarthost: the journal records
each step before it is taken; messages are held, written and fsynced, and only then
deleted from Postfix (left on hold with ``keep``); whatever was not written is released.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rescue.errors import (
    JournalError,
    PostfixError,
    PostsuperFailed,
    QueueFileError,
    RescueError,
)
from rescue.flush import holding
from rescue.flush.plan import EnvelopeReader
from rescue.journal.store import (
    ACCEPTED,
    DELETED,
    RELEASED,
    SENDING,
    SKIPPED,
    Journal,
)
from rescue.model import Selected, WorkItem
from rescue.postfix.queue import MailQueue
from rescue.sources.export import EML, JSON, PairError, remove_pair, write_pair
from rescue.sources.spool import fsync_dir
from rescue.tally import Tally

log = logging.getLogger(__name__)

EXPORTED = "exported"
WOULD_EXPORT = "would-export"
RELEASED_ACTION = "released"
FAILED = "failed"
SKIPPED_ACTION = "skipped"
ACTIONS = (EXPORTED, WOULD_EXPORT, RELEASED_ACTION, FAILED, SKIPPED_ACTION)
# Pairs written and fsynced before the journal says so. A SIGKILL in between leaves at
# most this many messages both in the folder and (released by recovery) in Postfix.
CHUNK = 100


@dataclass(frozen=True, slots=True)
class ExportOutcome:
    """What happened to one selected message; one JSON line in --json output."""

    queue_id: str
    action: str
    sender: str
    recipients: tuple[str, ...]
    provider: str | None
    arrival_time: int
    eml: str | None = None
    json: str | None = None
    detail: str = ""


class ExportSummary(Tally):
    actions = ACTIONS
    done = (EXPORTED, WOULD_EXPORT)

    def add(self, outcome: ExportOutcome) -> None:
        self.count(outcome.action)


@dataclass(slots=True)
class _Item(WorkItem):
    eml: Path | None = None
    json: Path | None = None
    new: bool = False  # this run wrote the pair (else it was there already)
    detail: str = ""
    broken: bool = False  # could not be read: reported as failed once released


def _outcome(item: _Item, action: str) -> ExportOutcome:
    message = item.selected.message
    return ExportOutcome(
        queue_id=message.queue_id,
        action=action,
        sender=message.sender,
        recipients=tuple(r.address for r in message.recipients),
        provider=item.selected.provider,
        arrival_time=message.arrival_time,
        eml=str(item.eml) if item.eml else None,
        json=str(item.json) if item.json else None,
        detail=item.detail,
    )


def would_export(selected: Selected, folder: Path) -> ExportOutcome:
    """What a dry run reports for one selected message: the pair it would write."""
    item = _Item(selected, eml=folder / (selected.message.queue_id + EML))
    item.json = folder / (selected.message.queue_id + JSON)
    return _outcome(item, WOULD_EXPORT)


class Export:
    """One export of a selection; `report` is called once per selected message."""

    def __init__(
        self,
        *,
        queue: MailQueue,
        read_envelope: EnvelopeReader,
        journal: Journal,
        folder: Path,
        keep: bool,
        hostname: str | None,
        report: Callable[[ExportOutcome], None],
    ) -> None:
        self._queue = queue
        self._read = read_envelope
        self._journal = journal
        self._folder = folder
        self._keep = keep
        self._hostname = hostname
        self._report_cb = report
        self._target = f"export:{folder}"  # the journal's smarthost column
        self.summary = ExportSummary()
        self._open: dict[str, _Item] = {}  # held by us, not yet settled
        self._exported: list[_Item] = []  # on disk and journaled: to delete from Postfix
        self._failed: list[_Item] = []  # to release

    def _report(self, item: _Item, action: str) -> None:
        outcome = _outcome(item, action)
        self.summary.add(outcome)
        self._report_cb(outcome)

    def run(self, selection: Sequence[Selected]) -> ExportSummary:
        items = holding.skip_sent(
            self._journal,
            [_Item(s) for s in selection],
            "already rerouted or exported in an earlier run; not exported again",
            lambda item: self._report(item, SKIPPED_ACTION),
        )
        try:
            held = self._hold(items)
            for start in range(0, len(held), CHUNK):
                self._export_chunk(held[start : start + CHUNK])
        finally:
            self._settle()
            self.summary.elapsed = time.monotonic() - self.summary.started
        return self.summary

    def _hold(self, items: list[_Item]) -> list[_Item]:
        held, gone = holding.hold(self._journal, self._queue, items)
        self._open.update((i.queue_id, i) for i in held)
        for item in gone:
            self._report(item, SKIPPED_ACTION)
        return held

    def _export_chunk(self, chunk: list[_Item]) -> None:
        self._journal.record([i.key for i in chunk], SENDING, smarthost=self._target)
        written = [item for item in chunk if self._write(item)]
        if not written:
            return
        try:
            fsync_dir(self._folder)
        except OSError as exc:
            for item in written:
                item.detail = f"cannot fsync {self._folder}: {exc}"
                self._failed.append(item)
            return
        if self._keep:
            self._journal.record(
                [i.key for i in written],
                SKIPPED,
                smarthost=self._target,
                detail="exported; kept on hold (--keep)",
            )
            for item in written:
                self._open.pop(item.queue_id, None)
                item.detail = item.detail or "kept on hold (--keep)"
                self._report(item, EXPORTED)
            return
        self._journal.record(
            [i.key for i in written],
            ACCEPTED,
            smarthost=self._target,
            reply=f"written to {self._folder}",
        )
        self._exported.extend(written)

    def _write(self, item: _Item) -> bool:
        """Read the held message and write its pair; False (and why) when that fails."""
        qid = item.queue_id
        try:
            envelope = self._read(qid)
        except FileNotFoundError:
            item.detail = "queue file vanished while on hold (deleted by someone else)"
            log.warning("%s: %s", qid, item.detail)
            self._open.pop(qid, None)
            self._journal.record([item.key], SKIPPED, detail=item.detail)
            self._report(item, SKIPPED_ACTION)
            return False
        except (QueueFileError, PostfixError) as exc:
            item.detail = f"cannot read the message: {exc}"
            item.broken = True
            log.error("%s: %s; left in Postfix", qid, item.detail)
            self._failed.append(item)
            return False
        if not envelope.recipients:
            item.detail = "no pending recipients left"
            self._failed.append(item)
            return False
        # The listing knows why each recipient was deferred; the queue file does not.
        message = item.selected.message
        reasons = {r.address: r.delay_reason for r in message.recipients}
        recipients = tuple(
            replace(r, delay_reason=reasons.get(r.address, r.delay_reason))
            for r in envelope.recipients
        )
        try:
            item.eml, item.json, item.new = write_pair(
                self._folder,
                replace(envelope, recipients=recipients),
                arrival_time=message.arrival_time,
                size=message.size,
                hostname=self._hostname,
            )
        except PairError as exc:
            item.detail = f"not written: {exc}"
        except OSError as exc:
            item.detail = f"cannot write to {self._folder}: {exc}"
        else:
            if not item.new:
                item.detail = "the same message was already in the folder"
            return True
        log.error("%s: %s; released to Postfix", qid, item.detail)
        self._failed.append(item)
        return False

    def _settle(self) -> None:
        """Delete what is exported (batched), release all else we hold (batched)."""
        exported, self._exported = self._exported, []
        try:
            if exported:
                self._delete(exported)
        finally:
            self._release_the_rest()

    def _release_the_rest(self) -> None:
        failed, self._failed = self._failed, []
        ids = {i.queue_id for i in failed}
        for item in self._open.values():  # held, neither exported nor failed: interrupted
            if item.queue_id not in ids:
                item.detail = item.detail or "interrupted before it was exported"
                failed.append(item)
        for item in failed:  # a pair this run wrote but did not confirm is taken back
            if item.new and item.eml and item.json:
                remove_pair(item.eml, item.json)
                item.eml = item.json = None
        if failed:
            self._release(failed)

    def _delete(self, items: list[_Item]) -> None:
        try:
            self._journal.sync()  # "accepted" is on disk before the message leaves Postfix
        except JournalError as exc:
            # The pairs are on disk: giving these back would send them twice.
            log.error("journal: %s; deleting the exported messages all the same", exc)
        try:
            deleted = self._queue.delete(i.queue_id for i in items)
        except PostsuperFailed as exc:
            # What it reported is gone from Postfix; the rest stays accepted in the
            # journal, and the next run's recovery deletes it.
            log.error("could not delete all %d exported messages from hold: %s", len(items), exc)
            deleted = set(exc.done)
        except RescueError as exc:
            log.error("could not delete %d exported messages from hold: %s", len(items), exc)
            deleted = set()
        self._journal.record([i.key for i in items if i.queue_id in deleted], DELETED)
        for item in items:
            self._open.pop(item.queue_id, None)
            if item.queue_id not in deleted:
                item.detail = "exported, but still on hold: the next run deletes it"
                log.error("%s: %s", item.queue_id, item.detail)
            self._report(item, EXPORTED)

    def _release(self, items: list[_Item]) -> None:
        finished = False
        try:
            released = self._queue.release(i.queue_id for i in items)
            finished = True
        except PostsuperFailed as exc:
            log.error("could not release all %d messages: %s", len(items), exc)
            released = set(exc.done)
        except RescueError as exc:
            log.error("could not release %d messages: %s", len(items), exc)
            released = set()
        self._journal.record(
            [i.key for i in items if i.queue_id in released], RELEASED, detail="released"
        )
        for item in items:
            self._open.pop(item.queue_id, None)
            self._report(item, holding.given_back(item, released, finished))
