"""The queue file and defer log readers on synthetic files, real Postfix files, fuzzed input."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from rescue.errors import QueueFileError
from rescue.model import Envelope, Recipient
from rescue.postfix.queuefile import (
    QueueRecipient,
    format_envelope,
    notify_text,
    read_queue_file,
)
from rescue.postfix.records import (
    REC_TYPE_ATTR,
    REC_TYPE_CONT,
    REC_TYPE_DONE,
    REC_TYPE_DRCP,
    REC_TYPE_DSN_ENVID,
    REC_TYPE_DSN_NOTIFY,
    REC_TYPE_DSN_ORCPT,
    REC_TYPE_DSN_RET,
    REC_TYPE_FILT,
    REC_TYPE_FROM,
    REC_TYPE_FULL,
    REC_TYPE_MESG,
    REC_TYPE_NORM,
    REC_TYPE_PTR,
    REC_TYPE_RCPT,
    REC_TYPE_SIZE,
    REC_TYPE_TIME,
    REC_TYPE_WARN,
)
from tests.unit.queuefile_build import (
    ARRIVAL,
    GOOD,
    HEADER,
    REAL_FILE,
    SIZE_FORMAT,
    assemble,
    parse,
    rcpt,
    simple_envelope,
    text_records,
)
from tests.unit.test_records import encode


def test_a_simple_message() -> None:
    qf = parse(assemble(simple_envelope(), text_records([*HEADER, b"hello"])))
    assert qf.queue_id == "4F2A81C0B1"
    assert qf.sender == "sender@src.test"
    assert qf.arrival_time == pytest.approx(1795863633.692240)
    assert qf.create_time == 1795863633
    assert qf.attributes["rewrite_context"] == "local"
    assert qf.attributes["log_client_name"] == "localhost"
    assert qf.recipients == (
        QueueRecipient(
            "rcpt@dst.test", False, "rcpt@dst.test", None, None, qf.recipients[0].offset
        ),
    )
    assert qf.content == b"From: a@src.test\nSubject: test\n\nhello\n"
    assert (
        qf.message_size
        == qf.content_length
        == len(b"".join(encode(t, p) for t, p in text_records([*HEADER, b"hello"])))
    )
    assert qf.envid is None and qf.ret is None


def test_recipient_offset_is_where_its_record_starts() -> None:
    env = simple_envelope(b"s@x.test", rcpt(b"one@x.test"), rcpt(b"two@x.test"))
    data = assemble(env, text_records(HEADER))
    for recipient in parse(data).recipients:
        assert data[recipient.offset] == REC_TYPE_RCPT
        assert data[recipient.offset + 2 :].startswith(recipient.address.encode())


def test_null_sender_and_utf8_addresses() -> None:
    env = simple_envelope(b"", rcpt("m\u00fcller@d\u00f6m.test".encode()))
    qf = parse(assemble(env, text_records(HEADER)))
    assert qf.sender == ""
    assert qf.recipients[0].address == "m\u00fcller@d\u00f6m.test"


def test_bytes_that_are_not_utf8_survive_a_round_trip() -> None:
    qf = parse(assemble(simple_envelope(b"\xff\xfe@x.test"), text_records(HEADER)))
    assert qf.sender.encode("utf-8", "surrogateescape") == b"\xff\xfe@x.test"


def test_done_and_canceled_recipients_are_not_pending() -> None:
    env = simple_envelope(
        b"s@x.test",
        rcpt(b"delivered@x.test", done=REC_TYPE_DONE),
        rcpt(b"pending@x.test"),
        rcpt(b"canceled@x.test", done=REC_TYPE_DRCP),
    )
    qf = parse(assemble(env, text_records(HEADER)))
    assert [(r.address, r.done) for r in qf.recipients] == [
        ("delivered@x.test", True),
        ("pending@x.test", False),
        ("canceled@x.test", True),
    ]
    assert [r.address for r in qf.pending()] == ["pending@x.test"]


def test_dsn_attributes_belong_to_the_next_recipient_only() -> None:
    env = simple_envelope(
        b"s@x.test",
        rcpt(b"a@x.test", orcpt=b"rfc822;orig@x.test", notify=10, orig=b"alias@x.test"),
        rcpt(b"b@x.test"),
        rcpt(b"c@x.test", notify=1),
    )
    env[1:1] = [(REC_TYPE_ATTR, b"envelope_id=env123"), (REC_TYPE_ATTR, b"ret_flags=2")]
    qf = parse(assemble(env, text_records(HEADER)))
    a, b, c = qf.recipients
    assert (a.dsn_orcpt, a.notify, a.orig_rcpt) == ("rfc822;orig@x.test", 10, "alias@x.test")
    assert (b.dsn_orcpt, b.notify, b.orig_rcpt) == (None, None, "b@x.test")
    assert c.notify == 1
    assert (qf.envid, qf.ret) == ("env123", 2)
    assert "dsn_orig_rcpt" not in qf.attributes and "notify_flags" not in qf.attributes


def test_dsn_records_of_their_own_count_as_well() -> None:
    env = simple_envelope(b"s@x.test", [])
    env += [
        (REC_TYPE_DSN_ENVID, b"id-1"),
        (REC_TYPE_DSN_RET, b"1"),
        (REC_TYPE_DSN_NOTIFY, b"4"),
        (REC_TYPE_DSN_ORCPT, b"rfc822;o@x.test"),
        (REC_TYPE_RCPT, b"r@x.test"),
    ]
    qf = parse(assemble(env, text_records(HEADER)))
    assert (qf.envid, qf.ret) == ("id-1", 1)
    assert (qf.recipients[0].notify, qf.recipients[0].dsn_orcpt) == (4, "rfc822;o@x.test")


@pytest.mark.parametrize("stored", [b"0", b"16", b"3", b"x", b"-2", b"9" * 5000])
def test_malformed_notify_flags_are_ignored_like_the_queue_manager_does(stored: bytes) -> None:
    env = simple_envelope(b"s@x.test", [(REC_TYPE_ATTR, b"notify_flags=" + stored)])
    env.append((REC_TYPE_RCPT, b"r@x.test"))
    assert parse(assemble(env, text_records(HEADER))).recipients[0].notify is None


def test_recipients_in_the_extracted_segment_count() -> None:
    extracted = [(REC_TYPE_ATTR, b"encoding=8bit"), *rcpt(b"late@x.test")]
    qf = parse(assemble(simple_envelope(), text_records(HEADER), extracted))
    assert [r.address for r in qf.recipients] == ["rcpt@dst.test", "late@x.test"]
    assert qf.attributes["encoding"] == "8bit"


@pytest.mark.parametrize(
    ("mask", "text"),
    [
        (None, None),
        (1, "NEVER"),
        (2, "SUCCESS"),
        (10, "SUCCESS,DELAY"),
        (14, "SUCCESS,FAILURE,DELAY"),
    ],
)
def test_notify_text(mask: int | None, text: str | None) -> None:
    assert notify_text(mask) == text


def test_envelope_for_the_rest_of_queue_rescue() -> None:
    env = simple_envelope(
        b"s@x.test",
        rcpt(b"done@x.test", done=REC_TYPE_DONE),
        rcpt(b"a@x.test", orcpt=b"rfc822;o@x.test", notify=10),
        rcpt(b"b@x.test"),
    )
    env[1:1] = [(REC_TYPE_ATTR, b"envelope_id=E1"), (REC_TYPE_ATTR, b"ret_flags=2")]
    qf = parse(assemble(env, text_records([*HEADER, b"body"])))
    assert qf.envelope({"a@x.test": "host mx said: 421 busy"}) == Envelope(
        queue_id="4F2A81C0B1",
        sender="s@x.test",
        recipients=(
            Recipient("a@x.test", "host mx said: 421 busy", "rfc822;o@x.test", "SUCCESS,DELAY"),
            Recipient("b@x.test", "", None, None),
        ),
        content=qf.content,
        envid="E1",
        ret="HDRS",
    )


# -- content --------------------------------------------------------------------------


def test_content_is_what_postcat_bh_prints() -> None:
    long_line = bytes(range(32, 127)) * 60  # 5,700 characters: stored as L, L, N
    lines = [*HEADER, b"8bit: \xe4\xf6\xfc", long_line, b".dot", b"..two", b".", b"", b"\tx "]
    records = text_records(lines)
    assert [t for t, _ in records].count(REC_TYPE_CONT) == 2
    qf = parse(assemble(simple_envelope(), records))
    assert qf.content == b"".join(line + b"\n" for line in lines)


def test_a_last_unterminated_piece_gets_a_newline() -> None:
    records = [*text_records(HEADER), (REC_TYPE_CONT, b"no newline")]
    assert parse(assemble(simple_envelope(), records)).content.endswith(b"\n\nno newline\n")


def test_content_follows_pointers_into_the_heap() -> None:
    """An added header lives after END, reached by a pointer and returning by another."""
    plain = assemble(
        simple_envelope(), [*text_records([b"Subject: s"]), (REC_TYPE_PTR, b"%15d" % 0)]
    )
    ptr_at = plain.index(encode(REC_TYPE_PTR, b"%15d" % 0))
    heap_at = len(plain)
    back = ptr_at + len(encode(REC_TYPE_PTR, b"%15d" % 0))
    heap = encode(REC_TYPE_NORM, b"X-Added: yes") + encode(REC_TYPE_PTR, b"%15d" % back)
    data = plain[:ptr_at] + encode(REC_TYPE_PTR, b"%15d" % heap_at) + plain[back:] + heap
    assert parse(data).content == b"Subject: s\nX-Added: yes\n"


# -- files that are not right -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty file"),
        (b"%PDF-1.4\n", "not a Postfix queue file"),
        (b"From: someone\nSubject: not a queue file\n", "truncated"),  # F: a full name
        (GOOD[:-2], "no end record"),
        (GOOD[:40], "truncated"),
        (assemble([(REC_TYPE_FROM, b"s@x.test")], text_records(HEADER)), "no arrival time"),
        (assemble([(REC_TYPE_TIME, ARRIVAL)], text_records(HEADER)), "no sender"),
        (encode(REC_TYPE_TIME, ARRIVAL) + encode(REC_TYPE_MESG, b""), "no size record"),
        (assemble([(REC_TYPE_ATTR, b"no equals sign")], text_records(HEADER)), "malformed attr"),
        (assemble(simple_envelope(), [(REC_TYPE_FROM, b"x")]), "inside the content"),
        (assemble([(REC_TYPE_TIME, b"yesterday")], text_records(HEADER)), "arrival time"),
    ],
)
def test_damaged_files_raise_queue_file_error(data: bytes, problem: str) -> None:
    with pytest.raises(QueueFileError, match=problem) as caught:
        parse(data, "BADF00D")
    assert caught.value.queue_id == "BADF00D"


def test_every_truncation_is_noticed() -> None:
    for length in range(len(GOOD)):
        with pytest.raises(QueueFileError):
            parse(GOOD[:length])


@pytest.mark.parametrize(
    ("data_size", "data_offset", "problem"),
    [(7, 200, "does not lead to the end of the content"), (10**6, 150, "past the end")],
)
def test_a_size_record_that_does_not_lead_to_the_content_end(
    data_size: int, data_offset: int, problem: str
) -> None:
    size = SIZE_FORMAT % (data_size, data_offset, 1, 0, data_size, 0)
    size_record_length = len(encode(REC_TYPE_SIZE, size))
    with pytest.raises(QueueFileError, match=problem):
        parse(encode(REC_TYPE_SIZE, size) + GOOD[size_record_length:])


def test_queue_id_comes_from_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "3A1B2C4D5E"
    path.write_bytes(b"not a queue file")
    with pytest.raises(QueueFileError) as caught:
        read_queue_file(path)
    assert caught.value.queue_id == "3A1B2C4D5E"
    path.write_bytes(GOOD)
    assert read_queue_file(path).queue_id == "3A1B2C4D5E"


def test_a_vanished_file_is_not_a_queue_file_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_queue_file(tmp_path / "DELIVERED1")


# -- postcat -e ---------------------------------------------------------------------------


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """postcat prints times in the local zone: make that UTC for fixed expectations."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("utc")
def test_format_envelope_prints_records_as_postcat_does() -> None:
    env = [
        (REC_TYPE_TIME, ARRIVAL),
        (REC_TYPE_ATTR, b"  create_time = 0 "),
        (REC_TYPE_WARN, b"              0"),
        (REC_TYPE_FULL, b"Full Name\0hidden after NUL"),
        (REC_TYPE_FILT, b"smtp:[127.0.0.1]:10025"),
        (REC_TYPE_FROM, b"s@x.test"),
        (ord("d"), b"3"),
        *rcpt(b"r@x.test", done=REC_TYPE_DONE, notify=2),
    ]
    data = assemble(env, text_records(HEADER), [(REC_TYPE_ATTR, b"encoding=7bit")])
    size = data[2:97].decode()
    assert format_envelope(parse(data), "hold/4/4F2A81C0B1") == (
        "*** ENVELOPE RECORDS hold/4/4F2A81C0B1 ***\n"
        f"message_size: {size}\n"
        "message_arrival_time: Sat Nov 28 11:00:33 2026\n"
        "create_time: Thu Jan  1 00:00:00 1970\n"
        "warning_message_time: Thu Jan  1 00:00:00 1970\n"
        "sender_fullname: Full Name\n"
        "content_filter: smtp:[127.0.0.1]:10025\n"
        "sender: s@x.test\n"
        "unknown_record_type: 3\n"
        "named_attribute: notify_flags=2\n"
        "original_recipient: r@x.test\n"
        "done_recipient: r@x.test\n"
        "*** MESSAGE CONTENTS hold/4/4F2A81C0B1 ***\n"
        "*** HEADER EXTRACTED hold/4/4F2A81C0B1 ***\n"
        "named_attribute: encoding=7bit\n"
        "*** MESSAGE FILE END hold/4/4F2A81C0B1 ***\n"
    )


