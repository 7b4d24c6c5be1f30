"""The queue file and defer log readers on synthetic files, real Postfix files, fuzzed input."""

from __future__ import annotations

import base64
import hashlib
import io
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rescue.errors import QueueFileError
from rescue.model import Envelope, Recipient
from rescue.postfix.deferlog import DeferEntry, delay_reasons, parse_defer_log, read_defer_log
from rescue.postfix.queuefile import (
    QueueFile,
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
    REC_TYPE_END,
    REC_TYPE_FILT,
    REC_TYPE_FROM,
    REC_TYPE_FULL,
    REC_TYPE_MESG,
    REC_TYPE_NORM,
    REC_TYPE_ORCP,
    REC_TYPE_PTR,
    REC_TYPE_RCPT,
    REC_TYPE_SIZE,
    REC_TYPE_TIME,
    REC_TYPE_WARN,
    REC_TYPE_XTRA,
)
from tests.unit.test_records import encode

Rec = tuple[int, bytes]
LINE_LIMIT = 2048  # Postfix's line_length_limit: longer lines are stored in pieces
SIZE_FORMAT = b"%15d %15d %15d %15d %15d %15d"  # rec_type.h, six fields in Postfix 3.7
ARRIVAL = b"1795863633 692240"


# -- building queue files the way cleanup writes them ------------------------------------


def text_records(lines: list[bytes]) -> list[Rec]:
    """Lines (without newline) as N records, long ones split into L pieces first."""
    records = []
    for line in lines:
        rest = line
        while len(rest) > LINE_LIMIT:
            records.append((REC_TYPE_CONT, rest[:LINE_LIMIT]))
            rest = rest[LINE_LIMIT:]
        records.append((REC_TYPE_NORM, rest))
    return records


def rcpt(
    address: bytes,
    *,
    done: int | None = None,
    orcpt: bytes | None = None,
    notify: int | None = None,
    orig: bytes | None = None,
) -> list[Rec]:
    """A recipient with its DSN attributes, in cleanup's order."""
    records: list[Rec] = []
    if notify is not None:
        records.append((REC_TYPE_ATTR, b"notify_flags=%d" % notify))
    if orcpt is not None:
        records.append((REC_TYPE_ATTR, b"dsn_orig_rcpt=" + orcpt))
    records.append((REC_TYPE_ORCP, address if orig is None else orig))
    records.append((done or REC_TYPE_RCPT, address))
    return records


def assemble(
    envelope: list[Rec],
    content: list[Rec],
    extracted: list[Rec] = (),  # type: ignore[assignment]
    *,
    recipient_count: int = 1,
) -> bytes:
    """A complete queue file: size record, envelope, content, extracted segment, END."""
    head = b"".join(encode(t, p) for t, p in envelope)
    size_length = len(encode(REC_TYPE_SIZE, SIZE_FORMAT % (0, 0, 0, 0, 0, 0)))
    mesg = encode(REC_TYPE_MESG, b"")
    data_offset = size_length + len(head) + len(mesg)
    body = b"".join(encode(t, p) for t, p in content)
    tail = b"".join(
        encode(t, p) for t, p in [(REC_TYPE_XTRA, b""), *extracted, (REC_TYPE_END, b"")]
    )
    size = SIZE_FORMAT % (len(body), data_offset, recipient_count, 0, len(body), 0)
    return encode(REC_TYPE_SIZE, size) + head + mesg + body + tail


def simple_envelope(sender: bytes = b"sender@src.test", *recipients: list[Rec]) -> list[Rec]:
    records: list[Rec] = [
        (REC_TYPE_TIME, ARRIVAL),
        (REC_TYPE_ATTR, b"create_time=1795863633"),
        (REC_TYPE_ATTR, b"rewrite_context=local"),
        (REC_TYPE_FROM, sender),
        (REC_TYPE_ATTR, b"log_client_name=localhost"),
    ]
    for recipient in recipients or (rcpt(b"rcpt@dst.test"),):
        records.extend(recipient)
    return records


HEADER = [b"From: a@src.test", b"Subject: test", b""]


def parse(data: bytes, queue_id: str = "4F2A81C0B1") -> QueueFile:
    return read_queue_file(io.BytesIO(data), queue_id)


# -- envelope -------------------------------------------------------------------------


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


GOOD = assemble(simple_envelope(), text_records([*HEADER, b"body"]))


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


