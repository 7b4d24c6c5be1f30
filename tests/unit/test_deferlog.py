"""Defer logs: entries, old-style and damaged logs, a missing log, any bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rescue.postfix.deferlog import DeferEntry, delay_reasons, parse_defer_log, read_defer_log

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
