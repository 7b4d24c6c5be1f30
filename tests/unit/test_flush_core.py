"""The flush's bookkeeping with the queue and the smarthosts played by fakes.

What must hold whatever happens: each message ends deleted after a smarthost took it,
or back in the deferred queue; none is sent twice, none stays on hold. The journal is
the real one (SQLite in a temporary folder).
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import pytest

import rescue.journal.writer
from rescue.errors import DeliveryError, JournalError, PostfixError
from rescue.flush.core import Flush
from rescue.flush.parallel import ParallelFlush
from rescue.flush.plan import Outcome, Summary
from rescue.journal.recovery import recover
from rescue.journal.store import (
    ACCEPTED,
    DELETED,
    HELD,
    HOLDING,
    RELEASED,
    SENDING,
    SKIPPED,
    Journal,
)
from rescue.model import Envelope, QueuedMessage, Recipient, Selected
from rescue.smarthost.session import Accepted


class FakeQueue:
    """Postfix's queue as postsuper sees it: deferred, hold, or gone."""

    def __init__(self, queue_ids: Iterable[str]) -> None:
        self.where = dict.fromkeys(queue_ids, "deferred")

    def _move(self, ids: Iterable[str], source: str, target: str) -> set[str]:
        moved = {i for i in ids if self.where.get(i) == source}
        self.where.update(dict.fromkeys(moved, target))
        return moved

    def hold(self, queue_ids: Iterable[str]) -> set[str]:
        return self._move(queue_ids, "deferred", "hold")

    def release(self, queue_ids: Iterable[str]) -> set[str]:
        return self._move(queue_ids, "hold", "deferred")

    def delete(self, queue_ids: Iterable[str]) -> set[str]:
        return self._move(queue_ids, "hold", "gone")

    def listing(self) -> Iterator[QueuedMessage]:
        raise AssertionError("the flush does not list")


class FakeSmarthost:
    """Takes every message (after a moment), or refuses those in `refuse`."""

    concurrency = 4

    def __init__(self, refuse: Iterable[str] = ()) -> None:
        self.sent: list[str] = []
        self.refuse = set(refuse)

    async def deliver(
        self,
        envelope: Envelope,
        sender: str,
        on_attempt: Callable[[str], None],
        on_accepted: Callable[[Accepted], None] | None = None,
    ) -> Accepted:
        on_attempt("relay1")
        await asyncio.sleep(0.001)
        if envelope.queue_id in self.refuse:
            raise DeliveryError("550 no", smarthost="relay1", code=550, transient=False)
        self.sent.append(envelope.queue_id)
        accepted = Accepted(smarthost="relay1", reply=f"250 ok queued as X{envelope.queue_id}")
        if on_accepted is not None:
            on_accepted(accepted)
        return accepted

    def abort(self) -> None:
        pass

    async def close(self) -> None:
        pass


class SameSender:
    def forward(self, sender: str) -> str:
        return sender


def selected(n: int) -> Selected:
    message = QueuedMessage(
        queue_id=f"ABCDE{n:05d}",
        queue_name="deferred",
        arrival_time=1_700_000_000 + n,
        size=100,
        sender="alice@example.com",
        recipients=(Recipient(f"c{n}@kunde1.test"),),
    )
    return Selected(message, "ionos", "invalid sender domain")


def envelope(queue_id: str) -> Envelope:
    return Envelope(queue_id, "alice@example.com", (Recipient("c@kunde1.test"),), b"x\n")


def flush(
    tmp_path: Path,
    queue: FakeQueue,
    smarthost: FakeSmarthost,
    report: Callable[[Outcome], None] | None = None,
    fsync: Callable[[int], None] = os.fsync,
) -> tuple[Flush, list[Outcome], Journal]:
    journal = Journal(tmp_path / "journal.sqlite3", fsync=fsync)
    journal.begin_run("flush", 1)
    outcomes: list[Outcome] = []
    run = Flush(
        queue=queue,
        journal=journal,
        srs=SameSender(),  # type: ignore[arg-type]
        dispatcher=smarthost,  # type: ignore[arg-type]
        read_envelope=envelope,
        report=report or outcomes.append,
        primary="relay1",
        read_in_thread=False,
    )
    return run, outcomes, journal


async def parts(
    *batches: Sequence[Selected], fail: Exception | None = None
) -> AsyncIterator[Sequence[Selected]]:
    for batch in batches:
        yield batch
    if fail is not None:
        raise fail


