"""SMTP replies off a connection, several at a time: what pipelining needs.

aiosmtplib sets a session up (greeting, EHLO, STARTTLS, AUTH); then this protocol
takes the transport over, so that MAIL, RCPT and DATA can be written together
(RFC 2920) and their replies read in order. aiosmtplib reads one reply per
command and drops anything that arrives before it asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# RFC 5321 section 4.5.3.1.5: a reply line is at most 512 octets; be lenient.
MAX_LINE = 8192
# SO_LINGER on, 0 seconds: close() resets the connection and drops unsent data.
_RESET = struct.pack("ii", 1, 0)


class ReplyError(Exception):
    """The connection broke, timed out, or the server sent something that is no reply."""


class ConnectionClosed(ReplyError, ConnectionError):
    pass


class ReplyTimeout(ReplyError, TimeoutError):
    pass


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    text: str  # the lines' texts joined with spaces

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def parse_replies(buffer: bytearray, lines: list[bytes]) -> list[Reply]:
    """Take every complete reply out of `buffer`; `lines` holds an unfinished multi-line one."""
    last = buffer.rfind(b"\n")
    if last < 0:
        if len(buffer) > MAX_LINE:
            raise ReplyError("reply line too long")
        return []
    complete = bytes(buffer[: last + 1])
    del buffer[: last + 1]
    if len(buffer) > MAX_LINE:
        raise ReplyError("reply line too long")
    replies: list[Reply] = []
    for raw in complete.split(b"\n")[:-1]:  # the lines up to each newline
        line = raw.rstrip(b"\r")
        separator = line[3:4]
        if len(line) < 3 or not line[:3].isdigit() or separator not in (b"", b" ", b"-"):
            raise ReplyError(f"not an SMTP reply: {line[:80]!r}")
        if separator == b"-":
            lines.append(line)
        elif lines:  # the last line of a multi-line reply
            lines.append(line)
            text = " ".join(part[4:].decode("utf-8", "replace").strip() for part in lines)
            replies.append(Reply(int(line[:3]), text.strip()))
            lines.clear()
        else:  # nearly every reply: one line
            replies.append(Reply(int(line[:3]), line[4:].decode("utf-8", "replace").strip()))
    return replies


# Bytes read from the socket at once: replies are short.
READ_SIZE = 1 << 14


class ReplyReader(asyncio.BufferedProtocol):
    """The protocol of a taken-over SMTP connection: writes as given, replies in order.

    It follows the transport's flow control (pause_writing/resume_writing), so that
    drain() can wait until a large message has really been handed to the kernel. A
    BufferedProtocol: asyncio reads into one buffer kept for the connection, not into a
    fresh 256 KiB bytes object for each read.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._read = memoryview(bytearray(READ_SIZE))
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self._replies: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._broken: ReplyError | None = None
        self._paused = False
        self._writable: asyncio.Future[None] | None = None
        self._dropped: int | None = None  # bytes thrown away by abort()
        self._on_final: Callable[[Reply], None] | None = None

    @property
    def open(self) -> bool:
        return self._broken is None and not self.transport.is_closing()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self._buffer += data
        try:
            self._replies.extend(parse_replies(self._buffer, self._lines))
        except ReplyError as exc:
            self._broken = exc
            self.transport.close()
        if self._on_final is not None and self._replies:
            on_final, self._on_final = self._on_final, None
            on_final(self._replies[0])
        self._wake()

    def on_next_reply(self, callback: Callable[[Reply], None] | None) -> None:
        """Call `callback` with the next reply the moment it arrives (in data_received),
        before the task waiting in read() runs again: one turn of the event loop sooner.
        For the answer to a final dot, whose 250 must be journaled before anything else."""
        self._on_final = callback

    def eof_received(self) -> bool:
        self._broken = self._broken or ConnectionClosed("the smarthost closed the connection")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._broken is None:
            reason = f": {exc}" if exc else ""
            self._broken = ConnectionClosed(f"connection lost{reason}")
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        self._wake_writer()

    def _wake_writer(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    @property
    def unsent(self) -> int:
        """Bytes given to write() that this process still holds (not yet in the kernel).

        While it is above 0 the last byte written (a message's final dot) has not
        left: aborting the connection then means the server never sees it.
        """
        if self._dropped is not None:
            return self._dropped
        return self.transport.get_write_buffer_size()

    async def drain(self, timeout: float) -> None:
        """Return once the transport takes more writes; ReplyTimeout after `timeout`
        seconds without progress (each time it resumes, the wait starts again)."""
        while self._paused:
            if self._broken is not None:
                raise self._broken
            self._writable = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._writable
            except TimeoutError:
                raise ReplyTimeout(f"the smarthost took no data for {timeout:g}s") from None
            finally:
                self._writable = None
        if self._broken is not None:
            raise self._broken

    def write(self, data: bytes) -> None:
        if self._broken is not None:
            raise self._broken
        self.transport.write(data)

    async def read(self, timeout: float) -> Reply:
        """The next reply; raises ReplyError when none can come."""
        while not self._replies:
            if self._broken is not None:
                raise self._broken
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout):
                    await self._waiter
            except TimeoutError:
                raise ReplyTimeout(f"no reply in {timeout:g}s") from None
            finally:
                self._waiter = None
        return self._replies.popleft()

    def close(self) -> None:
        """Close politely: what is buffered is still sent, then FIN."""
        self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once: what is buffered is thrown away, here and in the
        kernel's send queue (a reset, SO_LINGER 0), so a message's unsent tail and dot
        never reach the server."""
        if self._dropped is None:
            self._dropped = self.transport.get_write_buffer_size()
        if self._broken is None:
            self._broken = ConnectionClosed("connection aborted")
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
        self.transport.abort()
        self._wake()