# A queue file Postfix 3.7 wrote after a milter inserted, added and changed headers, added
# two recipients (one with NOTIFY=NEVER), deleted one and changed the sender: pointer
# records into a heap after END, padding, a canceled recipient, a delivered recipient.
REAL_FILE = zlib.decompress(
    base64.b64decode(
        """
eNrtWG1LG0EQjp+KUKy2pLXQwkDBKjZ2dy8vZ+KJp0YQ6qUkabGUEs7bSXLlvE33tsZ868/qr+hv6l4S9C6J4tfS
e0IIM/PszOzsXsiTow7cwigZJUjCZAzSKM3YBO5br+PtNVrZLZllo1I0gZYMWjbs555EV2FH+Zdo3YbtfCB6HZ9j
qCxWOSyajBLzkNp5iUPpa74nQoXXygqE5waDJ4kyxXJp134ZL/cCX6/vhK5OPeb1RaTsV4mQy7nEKLIoq+wQ/aKT
utPoQEhllQllZftt7L7UVLeHHSH9nh/epvx6s/zbpHAfAzEpO8m0o1AXfhGHBlIo4YlgEq63ztof7fziRl9LvEIZ
4R37WL9zD2vz/a9HKHWyReRpZEw2CGElO7+4/2f39T5N3FGjAVrMfsOjcDynjvQGypJdT9+fmgjxgGMX5ThhYyVt
N2fsO5KooUglSdvvZ2x7Y3GSvkQ8cD0PB5PdNdbmXMfzrvRFKxXpWS7tKlKWGBls3hwXJC7JlkOWL0bwQ05JH3W8
619vwdBXfRjPFXwOiXtfczaWW656B8wER1wBI6wMlFYJq2rPNtGAzU/toy1n9USKyyq4B5H0FrRc3DWJ82fpvHDm
Bwploa0Zms15n0s4L9icI7dGGNXAD6PYR7T3xJeRspQY1MDr92Jv6+fFd/QUUMvru2EPOUQTTy3OFQ86/kSeOIib
yMCVoN+JEDiN9unJF8upf643a8AxGGfYS5/kfg26em8Q4jDCkKO82aJDziZPZuGUV2EvHg6lzKSUMGbuJMZ4MB35
vrN9rL90qvCgmaYnaFRMJ+csXwg+gsAP8cOv1VGGDBkyZMiQ4b+D8/tRNoQMGf49pH7bx/9RnOfmXPWc83gqjaqg
tdFwiaQ41GA0ZoxlUhW0TtIMhzXRQ/8qXjOWLQ+QhenKZqXorE+FVhVmdFa6AS1VGquzgqs555lRr7tFeyUUyu+O
Ot3A7UUWbaykhVlzxp5pkJHW03k1liYxYvwFMBaJ7A==
"""
    )
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


def read_or_refuse(data: bytes) -> QueueFile | None:
    """The property: a QueueFile or QueueFileError, never another exception."""
    try:
        qf = parse(data, "FUZZ")
    except QueueFileError:
        return None
    # Whatever was read must also be usable.
    format_envelope(qf)
    qf.envelope({})
    return qf


lines = st.lists(
    st.binary(max_size=LINE_LIMIT * 2 + 10).map(lambda b: b.replace(b"\n", b"")),
    min_size=1,  # Postfix refuses a file with no content at all (data size 0)
    max_size=12,
)
addresses = st.one_of(st.binary(max_size=40), st.sampled_from([b"", "\u00fc@\u00e4.test".encode()]))
recipients = st.lists(
    st.builds(
        rcpt,
        addresses,
        done=st.sampled_from([None, REC_TYPE_DONE, REC_TYPE_DRCP]),
        orcpt=st.none() | st.binary(max_size=40).map(lambda b: b"rfc822;" + b),
        notify=st.none() | st.sampled_from([1, 2, 4, 8, 10, 14]),
    ),
    min_size=1,
    max_size=6,
)


@st.composite
def queue_files(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[list[Rec]]]:
    body = draw(lines)
    rcpts = draw(recipients)
    sender = draw(addresses)
    return assemble(simple_envelope(sender, *rcpts), text_records(body)), body, rcpts


@given(queue_files())
def test_generated_files_read_back(case: tuple[bytes, list[bytes], list[list[Rec]]]) -> None:
    data, body, rcpts = case
    qf = parse(data)
    assert qf.content == b"".join(line + b"\n" for line in body)
    assert [r.address.encode("utf-8", "surrogateescape") for r in qf.recipients] == [
        records[-1][1] for records in rcpts
    ]
    assert [r.done for r in qf.recipients] == [records[-1][0] != REC_TYPE_RCPT for records in rcpts]


@settings(max_examples=300)
@given(st.binary(max_size=3000))
@example(b"C\x00")
@example(b"C\x05 1 1 1")
@example(GOOD[:97] + b"p\x0f" + b"%15d" % 97)  # a pointer to itself
def test_random_bytes_read_or_raise(data: bytes) -> None:
    read_or_refuse(data)


record_types = st.sampled_from(b"CTcFILSDRO/WVA>K<ionMNLwXrePpVdmE")
numbers = st.integers(min_value=0, max_value=6000).map(lambda n: b"%15d" % n)
payloads = st.one_of(
    st.binary(max_size=60),
    numbers,
    st.sampled_from([b"9" * 5000, b"notify_flags=99999999999999999999999", b"create_time=-9"]),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(record_types, payloads), max_size=40))
def test_random_record_streams_read_or_raise(records: list[Rec]) -> None:
    read_or_refuse(b"".join(encode(t, p) for t, p in records))