def test_a_message_listed_twice_is_sent_once(tmp_path: Path) -> None:
    one, two = selected(1), selected(2)
    queue, smarthost = FakeQueue([one.message.queue_id, two.message.queue_id]), FakeSmarthost()
    run, outcomes, _ = flush(tmp_path, queue, smarthost)

    summary = asyncio.run(run.run(parts([one, one, two], [one, two])))

    assert sorted(smarthost.sent) == [one.message.queue_id, two.message.queue_id]
    assert set(queue.where.values()) == {"gone"}
    assert summary.counts["rerouted"] == 2
    assert len(outcomes) == 2


def test_one_given_back_and_listed_again_is_not_taken_again(tmp_path: Path) -> None:
    refused = selected(1)
    queue = FakeQueue([refused.message.queue_id])
    smarthost = FakeSmarthost(refuse=[refused.message.queue_id])
    run, outcomes, _ = flush(tmp_path, queue, smarthost)

    async def later_again() -> AsyncIterator[Sequence[Selected]]:
        yield [refused]
        while queue.where[refused.message.queue_id] != "deferred":  # released meanwhile
            await asyncio.sleep(0.01)
        yield [refused]

    asyncio.run(run.run(later_again()))

    assert queue.where == {refused.message.queue_id: "deferred"}
    assert [o.action for o in outcomes] == ["released"]


def test_accepted_is_deleted_even_when_the_journal_cannot_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put = rescue.journal.writer.BackgroundWriter.put
    refused: list[str] = []  # queue ids whose `accepted` the journal refused

    def failing_put(
        self: rescue.journal.writer.BackgroundWriter, rows: rescue.journal.writer.Rows
    ) -> None:
        if rows and rows[0][3] == ACCEPTED:
            refused.extend(row[1] for row in rows)
            raise JournalError("journal: disk full")
        put(self, rows)

    monkeypatch.setattr(rescue.journal.writer.BackgroundWriter, "put", failing_put)
    chosen = [selected(n) for n in range(3)]
    queue, smarthost = FakeQueue(s.message.queue_id for s in chosen), FakeSmarthost()
    run, outcomes, _ = flush(tmp_path, queue, smarthost)

    asyncio.run(run.run(chosen))

    assert sorted(refused) == sorted(s.message.queue_id for s in chosen)  # the fault struck
    assert len(smarthost.sent) == 3
    assert set(queue.where.values()) == {"gone"}  # none given back to be sent again
    assert {o.action for o in outcomes} == {"rerouted"}


def test_a_reader_that_went_away_does_not_leave_mail_on_hold(tmp_path: Path) -> None:
    chosen = [selected(n) for n in range(20)]
    queue = FakeQueue(s.message.queue_id for s in chosen)
    smarthost = FakeSmarthost(refuse=[s.message.queue_id for s in chosen[::2]])

    def closed_pipe(outcome: Outcome) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    run, _, _ = flush(tmp_path, queue, smarthost, report=closed_pipe)

    summary: Summary = asyncio.run(run.run(chosen))

    assert "hold" not in queue.where.values()
    assert sorted(q for q, where in queue.where.items() if where == "gone") == sorted(
        smarthost.sent
    )
    assert summary.counts["rerouted"] == 10 and summary.counts["released"] == 10


def test_a_listing_that_fails_stops_the_feeding_not_the_sending(tmp_path: Path) -> None:
    chosen = [selected(n) for n in range(6)]
    queue, smarthost = FakeQueue(s.message.queue_id for s in chosen), FakeSmarthost()
    run, _, journal = flush(tmp_path, queue, smarthost)

    with pytest.raises(PostfixError, match="postqueue -j failed"):
        asyncio.run(run.run(parts(chosen, fail=PostfixError("postqueue -j failed: boom"))))

    assert sorted(smarthost.sent) == sorted(s.message.queue_id for s in chosen)
    assert set(queue.where.values()) == {"gone"}
    states = journal.states(s.message.key for s in chosen)
    assert set(states.values()) == {DELETED}


