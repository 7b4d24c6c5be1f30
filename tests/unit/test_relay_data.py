"""The relay endpoint's connection reader: command lines, and the text up to the final dot.

The Inbox protocol is fed as asyncio feeds it from the network (data_received, in
pieces of any size); each text read is compared with a line-by-line reading of the
same bytes. Its use by the server on real sockets is in test_relay_server.py.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescue.route.inbox import Inbox, LineTooLong, unstuff


def stuffed(lines: list[bytes]) -> bytes:
    """What a client sends for these lines (each without its line end), final dot included."""
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def by_lines(wire: bytes) -> tuple[bytes, bytes]:
    """The reference: line by line as RFC 5321 4.5.2 says; (the text, what follows the dot)."""
    out = []
    rest = wire
    while True:
        line, _, rest = rest.partition(b"\r\n")
        if line == b".":
            return b"".join(out), rest
        out.append((line[1:] if line.startswith(b".") else line) + b"\r\n")


def inbox(limit: int = 1 << 16) -> Inbox:
    return Inbox(lambda _inbox: None, timeout=5, line_limit=limit)


def read(pieces: list[bytes], max_size: int = 1 << 20) -> tuple[object, bytes]:
    """(the text read, what the inbox holds after it: the commands that follow)."""

    async def scenario() -> tuple[object, bytes]:
        box = inbox()
        for piece in pieces:
            box.data_received(piece)
        result = await box.text(max_size)
        box.eof_received()
        rest = []
        while line := await box.line():
            rest.append(line)
        return result, b"".join(rest)

    return asyncio.run(scenario())


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (b".\r\n", b""),  # an empty text: the final dot right after DATA
        (b"x\r\n.\r\n", b"x\r\n"),
        (b"Ende.\r\nweiter\r\n.\r\n", b"Ende.\r\nweiter\r\n"),  # a line ending in "."
        (b"..\r\n...\r\n..x\r\n.\r\n", b".\r\n..\r\n.x\r\n"),  # stuffed lines
        (b"a\r\n.\r\n\r\n.\r\n", b"a\r\n"),  # the first dot line ends it
        (b"bare\rcr\r\n \r\n.\r\n", b"bare\rcr\r\n \r\n"),
    ],
)
def test_text_up_to_the_final_dot(wire: bytes, text: bytes) -> None:
    assert read([wire])[0] == text
    assert read([bytes([b]) for b in wire])[0] == text  # one byte at a time


def test_what_follows_the_dot_stays_for_the_commands() -> None:
    # Postfix may pipeline QUIT (or the next MAIL) right after the final dot.
    assert read([b"x\r\n.\r\nQUIT\r\n"]) == (b"x\r\n", b"QUIT\r\n")


def test_over_max_size_is_none_and_the_dot_is_still_found() -> None:
    wire = b"0123456789\r\n" * 10 + b".\r\nQUIT\r\n"
    assert read([wire], max_size=120) == (b"0123456789\r\n" * 10, b"QUIT\r\n")
    assert read([wire], max_size=119) == (None, b"QUIT\r\n")
    assert read([wire], max_size=30) == (None, b"QUIT\r\n")


def test_the_end_found_on_every_seam_between_two_pieces() -> None:
    lines = [b"y" * 40, b"." * 7, b"", b"z" * 33]
    wire = stuffed(lines) + b".\r\nQUIT\r\n"
    for cut in range(1, len(wire)):
        assert read([wire[:cut], wire[cut:]]) == (by_lines(wire)[0], b"QUIT\r\n")


def test_a_text_far_over_max_size_is_not_kept_and_its_end_still_found() -> None:
    wire = b"x" * 997 + b"\r\n" + b"y" * 5000 + b"\r\n.\r\nQUIT\r\n"
    for cut in (1, 999, 1000, 1001, len(wire) - 12, len(wire) - 9):
        assert read([wire[:cut], wire[cut:]], max_size=100) == (None, b"QUIT\r\n")


def test_command_lines() -> None:
    async def scenario() -> list[object]:
        box = inbox(limit=10)
        box.data_received(b"EHLO x\r\nMA")
        first = await box.line()
        box.data_received(b"IL\r\n0123456789AB")
        second = await box.line()
        try:
            await box.line()
        except LineTooLong:
            return [first, second, "too long"]
        return [first, second]

    assert asyncio.run(scenario()) == [b"EHLO x\r\n", b"MAIL\r\n", "too long"]


def test_a_silent_client_times_out() -> None:
    async def scenario() -> None:
        box = Inbox(lambda _inbox: None, timeout=0.01, line_limit=100)
        box.data_received(b"EHL")
        await box.line()

    with pytest.raises(TimeoutError):
        asyncio.run(scenario())


def test_a_client_that_leaves_during_data() -> None:
    async def scenario() -> None:
        box = inbox()
        box.data_received(b"x\r\nhalf.")
        box.eof_received()
        await box.text(1000)

    with pytest.raises(ConnectionResetError):
        asyncio.run(scenario())


def test_unstuff() -> None:
    assert unstuff(b"..a\r\n.\r\n..\r\nb.\r\n") == b".a\r\n\r\n.\r\nb.\r\n"


_LINE = st.lists(st.sampled_from([b".", b"a", b"\r", b" ", b"\xc3\xa4"]), max_size=12).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=12),
    after=st.sampled_from([b"", b"QUIT\r\n", b".\r\n", b"MAIL FROM:<>\r\n"]),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=8),
    max_size=st.sampled_from([4, 40, 1 << 20]),
)
def test_same_as_line_by_line(
    lines: list[bytes], after: bytes, cuts: list[int], max_size: int
) -> None:
    wire = stuffed(lines) + b".\r\n" + after
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(wire[start:cut])
        start = cut
    pieces.append(wire[start:])
    text, rest = by_lines(wire)
    assert text == b"".join(line + b"\r\n" for line in lines)
    expected = text if len(text) <= max_size else None
    assert read([p for p in pieces if p], max_size=max_size) == (expected, rest)