# sha256 of `postcat -bh` and the start of `postcat -e` (TZ=UTC) for REAL_FILE.
REAL_CONTENT_SHA256 = "7da6bc08874c59362206d197e9ed070f6754f21098245638de3ace71d3e259b3"
REAL_SIZE = " ".join(f"{n:15d}" for n in (3535, 822, 5, 0, 3535, 0))
REAL_ENVELOPE_HEAD = f"""\
*** ENVELOPE RECORDS deferred/2/27B482108B1 ***
message_size: {REAL_SIZE}
message_arrival_time: Sat Nov 28 11:02:28 2026
create_time: Sat Nov 28 11:02:28 2026
named_attribute: log_ident=27B482108B1
named_attribute: rewrite_context=local
sender: newsender@src.test
"""
REAL_ENVELOPE_TAIL = """\
named_attribute: client_address_type=2
named_attribute: dsn_orig_rcpt=rfc822;one@defer.test
original_recipient: one@defer.test
recipient: one@defer.test
named_attribute: dsn_orig_rcpt=rfc822;two@defer.test
original_recipient: two@defer.test
canceled_recipient: two@defer.test
named_attribute: dsn_orig_rcpt=rfc822;three@accept.test
original_recipient: three@accept.test
done_recipient: three@accept.test
original_recipient: added@defer.test
recipient: added@defer.test
named_attribute: notify_flags=1
original_recipient: par@defer.test
recipient: par@defer.test
*** MESSAGE CONTENTS deferred/2/27B482108B1 ***
*** HEADER EXTRACTED deferred/2/27B482108B1 ***
*** MESSAGE FILE END deferred/2/27B482108B1 ***
"""


@pytest.mark.usefixtures("utc")
def test_a_real_milter_edited_file_reads_as_postcat_shows_it() -> None:
    qf = parse(REAL_FILE, "27B482108B1")
    assert hashlib.sha256(qf.content).hexdigest() == REAL_CONTENT_SHA256
    assert qf.content.startswith(b"X-First: top\nReceived: from client.test")
    assert b"Subject: changed subject\n" in qf.content
    assert qf.content.endswith(b"X-Added: yes\n\nbody line\n" + b"y" * 3000 + b"\n")
    text = format_envelope(qf, "deferred/2/27B482108B1")
    assert text.startswith(REAL_ENVELOPE_HEAD) and text.endswith(REAL_ENVELOPE_TAIL)
    assert qf.sender == "newsender@src.test"
    assert [(r.address, r.done, r.notify) for r in qf.recipients] == [
        ("one@defer.test", False, None),
        ("two@defer.test", True, None),
        ("three@accept.test", True, None),
        ("added@defer.test", False, None),
        ("par@defer.test", False, 1),
    ]
    assert (qf.message_size, qf.content_length, qf.data_offset) == (3535, 3535, 822)


# -- fuzzing: anything either reads or raises QueueFileError ----------------------------
