"""A spool copy as a mail queue: listing, moves aside (never deletes), recovery, bad files.

The queue files are built the way cleanup writes them (tests.unit.queuefile_build); the
integration tests (test_spool_export.py) do the same on a copy of a real Postfix queue.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rescue.journal.recovery import recover
from rescue.journal.store import ACCEPTED, DELETED, HELD, RELEASED, Journal
from rescue.model import QueuedMessage, Recipient
from rescue.postfix.listing import BadLine
from rescue.postfix.records import REC_TYPE_DONE
from rescue.sources.spool import BadFile, SpoolError, SpoolQueue, settle_strays
from tests.unit.queuefile_build import (
    HEADER,
    REAL_FILE,
    assemble,
    rcpt,
    simple_envelope,
    text_records,
)
from tests.unit.test_queuefile_fuzz import Step, mutate, mutations

IDS = ("4F2A81C0B1", "5A1B2C3D4E", "6C7D8E9F01", "7E8F9A0B1C")
REASON = "host mx00.kundenserver.de[212.227.15.41] said: 421 invalid sender domain"


def queue_file(*recipients: bytes, body: bytes = b"hello", done: bytes | None = None) -> bytes:
    rcpts = [rcpt(r) for r in recipients or (b"bob@kunde1.test",)]
    if done is not None:
        rcpts.insert(0, rcpt(done, done=REC_TYPE_DONE))
    env = simple_envelope(b"alice@example.com", *rcpts)
    return assemble(env, text_records([*HEADER, body]), recipient_count=len(rcpts))


def put(root: Path, rel: str, data: bytes, mode: int = 0o700) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def defer_log(*entries: tuple[str, str]) -> bytes:
    blocks = [
        f"<{address}>: {reason}\nrecipient={address}\nstatus=4.0.0\naction=delayed\n"
        f"reason={reason}\n\n"
        for address, reason in entries
    ]
    return "".join(blocks).encode()


def listed(queue: SpoolQueue) -> tuple[dict[str, QueuedMessage], list[BadFile]]:
    messages, bad = {}, []
    for item in queue.listing():
        if isinstance(item, QueuedMessage):
            messages[item.queue_id] = item
        else:
            assert isinstance(item, BadFile)
            bad.append(item)
    return messages, bad


def all_files(root: Path) -> set[str]:
    return {p.name for p in root.rglob("*") if p.is_file() and "journal" not in p.name}


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    """A copy with a message in each waiting queue, one on hold, and defer logs."""
    root = tmp_path / "copy"
    put(root, f"deferred/4/{IDS[0]}", queue_file(b"bob@kunde1.test", done=b"done@accept.test"))
    put(root, f"defer/4/{IDS[0]}", defer_log(("bob@kunde1.test", REASON)))
    put(root, f"active/5/{IDS[1]}", queue_file(b"carol@kunde2.test"))
    put(root, f"incoming/6/{IDS[2]}", queue_file(b"dave@kunde3.test"))
    put(root, f"hold/{IDS[3]}", queue_file(b"eve@kunde4.test"))
    return root


def test_listing_reads_every_queue_with_reasons_and_pending_recipients(spool: Path) -> None:
    messages, bad = listed(SpoolQueue(spool))

    assert bad == []
    assert {q: m.queue_name for q, m in messages.items()} == {
        IDS[0]: "deferred",
        IDS[1]: "deferred",  # active/: nothing is in flight in a copy
        IDS[2]: "deferred",  # incoming/, complete
        IDS[3]: "hold",  # put on hold by the admin: never selected
    }
    first = messages[IDS[0]]
    assert first.recipients == (Recipient("bob@kunde1.test", REASON),)  # not the done one
    assert first.sender == "alice@example.com"
    assert first.arrival_time == 1795863633
    assert messages[IDS[1]].recipients[0].delay_reason == ""  # never tried: no defer log


def test_a_reason_is_matched_by_record_offset_before_address(tmp_path: Path) -> None:
    data = queue_file(b"same@kunde1.test", b"other@kunde1.test")
    put(tmp_path, f"deferred/{IDS[0]}", data)
    offset = data.index(b"R\x10same@kunde1.test")
    put(
        tmp_path,
        f"defer/{IDS[0]}",
        f"recipient=same@kunde1.test\noffset={offset}\nreason=by offset\n\n"
        "recipient=other@kunde1.test\nreason=by address\n\n".encode(),
    )
    [message] = listed(SpoolQueue(tmp_path))[0].values()
    assert [r.delay_reason for r in message.recipients] == ["by offset", "by address"]


def test_bad_files_are_reported_with_their_path_and_the_rest_is_listed(spool: Path) -> None:
    good = queue_file()
    truncated = put(spool, "deferred/8/8A8B8C8D8E", good[:-30])
    corrupt = put(spool, "deferred/9/9A9B9C9D9E", b"C" + os.urandom(200))
    foreign = put(spool, "deferred/README.txt", b"notes of the admin\n")
    unfinished = put(spool, "incoming/A/AA1B2C3D4E", good, mode=0o600)
    (spool / "deferred/B").mkdir()
    link = spool / "deferred/B/BB1B2C3D4E"
    link.symlink_to(spool / f"hold/{IDS[3]}")
    twice = put(spool, f"active/4/{IDS[0]}", good)  # a copy made while Postfix moved it

    messages, bad = listed(SpoolQueue(spool))

    assert set(messages) == set(IDS)
    problems = {Path(b.path): b.problem for b in bad}
    assert set(problems) == {truncated, corrupt, foreign, unfinished, link, twice}
    assert "past the end of the file" in problems[truncated]
    assert "not a queue file" in problems[foreign]
    assert "not marked complete (mode 0600)" in problems[unfinished]
    assert problems[link] == "not a regular file"
    assert str(spool / f"deferred/4/{IDS[0]}") in problems[twice]
    assert {b.queue_id for b in bad if Path(b.path) == corrupt} == {"9A9B9C9D9E"}


def test_hold_release_delete_move_files_and_never_delete_one(spool: Path) -> None:
    queue = SpoolQueue(spool)
    before = all_files(spool)
    listed(queue)

    held = queue.hold([IDS[0], IDS[1], IDS[3], "NOSUCHID1"])

    assert held == {IDS[0], IDS[1]}  # hold/ was the admin's: not ours to take
    assert (spool / f"queue-rescue/held/deferred/4/{IDS[0]}").is_file()
    assert not (spool / f"deferred/4/{IDS[0]}").exists()
    messages, _ = listed(SpoolQueue(spool))
    assert messages[IDS[0]].queue_name == messages[IDS[1]].queue_name == "hold"
    assert queue.hold([IDS[0]]) == set()  # already held

    assert queue.release([IDS[1], IDS[2], IDS[3]]) == {IDS[1]}
    assert (spool / f"active/5/{IDS[1]}").is_file()  # back where it was
    assert queue.delete([IDS[0], IDS[1]]) == {IDS[0]}
    assert (spool / f"queue-rescue/done/deferred/4/{IDS[0]}").is_file()

    messages, bad = listed(SpoolQueue(spool))
    assert set(messages) == {IDS[1], IDS[2], IDS[3]} and bad == []
    assert all_files(spool) == before  # every file is still there, some moved aside


def test_a_new_queue_object_finds_messages_without_a_listing(spool: Path) -> None:
    assert SpoolQueue(spool).hold([IDS[2]]) == {IDS[2]}
    queue = SpoolQueue(spool)
    envelope = queue.read_envelope(IDS[2])
    assert [r.address for r in envelope.recipients] == ["dave@kunde3.test"]
    assert envelope.content == b"From: a@src.test\nSubject: test\n\nhello\n"
    assert queue.delete([IDS[2]]) == {IDS[2]}
    with pytest.raises(FileNotFoundError):
        queue.read_envelope("NOSUCHID1")


def test_done_keeps_an_earlier_message_of_the_same_queue_id(spool: Path) -> None:
    put(spool, f"queue-rescue/done/deferred/4/{IDS[0]}", b"an earlier message")
    queue = SpoolQueue(spool)
    queue.hold([IDS[0]])
    assert queue.delete([IDS[0]]) == {IDS[0]}
    done = spool / "queue-rescue/done/deferred/4"
    assert sorted(p.name for p in done.iterdir()) == [IDS[0], f"{IDS[0]}.1"]
    assert (done / IDS[0]).read_bytes() == b"an earlier message"


def test_recovery_releases_held_and_finishes_accepted(spool: Path) -> None:
    queue = SpoolQueue(spool)
    messages, _ = listed(queue)
    journal = Journal(queue.journal_path)
    journal.begin_run("flush", 1)
    rows = [((messages[q].key, q), "ionos", "alice@example.com", []) for q in IDS[:2]]
    journal.start(rows)
    queue.hold(IDS[:2])
    journal.record([(messages[IDS[0]].key, IDS[0])], HELD)
    journal.record([(messages[IDS[1]].key, IDS[1])], ACCEPTED, smarthost="relay1")
    journal.close()  # the run dies here

    journal = Journal(queue.journal_path)
    report = recover(journal, SpoolQueue(spool))

    assert report.released == (IDS[0],) and report.deleted == (IDS[1],)
    assert (spool / f"deferred/4/{IDS[0]}").is_file()
    assert (spool / f"queue-rescue/done/active/5/{IDS[1]}").is_file()
    assert journal.states([messages[q].key for q in IDS[:2]]) == {
        messages[IDS[0]].key: RELEASED,
        messages[IDS[1]].key: DELETED,
    }


def test_strays_the_journal_lost_are_moved_back_or_to_done(spool: Path) -> None:
    queue = SpoolQueue(spool)
    messages, _ = listed(queue)
    queue.hold(IDS[:3])
    journal = Journal(queue.journal_path)
    journal.record([(messages[IDS[1]].key, IDS[1])], DELETED)  # accepted and recorded
    journal.record([(messages[IDS[2]].key, IDS[2])], HELD)  # still open: recovery's job

    report = settle_strays(journal, SpoolQueue(spool))

    assert report.released == (IDS[0],) and report.deleted == (IDS[1],)
    assert (spool / f"deferred/4/{IDS[0]}").is_file()
    assert (spool / f"queue-rescue/held/incoming/6/{IDS[2]}").is_file()
    assert settle_strays(journal, SpoolQueue(tmp_empty(spool))).empty


def tmp_empty(spool: Path) -> Path:
    empty = spool.parent / "empty"
    (empty / "deferred").mkdir(parents=True, exist_ok=True)
    return empty


def test_check_refuses_a_folder_that_is_no_queue_and_a_live_queue(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="no such folder"):
        SpoolQueue(tmp_path / "missing").check()
    with pytest.raises(SpoolError, match="does not look like a Postfix queue directory"):
        SpoolQueue(tmp_path).check()
    put(tmp_path, f"deferred/{IDS[0]}", queue_file())
    pid = put(tmp_path, "pid/master.pid", b"       4242\n", mode=0o600)
    SpoolQueue(tmp_path).check()  # a stale pid file of a stopped Postfix
    with MasterLock(pid), pytest.raises(SpoolError, match="Postfix is running"):
        SpoolQueue(tmp_path).check()


class MasterLock:
    """Hold the lock a running Postfix master holds on pid/master.pid."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR)

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


