"""The relay endpoint's DATA reader: the text up to the final dot, unstuffed, in runs.

A real asyncio StreamReader, fed as the network would feed it (in pieces of any size);
each result is compared with a line-by-line reading of the same bytes.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescue.route.relayserver import read_data, unstuff


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


async def fed(pieces: list[bytes], *, limit: int = 1 << 16) -> asyncio.StreamReader:
    reader = asyncio.StreamReader(limit=limit)
    for piece in pieces:
        reader.feed_data(piece)
    return reader


def read(
    pieces: list[bytes], max_size: int = 1 << 20, limit: int = 1 << 16
) -> tuple[object, bytes]:
    """(read_data's result, what the reader holds after it)."""

    async def scenario() -> tuple[object, bytes]:
        reader = await fed(pieces, limit=limit)
        result = await read_data(reader, max_size)
        reader.feed_eof()
        return result, await reader.read()

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


def test_text_longer_than_the_buffer_limit() -> None:
    # No ".\r\n" within the reader's limit: read on in runs, a final dot on the seam.
    lines = [b"y" * 40, b"." * 7, b"z" * 33]
    wire = stuffed(lines) + b".\r\nQUIT\r\n"
    for cut in range(1, len(wire)):
        assert read([wire[:cut], wire[cut:]], limit=16) == (by_lines(wire)[0], b"QUIT\r\n")


def test_a_client_that_leaves_during_data() -> None:
    async def scenario() -> None:
        reader = await fed([b"x\r\nhalf."])
        reader.feed_eof()
        await read_data(reader, 1000)

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
    limit=st.sampled_from([8, 16, 1 << 16]),
)
def test_same_as_line_by_line(
    lines: list[bytes], after: bytes, cuts: list[int], limit: int
) -> None:
    wire = stuffed(lines) + b".\r\n" + after
    pieces, start = [], 0
    for cut in sorted(set(cuts)):
        pieces.append(wire[start:cut])
        start = cut
    pieces.append(wire[start:])
    text, rest = by_lines(wire)
    assert text == b"".join(line + b"\r\n" for line in lines)
    assert read([p for p in pieces if p], limit=limit) == (text, rest)