def test_a_hold_that_fails_part_way_is_given_back(tmp_path: Path) -> None:
    chosen = [selected(n) for n in range(6)]

    class HalfHold(FakeQueue):
        def hold(self, queue_ids: Iterable[str]) -> set[str]:
            ids = list(queue_ids)
            super().hold(ids[:3])  # postsuper held three, then timed out
            raise PostfixError("postsuper -h did not finish in 300s")

    queue, smarthost = HalfHold(s.message.queue_id for s in chosen), FakeSmarthost()
    run, outcomes, journal = flush(tmp_path, queue, smarthost)

    with pytest.raises(PostfixError, match="did not finish"):
        asyncio.run(run.run(chosen))

    assert smarthost.sent == []
    assert set(queue.where.values()) == {"deferred"}  # none left on hold
    # The three it held are released; the three it never held are not "failed" with
    # "release failed" (nothing failed, nothing is left to release): skipped, and left
    # open in the journal, where the next run's recovery finds them in deferred.
    actions = {o.queue_id: o.action for o in outcomes}
    ids = [s.message.queue_id for s in chosen]
    assert actions == {**dict.fromkeys(ids[:3], "released"), **dict.fromkeys(ids[3:], "skipped")}
    assert all("did not find it on hold" in o.detail for o in outcomes if o.action == "skipped")
    assert run.left_on_hold == []
    states = journal.states(s.message.key for s in chosen)
    assert [states[s.message.key] for s in chosen] == [RELEASED] * 3 + [HOLDING] * 3
    later = HeldQueue(s.message for s in chosen)  # the next run sees the queue as it is
    later.where = dict(queue.where)
    report = recover(journal, later)
    assert (report.released, sorted(report.gone)) == ((), sorted(ids[3:]))
    states = journal.states(s.message.key for s in chosen)
    assert [states[s.message.key] for s in chosen] == [RELEASED] * 3 + [SKIPPED] * 3


def test_a_message_still_on_hold_that_postsuper_passed_over_is_released_by_the_next_run(
    tmp_path: Path,
) -> None:
    # postsuper -H exits 0 without reporting a file it would not touch (its mode, a hash
    # layout changed meanwhile): the message is still on hold. The journal keeps it open,
    # so the next run's recovery releases it; it never stays on hold for good.
    chosen = [selected(n) for n in range(2)]
    stuck = chosen[0].message.queue_id

    class PassesOverOnce(HeldQueue):
        passed_over = False

        def release(self, queue_ids: Iterable[str]) -> set[str]:
            ids = list(queue_ids)
            if not self.passed_over and stuck in ids:
                self.passed_over = True
                ids.remove(stuck)
            return super().release(ids)

    queue = PassesOverOnce(s.message for s in chosen)
    queue.where = dict.fromkeys(queue.where, "deferred")
    smarthost = FakeSmarthost(refuse=[s.message.queue_id for s in chosen])
    run, outcomes, journal = flush(tmp_path, queue, smarthost)

    asyncio.run(run.run(chosen))

    assert queue.where[stuck] == "hold"
    assert {o.queue_id: o.action for o in outcomes}[stuck] == "skipped"
    key = chosen[0].message.key
    assert journal.states([key])[key] not in (DELETED, RELEASED, SKIPPED)
    report = recover(journal, queue)  # the next run
    assert report.released == (stuck,)
    assert queue.where[stuck] == "deferred"
    assert journal.states([key])[key] == RELEASED


def broken_disk(fd: int) -> None:
    raise OSError(errno.EIO, "Input/output error")


def test_an_fsync_error_still_settles_everything(tmp_path: Path) -> None:
    # EIO (or ENOSPC on some file systems) at fsync: the journal cannot promise that
    # `accepted` survives a power loss. The accepted messages are deleted all the same
    # (giving them back would send them twice; left on hold they would be stuck) and
    # the others released.
    chosen = [selected(n) for n in range(6)]
    refused = [s.message.queue_id for s in chosen[::3]]
    queue = FakeQueue(s.message.queue_id for s in chosen)
    smarthost = FakeSmarthost(refuse=refused)
    run, outcomes, _ = flush(tmp_path, queue, smarthost, fsync=broken_disk)

    asyncio.run(run.run(chosen))

    assert "hold" not in queue.where.values()
    assert sorted(q for q, where in queue.where.items() if where == "gone") == sorted(
        smarthost.sent
    )
    assert sorted(q for q, where in queue.where.items() if where == "deferred") == sorted(refused)
    assert sorted(o.action for o in outcomes) == ["released"] * 2 + ["rerouted"] * 4


class HeldQueue(FakeQueue):
    """A queue whose messages are on hold, as a crashed run left them."""

    def __init__(self, messages: Iterable[QueuedMessage]) -> None:
        self.messages = {m.queue_id: m for m in messages}
        super().__init__(self.messages)
        self.where = dict.fromkeys(self.messages, "hold")

    def listing(self) -> Iterator[QueuedMessage]:
        for qid, message in self.messages.items():
            if self.where[qid] in ("hold", "deferred"):
                yield replace(message, queue_name=self.where[qid])


