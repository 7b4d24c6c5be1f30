"""The flush's last step: delete what smarthosts accepted, release what they did not.

Batched postsuper calls, in the flush's command threads while the sessions go on, and
once more as the flush ends. A postsuper that stops part way leaves what it did not
report open, to be tried again, never counted as done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from rescue.aio import outcome_of
from rescue.errors import (
    JournalError,
    PostsuperFailed,
    RescueError,
)
from rescue.flush.holding import given_back
from rescue.flush.plan import REROUTED, Item
from rescue.journal.store import DELETED, RELEASED, Journal
from rescue.postfix.queue import MailQueue

log = logging.getLogger(__name__)
T = TypeVar("T")

# Settle (delete accepted, release refused) this often, so a long flush gives
# mail back to Postfix as it goes, not only at the end.
SETTLE_INTERVAL = 0.5


class Settling:
    """The settling half of a Flush (rescue.flush.core), which sets these attributes."""

    _queue: MailQueue
    _journal: Journal
    _open: dict[str, Item]
    _accepted: list[Item]
    _refused: list[Item]
    _given_back: set[str]
    _commands: concurrent.futures.ThreadPoolExecutor | None
    left_on_hold: list[str]
    _report: Callable[[Item, str], None]

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

    def _queue_op(self, operation: str, items: list[Item]) -> tuple[set[str], bool]:
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

    def _retry_later(self, items: list[Item], done: set[str], finished: bool) -> list[Item]:
        """The items to settle now; after a postsuper that failed, those it did not
        report stay open (on hold, maybe): the flush's closing settle tries them again."""
        if finished:
            return items
        for item in items:
            if item.queue_id not in done:
                log.warning("%s: not reported by postsuper; tried again", item.queue_id)
        return [i for i in items if i.queue_id in done]

    def _after_delete(
        self, items: list[Item], deleted: set[str], finished: bool, *, last_try: bool = False
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
        self, items: list[Item], released: set[str], finished: bool, *, last_try: bool = False
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
            if item.queue_id not in released and not finished:
                self.left_on_hold.append(item.queue_id)
            self._report(item, given_back(item, released, finished))
