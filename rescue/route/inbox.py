"""The relay endpoint's connection: bytes in, command lines and message text out.

An asyncio Protocol with its own buffer rather than a StreamReader: a message's text is
found with one search for "<CR><LF>.<CR><LF>" in what has arrived, not line by line,
and the replies to pipelined commands leave in one write. Replies wait in `write` only
while more of the client's commands are already here: before the session waits for
the client, everything written is sent (`flush`), so no reply is ever held back from a
client that waits for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

_END = b"\r\n.\r\n"  # the line "." that ends a message's text, with the line end before it
_EMPTY = b".\r\n"  # the same at the very start: an empty text
# Read no more from the socket while this much waits unread (resumed when it is read).
HIGH_WATER = 1 << 20
READ_SIZE = 1 << 16  # bytes read from the socket at once


class LineTooLong(Exception):
    """A command line longer than the limit (the session ends)."""


def unstuff(text: bytes) -> bytes:
    """RFC 5321 4.5.2: the text without the dot the client put before each line that
    begins with one (`text` begins at a line's start)."""
    text = text.replace(b"\n.", b"\n")
    return text[1:] if text.startswith(b".") else text


class Inbox(asyncio.BufferedProtocol):
    """One client connection, read by one session task.

    A BufferedProtocol: asyncio reads into one buffer kept for the connection, not into a
    fresh 256 KiB bytes object for each read (an mmap and munmap each time)."""

    def __init__(
        self, on_connect: Callable[[Inbox], None], *, timeout: float, line_limit: int
    ) -> None:
        """`on_connect(inbox)` starts the session; `timeout`: seconds a read waits for the
        client; `line_limit`: the longest command line."""
        self._on_connect = on_connect
        self._timeout = timeout
        self._line_limit = line_limit
        self._buf = bytearray()
        self._read = memoryview(bytearray(READ_SIZE))
        self._out: list[bytes] = []
        self._eof = False
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._transport: asyncio.Transport | None = None

    # --- asyncio's side ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._on_connect(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self._buf += data
        if len(self._buf) > HIGH_WATER and self._transport is not None and not self._paused:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # close the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # --- the session's side -------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """A reply, sent with the next flush (at the latest when the session waits)."""
        self._out.append(data)

    def flush(self) -> None:
        if self._out and self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def close(self) -> None:
        """Send what is written, then close the connection."""
        self.flush()
        if self._transport is not None:
            self._transport.close()

    async def _more(self) -> None:
        """Wait for more bytes from the client (or its end), having sent every reply."""
        self.flush()
        if self._paused and self._transport is not None:
            self._transport.resume_reading()
            self._paused = False
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self._timeout):
                await self._waiter
        finally:
            self._waiter = None

    async def line(self) -> bytes:
        """The next command line with its line end; b"" once the client has gone.
        Raises LineTooLong for a line over the limit, TimeoutError for a silent client."""
        start = 0
        while True:
            end = self._buf.find(b"\n", start)
            if end >= 0:
                line = bytes(self._buf[: end + 1])
                del self._buf[: end + 1]
                return line
            if len(self._buf) > self._line_limit:
                raise LineTooLong
            if self._eof:
                return b""
            start = len(self._buf)
            await self._more()

    async def text(self, max_size: int) -> bytes | None:
        """The text after DATA up to the line ".", unstuffed; None if over `max_size`.

        What follows the final dot stays here: pipelined commands after it are read as
        commands. Raises ConnectionResetError if the client leaves before the dot."""
        at_start = True
        scan = 0
        dropped = 0  # bytes of a text too big to keep, read and thrown away
        while True:
            buf = self._buf
            if at_start:
                if buf[:3] == _EMPTY:
                    del buf[:3]
                    return b""
                at_start = len(buf) < 3 and _EMPTY.startswith(buf)
            if not at_start:
                found = buf.find(_END, scan)
                if found >= 0:
                    text = bytes(buf[: found + 2])
                    del buf[: found + 5]
                    if dropped:
                        return None
                    text = unstuff(text)
                    return text if len(text) <= max_size else None
                scan = max(0, len(buf) - len(_END) + 1)
                # Stuffing adds at most a third to a line: twice max_size is too big.
                if len(buf) > 2 * max_size:
                    keep = len(_END) - 1  # the start of an end line that is arriving
                    dropped += len(buf) - keep
                    del buf[:-keep]
                    scan = 0
            if self._eof:
                raise ConnectionResetError("the client left during DATA")
            await self._more()
