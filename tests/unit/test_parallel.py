"""The pure parts of a flush split over worker processes, and the workers' side files.

The workers themselves (forked, each a whole flush) are tested against a real
Postfix in tests/integration/test_parallel_flush.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from rescue.cli.flush_cmd import MAX_WORKERS, worker_count
from rescue.config import SmarthostConfig
from rescue.errors import JournalError, PostfixError, PostsuperFailed, QueueFileError, RescueError
from rescue.flush.parallel import End, frame, portable, read_frame, split, worker_of
from rescue.journal.store import ACCEPTED, HELD, HOLDING, SENDING, Journal
from rescue.model import QueuedMessage, Recipient, Selected


def selected(queue_id: str, arrival: int) -> Selected:
    message = QueuedMessage(
        queue_id, "deferred", arrival, 100, "a@example.com", (Recipient("b@kunde1.test"),)
    )
    return Selected(message, "ionos", "invalid sender domain")


def test_a_queue_id_always_goes_to_the_same_worker() -> None:
    ids = [f"4F{n:08X}" for n in range(400)]
    assert [worker_of(q, 2) for q in ids] == [worker_of(q, 2) for q in ids]
    shares = split([selected(q, n) for n, q in enumerate(ids)], 2)
    # Both workers get a fair part, each in the batch's order (oldest first).
    assert all(150 < len(share) < 250 for share in shares)
    for share in shares:
        arrivals = [s.message.arrival_time for s in share]
        assert arrivals == sorted(arrivals)
    assert sorted(s.message.queue_id for share in shares for s in share) == sorted(ids)


def test_a_message_listed_twice_reaches_one_worker_twice() -> None:
    # That worker's flush takes it once (tests/unit/test_flush_core.py).
    batch = [selected("4F00000001", 1), selected("4F00000002", 2), selected("4F00000001", 1)]
    shares = split(batch, 3)
    assert [len([s for s in share if s.message.queue_id == "4F00000001"]) for share in shares] in (
        [2, 0, 0],
        [0, 2, 0],
        [0, 0, 2],
    )


def test_errors_reach_the_parent_as_a_class_with_the_same_exit_code() -> None:
    failed = portable(PostsuperFailed("postsuper: fatal: queue file write error", frozenset()))
    assert type(failed) is PostfixError
    assert str(failed) == "postsuper: fatal: queue file write error"
    broken = portable(QueueFileError("4F00000001", "truncated"))
    assert type(broken) is RescueError and str(broken) == "4F00000001: truncated"
    journal = portable(JournalError("journal /x: disk I/O error"))
    assert type(journal) is JournalError and str(journal) == "journal /x: disk I/O error"


def test_frames_carry_batches_and_the_end() -> None:
    async def roundtrip() -> list[object]:
        reader = asyncio.StreamReader()
        batch = [selected("4F00000001", 1)]
        reader.feed_data(frame(batch) + frame(End(["4F00000002"], PostfixError("no"))))
        reader.feed_data(frame(batch)[:7])  # a frame cut short: the end
        reader.feed_eof()
        return [await read_frame(reader) for _ in range(3)]

    batch, end, cut = asyncio.run(roundtrip())
    assert batch == [selected("4F00000001", 1)]
    assert isinstance(end, End) and end.left_on_hold == ["4F00000002"]
    assert isinstance(end.error, PostfixError) and str(end.error) == "no"
    assert cut is None


def row(journal: Journal, key: str, state: str) -> list[object]:
    qid = key.split(":", maxsplit=1)[0]
    return [key, qid, journal.run_id, state, None, None, None, "relay1", "250 ok", None, 1.0]


def test_recovery_replays_every_workers_side_file(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    journal = Journal(path, clock=lambda: 1.0)
    journal.begin_run("flush", 1)
    keys = ["A1:1:1", "B2:1:1", "C3:1:1"]
    journal.start(((k, k[:2]), "ionos", "a@example.com", ["b@kunde1.test"]) for k in keys)
    journal.record([(k, k[:2]) for k in keys], HELD)
    # What two workers appended and their writer threads never committed (a crash);
    # worker 2's last line was cut short by it.
    worker1, worker2 = Journal(path, worker=1), Journal(path, worker=2)
    assert worker1.steps_path != worker2.steps_path != journal.steps_path
    worker1.steps_path.write_text(
        json.dumps(row(journal, keys[0], SENDING))
        + "\n"
        + json.dumps(row(journal, keys[0], ACCEPTED))
        + "\n"
    )
    worker2.steps_path.write_text(
        json.dumps(row(journal, keys[1], SENDING))
        + "\n"
        + json.dumps(row(journal, keys[2], ACCEPTED))[:20]
    )

    assert Journal(path).replay_steps() == 2

    states = {e.key: e.state for e in journal.unfinished()}
    assert states == {keys[0]: ACCEPTED, keys[1]: SENDING, keys[2]: HELD}
    assert worker1.steps_path.read_bytes() == b"" and worker2.steps_path.read_bytes() == b""
    assert HOLDING not in states.values()


def test_workers_share_the_smarthosts_connections() -> None:
    def host(name: str, connections: int) -> SmarthostConfig:
        return SmarthostConfig(name=name, host="127.0.0.1", max_connections=connections)

    two = [host("a", 8), host("b", 2)]
    assert worker_count(3, two) == 2  # never more workers than b's connections
    assert worker_count(1, two) == 1
    assert worker_count(None, [host("a", 8)]) == min(os.cpu_count() or 1, MAX_WORKERS)
    assert worker_count(None, [host("a", 1)]) == 1


def _posix_locks(pid: int, inode: int) -> list[str]:
    """The POSIX locks /proc/locks shows for this process on this file."""
    out = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if fields[1] == "POSIX" and fields[4] == str(pid) and fields[5].endswith(f":{inode}"):
            out.append(line)
    return out


def test_a_worker_forked_while_the_journal_is_closed_holds_its_own_locks(
    tmp_path: Path,
) -> None:
    # A connection open across fork() hands SQLite's lock records to the child, which
    # then takes no lock of its own: once the parent is gone, another process could
    # checkpoint and delete the write-ahead log the child still writes to.
    path = tmp_path / "journal.db"
    journal = Journal(path)
    journal.begin_run("flush", 1)
    inode = path.stat().st_ino
    read, write = os.pipe()
    with journal.closed_for_fork():
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                own = Journal(path, worker=0)
                with own._transaction() as db:  # holds the database's locks meanwhile
                    db.execute("SELECT count(*) FROM runs").fetchone()
                    os.write(write, str(len(_posix_locks(os.getpid(), inode))).encode())
                status = 0
            finally:
                os._exit(status)
    os.close(write)
    child_locks = int(os.read(read, 16) or b"-1")
    _, status = os.waitpid(pid, 0)

    assert status == 0
    assert child_locks >= 1
    assert journal.last_run("flush") is not None  # the parent's connection is back
