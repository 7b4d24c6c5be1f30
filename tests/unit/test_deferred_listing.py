"""One deferred message read from its files as showq lists it (rescue.postfix.deferred).

tests/integration/test_scan_files.py holds the whole reading against Postfix's own showq.
"""

from __future__ import annotations

import random

import pytest

from rescue.postfix import deferred
from rescue.postfix.deferlog import parse_defer_log
from rescue.postfix.deferred import (
    FileFacts,
    NotAsShowq,
    ShowqParams,
    deferred_row,
    log_entries,
    plain_address,
    scan_envelope,
)
from rescue.postfix.records import (
    REC_TYPE_ATTR,
    REC_TYPE_DONE,
    REC_TYPE_FROM,
    REC_TYPE_RCPT,
    REC_TYPE_TIME,
)
from tests.unit.queuefile_build import (
    HEADER,
    REAL_FILE,
    assemble,
    parse,
    rcpt,
    simple_envelope,
    text_records,
)

FACTS = FileFacts(size=5000, mtime=1795000000, mode=0o100700)
PARAMS = ShowqParams()
REASON = "host mx.dst.test[192.0.2.1] said: 421 4.7.0 try again later (in reply to RCPT TO command)"


def log_entry(address: str, reason: str = REASON, *, old_style: bool = True) -> bytes:
    """A defer log entry as Postfix's bounce daemon writes it."""
    lines = [f"<{address}>: {reason}"] if old_style else []
    lines += [f"recipient={address}", "offset=300", "status=4.7.0", "action=delayed"]
    lines += ["diag_type=smtp", f"reason={reason}"]
    return ("\n".join(lines) + "\n\n").encode()


def row(
    data: bytes, log: bytes | None = None, facts: FileFacts = FACTS, params: ShowqParams = PARAMS
) -> tuple[object, ...]:
    """The row, read both ways: the file at hand whole, and read a window at a time."""
    read_at = lambda at, n: data[at : at + n]  # noqa: E731
    whole: tuple[object, ...] | NotAsShowq
    try:
        whole_file = facts._replace(size=len(data))  # the file is all at hand
        whole = deferred_row("4F2A81C0B1", read_at, whole_file, log, params, data)
    except NotAsShowq as exc:
        whole = exc
    try:
        windowed = deferred_row("4F2A81C0B1", read_at, facts, log, params)
    except NotAsShowq:
        assert isinstance(whole, NotAsShowq)
        raise
    assert whole == windowed
    return windowed


def test_logged_recipients_first_then_the_other_pending_ones() -> None:
    data = assemble(
        simple_envelope(
            b"shop@src.test",
            rcpt(b"a@dst.test"),
            rcpt(b"done@dst.test", done=REC_TYPE_DONE),
            rcpt(b"b@dst.test"),
        ),
        text_records([*HEADER, b"body"]),
        [*rcpt(b"c@dst.test")],  # in the extracted segment, after the content
        recipient_count=4,
    )
    listed = row(data, log_entry("b@dst.test") + log_entry("gone@dst.test", "later"))
    assert listed[:5] == (
        "4F2A81C0B1",
        1795863633,  # the arrival time record's seconds
        parse(data).message_size,  # the size record's content size
        "shop@src.test",
        False,
    )
    assert listed[5] == (
        ("b@dst.test", REASON),
        ("gone@dst.test", "later"),  # showq lists every log entry
        ("a@dst.test", ""),
        ("c@dst.test", ""),
    )


def test_a_real_postfix_file_lists_its_pending_recipients() -> None:
    """Pointer records, a heap after END, padding, done and canceled recipients."""
    pending = tuple(r.address for r in parse(REAL_FILE).pending())
    listed = row(REAL_FILE, facts=FileFacts(len(REAL_FILE), 1, 0o100700))
    assert tuple(address for address, _ in listed[5]) == pending  # type: ignore[attr-defined]
    assert listed[3] == parse(REAL_FILE).sender
    assert listed[1] == int(parse(REAL_FILE).arrival_time)


def test_what_the_records_do_not_say_comes_from_the_file() -> None:
    envelope = [(t, p) for t, p in simple_envelope() if t != REC_TYPE_TIME]
    data = assemble(envelope, text_records([b"x"]))
    listed = row(data, facts=FileFacts(size=777, mtime=1790000000, mode=0o100710))
    assert listed[1] == 1790000000  # no arrival time record: the mtime
    assert listed[4] is True  # group x: postsuper -e asked for it to be returned


def test_the_null_sender_is_listed_as_empty_address_recipient() -> None:
    data = assemble(simple_envelope(b""), text_records([b"x"]))
    assert row(data)[3] == "MAILER-DAEMON"
    assert row(data, params=ShowqParams(empty_address="double-bounce"))[3] == "double-bounce"


def test_the_content_is_skipped_not_read() -> None:
    big = text_records([b"x" * 1000] * 2000)  # 2 MB of content
    data = assemble(simple_envelope(), big, [*rcpt(b"late@dst.test")])
    asked: list[tuple[int, int]] = []

    def read_at(at: int, n: int) -> bytes:
        asked.append((at, n))
        return data[at : at + n]

    found = scan_envelope(read_at, len(data))
    assert found.recipients == [b"rcpt@dst.test", b"late@dst.test"]
    assert sum(min(n, len(data) - at) for at, n in asked) < 200_000


