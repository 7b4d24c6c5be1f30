"""SMTP replies read off a smarthost connection: pipelined, split, multi-line, broken."""

from __future__ import annotations

import pytest

from rescue.smarthost.replies import MAX_LINE, Reply, ReplyError, parse_replies


def parse(*chunks: bytes) -> tuple[list[Reply], bytearray, list[bytes]]:
    """Feed the chunks as data_received would; every reply, and what is left over."""
    buffer, lines, replies = bytearray(), [], []
    for chunk in chunks:
        buffer += chunk
        replies += parse_replies(buffer, lines)
    return replies, buffer, lines


def test_pipelined_replies_in_one_read_come_out_in_order() -> None:
    replies, left, lines = parse(
        b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    )
    assert replies == [
        Reply(250, "2.1.0 Ok"),
        Reply(250, "2.1.5 Ok"),
        Reply(354, "End data with <CR><LF>.<CR><LF>"),
    ]
    assert left == b"" and lines == []


def test_a_reply_split_across_reads_waits_for_its_end() -> None:
    replies, left, _ = parse(b"250 2.0.0 Ok: queued", b" as 4F2A81C0D3\r\n25")
    assert replies == [Reply(250, "2.0.0 Ok: queued as 4F2A81C0D3")]
    assert left == b"25"


def test_a_multi_line_reply_is_one_reply_also_across_reads() -> None:
    replies, left, lines = parse(b"421-4.7.0 first\r\n", b"421-second\r\n421 third\r\n250 ok\n")
    assert replies == [Reply(421, "4.7.0 first second third"), Reply(250, "ok")]
    assert left == b"" and lines == []
    pending, _, lines = parse(b"550-5.1.1 no such user\r\n")
    assert pending == [] and lines == [b"550-5.1.1 no such user"]


def test_a_bare_code_and_text_that_is_not_utf8() -> None:
    replies, _, _ = parse(b"250\r\n", b"250 caf\xe9\r\n")
    assert replies == [Reply(250, ""), Reply(250, "caf\ufffd")]


@pytest.mark.parametrize("line", [b"hello\r\n", b"25\r\n", b"2500 ok\r\n", b"abc ok\r\n"])
def test_what_is_no_reply_breaks_the_connection(line: bytes) -> None:
    with pytest.raises(ReplyError, match="not an SMTP reply"):
        parse(b"250 ok\r\n" + line)


def test_a_line_without_end_is_refused_once_too_long() -> None:
    assert parse(b"2" * MAX_LINE)[0] == []
    with pytest.raises(ReplyError, match="too long"):
        parse(b"2" * MAX_LINE, b"5")
    with pytest.raises(ReplyError, match="too long"):
        parse(b"250 ok\r\n" + b"2" * (MAX_LINE + 1))
