"""The export format and an export folder as a mail queue: round trips, damage, moves."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rescue.errors import QueueFileError
from rescue.flush.export import Export, ExportOutcome
from rescue.journal.recovery import recover
from rescue.journal.store import HELD, RELEASED, Journal
from rescue.model import Envelope, QueuedMessage, Recipient, Selected
from rescue.sources.export import (
    FORMAT,
    ExportQueue,
    PairError,
    read_pair,
    write_pair,
)
from rescue.sources.spool import BadFile, SpoolQueue
from tests.unit.test_spool import IDS, put, queue_file

CONTENT = (
    b"From: alice@example.com\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n\n"
    b"Gr\xc3\xbc\xc3\x9fe\n.\n..dots\nbare\rCR\n" + b"x" * 5000 + b"\nno newline at the end"
)


def envelope(queue_id: str = "4F2A81C0B1", content: bytes = CONTENT, **kw: Any) -> Envelope:
    fields: dict[str, Any] = {
        "sender": "alice@example.com",
        "recipients": (
            Recipient("bob@kunde1.test", "host mx00[1.2.3.4] said: 421 no", "rfc822;Bob@K.test"),
            Recipient("carol@kunde1.test", "", None, "SUCCESS,DELAY"),
        ),
        "envid": "env+3D42",
        "ret": "HDRS",
    }
    fields.update(kw)
    return Envelope(queue_id=queue_id, content=content, **fields)


def write(folder: Path, env: Envelope, arrival: int = 1795863633, size: int = 999) -> Path:
    _, js, new = write_pair(folder, env, arrival_time=arrival, size=size, hostname="mx.test")
    assert new
    return js


def messages_and_bad(folder: Path) -> tuple[dict[str, QueuedMessage], dict[str, str]]:
    messages, bad = {}, {}
    for item in ExportQueue(folder).listing():
        if isinstance(item, QueuedMessage):
            messages[item.queue_id] = item
        else:
            assert isinstance(item, BadFile)
            bad[item.path] = item.problem
    return messages, bad


# -- the format ------------------------------------------------------------------------


def test_a_pair_reads_back_as_it_was_written(tmp_path: Path) -> None:
    env = envelope()
    js = write(tmp_path, env)

    message, back = read_pair(js, tmp_path / "4F2A81C0B1.eml")

    assert back == env
    assert (tmp_path / "4F2A81C0B1.eml").read_bytes() == CONTENT  # as queued: LF, no dots
    assert message == QueuedMessage(
        "4F2A81C0B1", "deferred", 1795863633, 999, "alice@example.com", env.recipients
    )
    record = json.loads(js.read_text())
    assert record["format"] == FORMAT and record["version"] == 1
    assert record["hostname"] == "mx.test"
    assert record["recipients"][0] == {
        "address": "bob@kunde1.test",
        "orcpt": "rfc822;Bob@K.test",
        "notify": None,
        "delay_reason": "host mx00[1.2.3.4] said: 421 no",
    }
    assert record["content_sha256"] == hashlib.sha256(CONTENT).hexdigest()
    assert record["content_size"] == len(CONTENT)
    for path in tmp_path.iterdir():  # mail is private; no temporary file is left
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_bytes_that_are_not_utf8_survive_in_json(tmp_path: Path) -> None:
    sender = b"\xff\xfe@x.test".decode("utf-8", "surrogateescape")
    env = envelope(sender=sender, recipients=(Recipient("m\u00fcller@d\u00f6m.test"),))
    js = write(tmp_path, env)
    assert read_pair(js, tmp_path / "4F2A81C0B1.eml")[1] == env
    assert js.read_bytes().isascii()  # \udcff escapes; plain UTF-8 otherwise


def test_the_same_message_is_not_written_twice_another_is_refused(tmp_path: Path) -> None:
    write(tmp_path, envelope())
    before = (tmp_path / "4F2A81C0B1.json").read_bytes()

    again = write_pair(tmp_path, envelope(), arrival_time=1795863633, size=999, hostname=None)
    assert again[2] is False and (tmp_path / "4F2A81C0B1.json").read_bytes() == before

    with pytest.raises(PairError, match="holds another message with this queue id"):
        write_pair(tmp_path, envelope(), arrival_time=1795863634, size=999, hostname=None)

    (tmp_path / "4F2A81C0B1.eml").write_bytes(b"damaged")  # a broken copy is replaced
    assert write_pair(tmp_path, envelope(), arrival_time=1, size=2, hostname=None)[2] is True
    assert (tmp_path / "4F2A81C0B1.eml").read_bytes() == CONTENT


def damage(js: Path, **changes: Any) -> None:
    record = json.loads(js.read_text())
    for key, value in changes.items():
        if value is ...:
            del record[key]
        else:
            record[key] = value
    js.write_text(json.dumps(record))


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"format": ...}, "not an export envelope"),
        ({"version": 2}, "newer than this queue-rescue reads"),
        ({"sender": ...}, 'no "sender"'),
        ({"recipients": []}, '"recipients" must be a list of at least one'),
        ({"recipients": [{"address": "a@b\r\nRCPT TO:<x@y>"}]}, "control characters"),
        ({"recipients": [{"address": "a@b", "notify": "SOMETIMES"}]}, '"notify" must be'),
        ({"ret": "ALL"}, '"ret" must be FULL or HDRS'),
        ({"arrival_time": "yesterday"}, '"arrival_time" must be a int'),
        ({"content_sha256": "abc"}, "64 lowercase hex digits"),
    ],
)
def test_a_bad_envelope_names_its_file_and_problem(
    tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    js = write(tmp_path, envelope())
    damage(js, **change)
    with pytest.raises(PairError, match=problem) as caught:
        read_pair(js, tmp_path / "4F2A81C0B1.eml")
    assert caught.value.path == js


def test_truncated_changed_and_missing_content_are_noticed(tmp_path: Path) -> None:
    js = write(tmp_path, envelope())
    eml = tmp_path / "4F2A81C0B1.eml"
    eml.write_bytes(CONTENT[:-10])
    with pytest.raises(PairError, match="truncated") as caught:
        read_pair(js, eml)
    assert caught.value.path == eml
    eml.write_bytes(CONTENT.replace(b"dots", b"DOTS"))
    with pytest.raises(PairError, match="does not match the SHA-256"):
        read_pair(js, eml)
    eml.unlink()
    with pytest.raises(PairError, match="incomplete pair"):
        read_pair(js, eml)


def test_another_tool_may_leave_out_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "mine-1.eml").write_bytes(b"Subject: x\n\nhi\n")
    (tmp_path / "mine-1.json").write_text(
        json.dumps(
            {
                "format": FORMAT,
                "version": 1,
                "sender": "",
                "arrival_time": 1700000000,
                "recipients": [{"address": "bob@kunde1.test", "notify": "never"}],
            }
        )
    )
    message, env = read_pair(tmp_path / "mine-1.json", tmp_path / "mine-1.eml")
    assert env.recipients == (Recipient("bob@kunde1.test", notify="NEVER"),)
    assert (message.size, env.envid, env.ret, env.sender) == (15, None, None, "")


addresses = st.text(
    st.characters(blacklist_categories=("Cc", "Cs")) | st.sampled_from(["\udcff", "\udc80"]),
    max_size=30,
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    content=st.binary(max_size=3000),
    sender=addresses,
    rcpts=st.lists(
        st.builds(
            Recipient,
            address=addresses.filter(bool),
            delay_reason=st.text(max_size=40),
            orig_rcpt=st.none() | addresses,
            notify=st.sampled_from([None, "NEVER", "SUCCESS", "FAILURE,DELAY"]),
        ),
        min_size=1,
        max_size=5,
    ),
    envid=st.none() | addresses,
    ret=st.sampled_from([None, "FULL", "HDRS"]),
    arrival=st.integers(0, 2**40),
)
@example(content=b"", sender="", rcpts=[Recipient("a")], envid=None, ret=None, arrival=0)
def test_round_trip(
    tmp_path: Path,
    content: bytes,
    sender: str,
    rcpts: list[Recipient],
    envid: str | None,
    ret: str | None,
    arrival: int,
) -> None:
    for path in tmp_path.iterdir():
        path.unlink()
    env = Envelope("RT1", sender, tuple(rcpts), content, envid, ret)
    js = write(tmp_path, env, arrival=arrival, size=len(content))
    message, back = read_pair(js, tmp_path / "RT1.eml")
    assert back == env
    assert (message.arrival_time, message.size) == (arrival, len(content))


# -- an export folder as a queue -------------------------------------------------------


@pytest.fixture
def export(tmp_path: Path) -> Path:
    for qid in ("AAAAA1", "BBBBB2", "CCCCC3"):
        write(tmp_path, envelope(qid, content=qid.encode() + b"\n"))
    return tmp_path


def test_listing_reports_each_broken_file_and_lists_the_rest(export: Path) -> None:
    write(export, envelope("DDDDD4"))
    (export / "DDDDD4.eml").write_bytes(b"cut")  # truncated
    (export / "EEEEE5.eml").write_bytes(b"Subject: lonely\n")  # no envelope
    (export / "notes.txt").write_text("the admin's notes\n")  # foreign
    (export / "FFFFF6.json").write_text('{"some": "other tool"}')  # foreign JSON
    (export / "GGGGG7.json").write_bytes(b'{"format": "queue-rescue-exp')  # truncated JSON
    (export / ".HHHHH8.eml.tmp").write_bytes(b"half")  # an interrupted write: not a pair
    (export / "copy-of-A.eml").write_bytes((export / "AAAAA1.eml").read_bytes())
    (export / "copy-of-A.json").write_bytes((export / "AAAAA1.json").read_bytes())

    messages, bad = messages_and_bad(export)

    assert set(messages) == {"AAAAA1", "BBBBB2", "CCCCC3"}
    assert {m.queue_name for m in messages.values()} == {"deferred"}
    assert set(bad) == {
        str(export / name)
        for name in ("DDDDD4.eml", "EEEEE5.eml", "notes.txt", "FFFFF6.json", "GGGGG7.json")
    } | {str(export / "copy-of-A.json")}
    assert "truncated" in bad[str(export / "DDDDD4.eml")]
    assert "incomplete pair" in bad[str(export / "EEEEE5.eml")]
    assert "not part of an export" in bad[str(export / "notes.txt")]
    assert "not an export envelope" in bad[str(export / "FFFFF6.json")]
    assert "not JSON" in bad[str(export / "GGGGG7.json")]
    assert "the same message as" in bad[str(export / "copy-of-A.json")]


def test_pairs_move_together_and_are_never_deleted(export: Path) -> None:
    queue = ExportQueue(export)
    assert queue.hold(["AAAAA1", "BBBBB2", "NOSUCH"]) == {"AAAAA1", "BBBBB2"}
    assert sorted(p.name for p in (export / "queue-rescue/held").iterdir()) == [
        "AAAAA1.eml",
        "AAAAA1.json",
        "BBBBB2.eml",
        "BBBBB2.json",
    ]
    messages, bad = messages_and_bad(export)
    assert bad == {}
    assert {q: m.queue_name for q, m in messages.items()} == {
        "AAAAA1": "hold",
        "BBBBB2": "hold",
        "CCCCC3": "deferred",
    }
    assert queue.read_envelope("AAAAA1").content == b"AAAAA1\n"
    assert queue.release(["BBBBB2", "CCCCC3"]) == {"BBBBB2"}
    assert queue.delete(["AAAAA1", "BBBBB2"]) == {"AAAAA1"}
    assert sorted(p.name for p in (export / "queue-rescue/done").iterdir()) == [
        "AAAAA1.eml",
        "AAAAA1.json",
    ]
    assert set(messages_and_bad(export)[0]) == {"BBBBB2", "CCCCC3"}


def test_a_second_pair_of_the_same_name_in_done_is_kept_apart(export: Path) -> None:
    queue = ExportQueue(export)
    queue.hold(["AAAAA1"])
    queue.delete(["AAAAA1"])
    write(export, envelope("AAAAA1", content=b"another\n"), arrival=1)
    queue.hold(["AAAAA1"])
    assert queue.delete(["AAAAA1"]) == {"AAAAA1"}
    done = export / "queue-rescue/done"
    assert (done / "AAAAA1.1.eml").read_bytes() == b"another\n"
    assert (done / "AAAAA1.eml").read_bytes() == b"AAAAA1\n"


def test_a_crash_between_the_two_moves_of_a_pair_is_harmless(export: Path) -> None:
    held = export / "queue-rescue/held"
    held.mkdir(parents=True)
    (export / "AAAAA1.eml").rename(held / "AAAAA1.eml")  # hold moved the .eml, then died

    messages, bad = messages_and_bad(export)
    assert messages["AAAAA1"].queue_name == "deferred" and bad == {}

    queue = ExportQueue(export)
    assert queue.hold(["AAAAA1"]) == {"AAAAA1"}
    assert queue.read_envelope("AAAAA1").content == b"AAAAA1\n"
    assert queue.release(["AAAAA1"]) == {"AAAAA1"}
    assert (export / "AAAAA1.eml").is_file() and (export / "AAAAA1.json").is_file()


def test_recovery_gives_held_pairs_back(export: Path) -> None:
    queue = ExportQueue(export)
    messages, _ = messages_and_bad(export)
    journal = Journal(queue.journal_path)
    key = (messages["AAAAA1"].key, "AAAAA1")
    journal.start([(key, "ionos", "alice@example.com", [])])
    queue.hold(["AAAAA1"])
    journal.record([key], HELD)

    report = recover(journal, ExportQueue(export))

    assert report.released == ("AAAAA1",)
    assert journal.states([key[0]]) == {key[0]: RELEASED}
    assert messages_and_bad(export)[0]["AAAAA1"].queue_name == "deferred"


# -- fuzz: whatever lies in an export, the listing reports it and goes on ---------------


@settings(max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.binary(max_size=400)
    | st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    ).map(lambda obj: json.dumps(obj).encode()),
    st.sampled_from(["format", "version", "sender", "recipients", "arrival_time", "size"]),
    st.binary(max_size=50),
)
def test_damaged_envelopes_are_listed_or_reported_never_raised(
    tmp_path: Path, junk: bytes, key: str, eml: bytes
) -> None:
    for path in tmp_path.rglob("*.*"):
        path.unlink()
    write(tmp_path, envelope("GOOD1"))
    write(tmp_path, envelope("MAYBE1", content=eml))
    js = tmp_path / "MAYBE1.json"
    record = json.loads(js.read_text())
    try:
        record[key] = json.loads(junk)
    except ValueError:
        record[key] = junk.decode("latin-1")
    js.write_text(json.dumps(record))
    (tmp_path / "JUNK1.json").write_bytes(junk)

    items = list(ExportQueue(tmp_path).listing())

    assert [i.queue_id for i in items if isinstance(i, QueuedMessage)][:1] == ["GOOD1"]
    assert all(isinstance(i, QueuedMessage | BadFile) for i in items)
    assert len(items) == 3


# -- the export run, against a spool copy standing in for Postfix ----------------------


@pytest.fixture
def source(tmp_path: Path) -> SpoolQueue:
    for n, qid in enumerate(IDS[:3]):
        put(tmp_path / "spool", f"deferred/{qid[0]}/{qid}", queue_file(f"r{n}@k.test".encode()))
    return SpoolQueue(tmp_path / "spool")


def run_export(
    source: SpoolQueue, folder: Path, *, keep: bool = False, read: Any = None
) -> tuple[list[ExportOutcome], Journal]:
    folder.mkdir(exist_ok=True)
    journal = Journal(folder.parent / "journal.sqlite3")
    outcomes: list[ExportOutcome] = []
    selection = [
        Selected(m, "ionos", None) for m in source.listing() if isinstance(m, QueuedMessage)
    ]
    run = Export(
        queue=source,
        read_envelope=read or source.read_envelope,
        journal=journal,
        folder=folder,
        keep=keep,
        hostname="old.example",
        report=outcomes.append,
    )
    run.run(selection)
    return outcomes, journal


def states(journal: Journal) -> set[str]:
    return {e.state for e in journal.recent(0)}


def test_an_export_writes_each_pair_then_deletes_from_the_queue(
    source: SpoolQueue, tmp_path: Path
) -> None:
    outcomes, journal = run_export(source, tmp_path / "export")

    assert {o.queue_id: o.action for o in outcomes} == dict.fromkeys(IDS[:3], "exported")
    assert states(journal) == {"deleted"}
    for qid in IDS[:3]:
        assert (tmp_path / f"spool/queue-rescue/done/deferred/{qid[0]}/{qid}").is_file()
        message, env = read_pair(tmp_path / f"export/{qid}.json", tmp_path / f"export/{qid}.eml")
        assert env.content == source.read_envelope(qid).content
        assert message.queue_id == qid
        assert json.loads((tmp_path / f"export/{qid}.json").read_text())["hostname"] == (
            "old.example"
        )


def test_keep_leaves_the_messages_held(source: SpoolQueue, tmp_path: Path) -> None:
    outcomes, journal = run_export(source, tmp_path / "export", keep=True)

    assert {o.action for o in outcomes} == {"exported"}
    assert states(journal) == {"skipped"}  # final: recovery leaves them on hold
    assert {m.queue_name for m in source.listing() if isinstance(m, QueuedMessage)} == {"hold"}


def test_an_unreadable_message_is_released_the_rest_exported(
    source: SpoolQueue, tmp_path: Path
) -> None:
    def read(queue_id: str) -> Envelope:
        if queue_id == IDS[1]:
            raise QueueFileError(queue_id, "no end record (truncated?)")
        return source.read_envelope(queue_id)

    outcomes, _ = run_export(source, tmp_path / "export", read=read)

    actions = {o.queue_id: o.action for o in outcomes}
    assert actions == {IDS[0]: "exported", IDS[1]: "failed", IDS[2]: "exported"}
    assert (tmp_path / f"spool/deferred/{IDS[1][0]}/{IDS[1]}").is_file()  # released
    assert not (tmp_path / f"export/{IDS[1]}.json").exists()


def test_an_interrupted_export_takes_back_unconfirmed_pairs_and_releases_all(
    source: SpoolQueue, tmp_path: Path
) -> None:
    calls = []

    def read(queue_id: str) -> Envelope:
        calls.append(queue_id)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C (or SIGTERM) while the chunk is being written
        return source.read_envelope(queue_id)

    with pytest.raises(KeyboardInterrupt):
        run_export(source, tmp_path / "export", read=read)

    journal = Journal(tmp_path / "journal.sqlite3")
    assert {e.state for e in journal.recent(0)} == {"released"}
    assert sorted(p.name for p in (tmp_path / "export").iterdir()) == []
    listed = [m for m in source.listing() if isinstance(m, QueuedMessage)]
    assert {m.queue_name for m in listed} == {"deferred"} and len(listed) == 3