@pytest.mark.parametrize(
    "address",
    [b'"john doe"@dst.test', b"a..b@dst.test", b".a@dst.test", b"a.@dst.test", b"a b@dst.test",
     b"j\xc3\xb6rg@dst.test", b"a@b@dst.test", b"a\x01@dst.test", b"@dst.test"],
)  # fmt: skip
def test_addresses_showq_would_quote_or_clean_go_to_showq(address: bytes) -> None:
    with pytest.raises(NotAsShowq):
        plain_address(address)
    data = assemble(simple_envelope(b"s@src.test", rcpt(address)), text_records([b"x"]))
    with pytest.raises(NotAsShowq):
        row(data)


@pytest.mark.parametrize(
    "address", [b"a@dst.test", b"first.last+tag@dst.test", b"postmaster", b"x_y-z@[192.0.2.1]"]
)
def test_plain_addresses_are_listed_as_they_are(address: bytes) -> None:
    assert plain_address(address) == address.decode()


def test_logs_and_files_it_does_not_reproduce_go_to_showq() -> None:
    good = assemble(simple_envelope(), text_records([b"x"]))
    with pytest.raises(NotAsShowq):
        row(good, log_entry("rcpt@dst.test", "tab\there"))
    unlimited = ShowqParams(duplicate_filter_limit=0)  # 0: showq's filter has no limit
    assert len(row(good, log_entry("rcpt@dst.test") * 3, params=unlimited)[5]) == 3
    logs = b"".join(log_entry(f"r{n}@dst.test") for n in range(3))
    with pytest.raises(NotAsShowq):
        row(good, logs, params=ShowqParams(duplicate_filter_limit=2))
    twice = [*simple_envelope(), (REC_TYPE_FROM, b"other@src.test")]
    with pytest.raises(NotAsShowq):
        row(assemble(twice, text_records([b"x"])))
    with pytest.raises(NotAsShowq):
        row(good[: len(good) // 2], facts=FileFacts(len(good), 1, 0o100700))  # cut short
    early = [(REC_TYPE_RCPT, b"a@dst.test"), *simple_envelope()]
    with pytest.raises(NotAsShowq):
        row(assemble(early, text_records([b"x"])))
    bad_time = [(REC_TYPE_TIME, b"soon"), *simple_envelope()[1:]]
    with pytest.raises(NotAsShowq):
        row(assemble(bad_time, text_records([b"x"])))


SAMPLE_LOGS = [
    b"reason=first the reason\nrecipient=r@dst.test\n\n",
    b"recipient=a@dst.test\nreason=x\n<b@dst.test>: later old style\n\n",
    b"recipient=a@dst.test\nrecipient=b@dst.test\nreason=x\n\n",
    b"recipient=a@dst.test\nreason=no blank line at the end",
    b"recipient=a@dst.test\nreason=x\n",
    b"\nrecipient=a@dst.test\nreason=x\n\n",
    log_entry("a@dst.test"),
    log_entry("a@dst.test", old_style=False) + log_entry("b@dst.test"),
    b"<old@dst.test>: only the old style line\n\n",
    b"recipient = spaced@dst.test \nreason =  spaced reason \n\n",
    b"recipientx=no@dst.test\nreasons=no\n\n",
    b"status=4.0.0\n\n\n\nrecipient=after-blank-lines@dst.test\n",
    b"recipient=\nreason=\n\n",
    b"<a@dst.test>: first\nreason=second\n\n",
    b"",
    b"\n\n",
]


@pytest.mark.parametrize("data", SAMPLE_LOGS)
def test_log_entries_read_what_the_defer_log_reader_reads(data: bytes) -> None:
    expected = [(e.recipient, e.reason) for e in parse_defer_log(data)]
    assert log_entries(data) == expected


LOG_PIECES = [
    b"recipient=a@dst.test",
    b"recipient=b@dst.test",
    b"recipient =c@dst.test",
    b"reason=one",
    b"reason= two ",
    b"reason =three",
    b"<d@dst.test>: old style",
    b"<e@dst.test> no colon",
    b"status=4.0.0",
    b"recipient=",
    b" reason=indented",
    b"",
]


def test_log_entries_agree_with_the_reader_on_random_logs() -> None:
    rng = random.Random(20)
    for _ in range(3000):
        data = b"\n".join(rng.choice(LOG_PIECES) for _ in range(rng.randint(0, 9)))
        if rng.random() < 0.5:
            data += b"\n"
        expected = [(e.recipient, e.reason) for e in parse_defer_log(data)]
        assert log_entries(data) == expected, data


def test_attribute_records_are_passed_over() -> None:
    envelope = [*simple_envelope(), (REC_TYPE_ATTR, b"recipient=not-a-recipient@dst.test")]
    listed = row(assemble(envelope, text_records([b"x"])))
    assert listed[5] == (("rcpt@dst.test", ""),)


def test_the_copied_defaults_are_the_defer_log_readers() -> None:
    from rescue.postfix import deferlog  # noqa: PLC0415

    assert (deferred.DEFAULT_REASON, deferred.DEFAULT_RECIPIENT) == (
        deferlog.DEFAULT_REASON,
        deferlog.DEFAULT_RECIPIENT,
    )