# -- fuzz: whatever lies in a copy, the listing reports it and goes on ------------------


def one_bad_spool(root: Path, data: bytes, log: bytes) -> Iterator[QueuedMessage | BadLine]:
    for path in root.rglob("*"):
        if path.is_file():
            path.unlink()
    put(root, f"deferred/{IDS[0]}", queue_file())
    put(root, f"deferred/{IDS[1]}", data)
    put(root, f"defer/{IDS[1]}", log)
    return SpoolQueue(root).listing()


@settings(
    max_examples=200,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.one_of(st.just(queue_file()), st.just(REAL_FILE), st.binary(max_size=500)),
    mutations,
    st.binary(max_size=300),
)
@example(queue_file(), [("truncate", 40, 0)], b"reason=\xff\x00\n")
def test_damaged_files_are_listed_or_reported_never_raised(
    tmp_path: Path, data: bytes, steps: list[Step], log: bytes
) -> None:
    items = list(one_bad_spool(tmp_path, mutate(data, steps), log))
    assert len(items) == 2
    assert isinstance(items[0], QueuedMessage)
    second = items[1]
    if isinstance(second, BadFile):
        assert second.path == str(tmp_path / f"deferred/{IDS[1]}") and second.problem
    else:
        assert isinstance(second, QueuedMessage) and second.queue_id == IDS[1]


def test_a_flush_moving_files_part_way_through_the_listing_loses_none(spool: Path) -> None:
    # A streaming flush holds and releases (and may re-index) while the listing goes on:
    # every message is still listed once, and none is taken for a duplicate.
    queue = SpoolQueue(spool)
    listing = queue.listing()
    first = next(listing)
    assert isinstance(first, QueuedMessage)
    assert queue.hold([first.queue_id]) == {first.queue_id}
    queue._index()  # as a hold or release does when a file is not where it was
    assert queue.release([first.queue_id]) == {first.queue_id}

    rest = list(listing)

    assert [b for b in rest if isinstance(b, BadLine)] == []
    names = [first.queue_id, *(m.queue_id for m in rest if isinstance(m, QueuedMessage))]
    assert sorted(names) == sorted(IDS[:4])