@pytest.mark.parametrize("fsync_works", [True, False], ids=["fsync", "fsync-EIO"])
def test_the_250_survives_a_crash_before_the_writer_commits_it(
    tmp_path: Path, fsync_works: bool
) -> None:
    # The flush hands journal rows to a writer thread. Here the writer cannot commit at
    # all (another connection holds SQLite's write lock) when the process is killed
    # right after the smarthost's 250 was journaled: recovery must still know that the
    # smarthost has the message, delete it and never give it back to be sent again.
    sent, sending = selected(1), selected(2)
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path)
    journal.begin_run("flush", 1)
    keys = [(s.message.key, s.message.queue_id) for s in (sent, sending)]
    journal.start((key, "ionos", "alice@example.com", ["c@kunde1.test"]) for key in keys)
    journal.record(keys, HELD)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")

    child = os.fork()
    if child == 0:  # the flush, killed with its writer stuck
        try:
            with journal.writing_behind():
                journal.record(keys, SENDING, smarthost="relay1")
                journal.record(keys[:1], ACCEPTED, smarthost="relay1", reply="250 2.0.0 Ok")
                os.kill(os.getpid(), signal.SIGKILL)
        finally:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    blocker.execute("ROLLBACK")
    blocker.close()

    queue = HeldQueue(s.message for s in (sent, sending))
    # The next run; when its disk fails at fsync, recovery still acts (and keeps the
    # side file for the next one).
    journal.close()
    journal = Journal(path, fsync=os.fsync if fsync_works else broken_disk)
    report = recover(journal, queue)

    assert report.deleted == (sent.message.queue_id,)
    assert report.released == (sending.message.queue_id,)
    # The one being sent is named: the smarthost may have it, and Postfix sends it again.
    assert [u.queue_id for u in report.uncertain] == [sending.message.queue_id]
    assert queue.where == {sent.message.queue_id: "gone", sending.message.queue_id: "deferred"}
    states = journal.states(s.message.key for s in (sent, sending))
    assert states == {sent.message.key: DELETED, sending.message.key: RELEASED}
    assert (journal.steps_path.stat().st_size == 0) == fsync_works


def split_in_two(
    run: Flush, outcomes: list[Outcome], factory: Callable[[int, Callable[[Outcome], None]], Flush]
) -> ParallelFlush:
    """A flush split over two workers whatever its size; `run` if it cannot split."""
    return ParallelFlush(
        workers=2,
        factory=factory,
        single=lambda: run,
        report=outcomes.append,
        repair=lambda: None,
        split_from=1,
    )


def test_a_split_flush_that_cannot_fork_flushes_in_this_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [selected(n) for n in range(1, 6)]
    queue, smarthost = FakeQueue(s.message.queue_id for s in batch), FakeSmarthost()
    run, outcomes, _ = flush(tmp_path, queue, smarthost)

    def no_fork() -> int:
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")

    def no_worker(index: int, report: Callable[[Outcome], None]) -> Flush:
        raise AssertionError("no worker may be built when none could be forked")

    monkeypatch.setattr(os, "fork", no_fork)
    split = split_in_two(run, outcomes, no_worker)

    summary = asyncio.run(split.run(parts(batch)))

    assert sorted(smarthost.sent) == sorted(s.message.queue_id for s in batch)
    assert set(queue.where.values()) == {"gone"}
    assert summary.counts["rerouted"] == 5 and split.workers_used == 1


def test_a_split_flush_cancelled_while_it_connects_to_its_workers_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cancellation arrives while the parent connects to its second worker: every
    # worker must still be told the selection ended and be waited for, not left running.
    batch = [selected(n) for n in range(1, 6)]
    queue, smarthost = FakeQueue(s.message.queue_id for s in batch), FakeSmarthost()
    run, outcomes, _ = flush(tmp_path, queue, smarthost)

    def worker(index: int, report: Callable[[Outcome], None]) -> Flush:
        worker_run, _, _ = flush(tmp_path / f"w{index}", queue, smarthost, report=report)
        return worker_run

    real_connect = asyncio.open_unix_connection
    calls = 0
    outer: list[asyncio.Task[None]] = []

    async def connect(**kwargs: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            outer[0].cancel()  # as a SIGTERM (run_async) would, right here
        return await real_connect(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(asyncio, "open_unix_connection", connect)
    split = split_in_two(run, outcomes, worker)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        outer.append(task)
        await asyncio.wait_for(split.run(parts(batch)), 60)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
    assert split.workers_used == 2
    pids = [w.pid for w in split._workers]
    assert len(pids) == 2
    for pid in pids:  # each worker ended and was waited for: none is left running
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