@settings(max_examples=300)
@given(st.lists(st.tuples(record_types, payloads), max_size=20), lines, st.data())
def test_well_framed_files_with_random_records_read_or_raise(
    envelope: list[Rec], body: list[bytes], data: st.DataObject
) -> None:
    extracted = data.draw(st.lists(st.tuples(record_types, payloads), max_size=8))
    read_or_refuse(assemble([(REC_TYPE_TIME, ARRIVAL), *envelope], text_records(body), extracted))


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(min_value=0), st.integers(0, 255)),
        st.tuples(st.just("retype"), st.integers(min_value=0), record_types),
        st.tuples(st.just("delete"), st.integers(min_value=0), st.integers(1, 64)),
        st.tuples(st.just("insert"), st.integers(min_value=0), st.binary(min_size=1, max_size=32)),
        st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(0)),
        st.tuples(st.just("number"), st.integers(min_value=0), numbers),
    ),
    min_size=1,
    max_size=5,
)


Step = tuple[str, int, int | bytes]


def mutate(data: bytes, steps: list[Step]) -> bytes:
    """Apply damage: overwrite, retype, delete, insert, truncate, overwrite with a number."""
    buf = bytearray(data)
    for kind, where, what in steps:
        at = where % (len(buf) + 1)
        if isinstance(what, bytes):  # "insert" or "number"
            buf[at : at + (15 if kind == "number" else 0)] = what
        elif kind == "set" and at < len(buf):
            buf[at] = what
        elif kind == "retype" and buf:
            # Bytes that look like record types are likely (not certainly) record starts.
            starts = [i for i, byte in enumerate(buf) if byte in b"CTSRDONLXEApw/"] or [0]
            buf[starts[where % len(starts)]] = what
        elif kind == "delete":
            del buf[at : at + what]
        elif kind == "truncate":
            del buf[at:]
    return bytes(buf)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(queue_files().map(lambda case: case[0]), st.just(REAL_FILE)), mutations)
def test_mutated_queue_files_read_or_raise(data: bytes, steps: list[Step]) -> None:
    read_or_refuse(mutate(data, steps))


# -- defer logs ---------------------------------------------------------------------------

# As Postfix 3.7 wrote it for a recipient a server refused at RCPT (then a second entry).
DEFER_LOG = (
    "\n"
    "<m\u00fcller@defer.test>: host 127.0.0.1[127.0.0.1] said: 450 4.7.1 Try again later"
    " (in reply to RCPT TO command)\n"
    "recipient=m\u00fcller@defer.test\n"
    "offset=662\n"
    "dsn_orig_rcpt=rfc822;m\u00fcller@defer.test\n"
    "notify_flags=10\n"
    "status=4.7.1\n"
    "action=delayed\n"
    "diag_type=smtp\n"
    "diag_text=450 4.7.1 Try again later\n"
    "mta_type=dns\n"
    "mta_mname=127.0.0.1\n"
    "reason=host 127.0.0.1[127.0.0.1] said: 450 4.7.1 Try again later"
    " (in reply to RCPT TO command)\n"
    "\n"
    "\n"
    "<b@defer.test>: connect to mx.test[192.0.2.1]:25: Connection timed out\n"
    "recipient=b@defer.test\n"
    "offset=700\n"
    "status=4.4.1\n"
    "reason=connect to mx.test[192.0.2.1]:25: Connection timed out\n"
    "\n"
).encode()


def test_defer_log_entries(tmp_path: Path) -> None:
    path = tmp_path / "A91EE210857"
    path.write_bytes(DEFER_LOG)
    log = read_defer_log(path)
    assert list(log) == ["m\u00fcller@defer.test", "b@defer.test"]
    first = log["m\u00fcller@defer.test"]
    assert first == DeferEntry(
        recipient="m\u00fcller@defer.test",
        offset=662,
        dsn_orig_rcpt="rfc822;m\u00fcller@defer.test",
        status="4.7.1",
        action="delayed",
        diag_type="smtp",
        diag_text="450 4.7.1 Try again later",
        mta_type="dns",
        mta_mname="127.0.0.1",
        reason="host 127.0.0.1[127.0.0.1] said: 450 4.7.1 Try again later"
        " (in reply to RCPT TO command)",
        notify=10,
    )
    second = log["b@defer.test"]
    assert (second.action, second.diag_type, second.mta_mname) == ("delayed", None, None)
    assert delay_reasons(log)["b@defer.test"].startswith("connect to mx.test")


def test_defer_log_old_style_and_damage() -> None:
    entries = parse_defer_log(
        b"<old@x.test>: something\tbroke \xff\n\ngarbage line\noffset=99999999999999999999\n"
    )
    assert [(e.recipient, e.reason, e.status) for e in entries] == [
        ("old@x.test", "something?broke ?", "4.0.0"),
        ("(recipient address unavailable)", "(description unavailable)", "4.0.0"),
    ]
    assert entries[1].offset is None


def test_a_missing_defer_log_is_not_hidden(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_defer_log(tmp_path / "NEVERTRIED")


@given(st.binary(max_size=2000))
@example(b"offset=" + b"9" * 5000 + b"\nnotify_flags=\xd9\xa1\n")
def test_any_defer_log_bytes_parse(data: bytes) -> None:
    for entry in parse_defer_log(data):
        assert entry.status and entry.reason and entry.recipient
