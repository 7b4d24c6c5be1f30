"""Serve lookup tables to Postfix over its socketmap protocol.

socketmap_table(5): each request and each reply is one netstring (``LEN:DATA,``); a
request is ``NAME KEY``, a reply ``OK VALUE``, ``NOTFOUND ``, ``TEMP REASON`` or
``PERM REASON``. Postfix keeps a connection open for many lookups (dict_sockmap.c closes
it after 10 s idle or 100 s in all), and tries a lookup once more when the server has
closed the connection, so closing idle connections here costs nothing.

The protocol (netstring framing, requests, replies) is plain functions and one small
decoder class, tested without sockets; ``serve`` is the asyncio loop around them, and
a table is a plain function from a request payload (``NAME KEY``) to a ``Reply``
(``rescue.srs.bouncemap`` serves SRS's maps this way).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from rescue.errors import RescueError

log = logging.getLogger(__name__)

# A request is a map name and one address: Postfix's own limits keep it far below this,
# and anything longer is a client gone wrong, not a lookup.
MAX_REQUEST = 10_000
MAX_REPLY = 100_000  # socketmap_table(5): Postfix refuses longer replies
DEFAULT_IDLE_TIMEOUT = 60.0  # seconds; Postfix itself drops a connection idle for 10 s
WRITE_TIMEOUT = 30.0  # seconds for a client to take a reply before it is dropped
DEFAULT_SOCKET_MODE = 0o666  # Postfix's cleanup and proxymap run as user postfix
MAX_UNIX_PATH = 107  # sun_path is 108 bytes on Linux, one of them the final NUL

# Every cleanup and smtpd process may connect at once (default_process_limit = 100), and
# asyncio's default backlog of 100 refuses the rest; the kernel caps this at somaxconn.
LISTEN_BACKLOG = 1024


class ProtocolError(RescueError):
    """A client broke the socketmap framing; the connection cannot go on."""


# --- netstrings ---------------------------------------------------------------------------


def encode_netstring(payload: bytes) -> bytes:
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """Cut netstrings out of a byte stream as it arrives, refusing malformed or long ones."""

    def __init__(self, limit: int = MAX_REQUEST) -> None:
        self._limit = limit
        self._max_digits = len(str(limit))
        self._buffer = bytearray()

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> bytes | None:
        """The next complete payload, or None until more bytes arrive.

        Raises ProtocolError on a malformed netstring or one longer than the limit; the
        decoder is then unusable, as the stream has no way to find the next one.
        """
        buffer = self._buffer
        digits = 0
        while digits < len(buffer) and 0x30 <= buffer[digits] <= 0x39:
            digits += 1
        if digits > 1 and buffer[0] == 0x30:
            raise ProtocolError("malformed netstring: length with a leading zero")
        if digits > self._max_digits:
            raise ProtocolError(f"request longer than {self._limit} bytes")
        if digits == len(buffer):
            return None
        if digits == 0 or buffer[digits] != 0x3A:  # ':'
            raise ProtocolError("malformed netstring: expected a decimal length and ':'")
        length = int(buffer[:digits])
        if length > self._limit:
            raise ProtocolError(f"request longer than {self._limit} bytes")
        end = digits + 1 + length
        if len(buffer) <= end:
            return None
        if buffer[end] != 0x2C:  # ','
            raise ProtocolError("malformed netstring: no ',' after the data")
        payload = bytes(buffer[digits + 1 : end])
        del buffer[: end + 1]
        return payload


# --- requests and replies -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: str  # OK, NOTFOUND, TEMP or PERM
    text: str = ""

    def encode(self) -> bytes:
        # surrogateescape: a key that was not UTF-8 goes back byte for byte.
        data = f"{self.status} {self.text}".encode(errors="surrogateescape")
        if len(data) > MAX_REPLY:
            data = b"TEMP reply too long"
        return encode_netstring(data)


NOTFOUND = Reply("NOTFOUND")

# A table: the reply to one request payload (``NAME KEY``). It must never raise.
Lookup = Callable[[bytes], Reply]


# --- listen addresses ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: Path


@dataclass(frozen=True, slots=True)
class InetAddress:
    host: str
    port: int


def parse_listen(spec: str) -> UnixAddress | InetAddress:
    """``unix:PATH`` or ``inet:HOST:PORT`` (``inet:[::1]:PORT`` for IPv6), as Postfix writes them.

    Raises ValueError with a sentence fit for the user.
    """
    kind, _, rest = spec.partition(":")
    if kind == "unix":
        if not rest:
            raise ValueError(f"{spec!r}: unix: needs a socket path")
        if len(os.fsencode(rest)) > MAX_UNIX_PATH:
            raise ValueError(f"{spec!r}: a unix socket path has at most {MAX_UNIX_PATH} bytes")
        return UnixAddress(Path(rest))
    if kind == "inet":
        host, _, port_text = rest.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{spec!r}: inet: needs HOST:PORT with a port from 1 to 65535")
        return InetAddress(host, int(port_text))
    raise ValueError(f"{spec!r}: use unix:PATH or inet:HOST:PORT")


# --- the server ---------------------------------------------------------------------------


async def serve(
    lookup: Lookup,
    listen: str,
    *,
    ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
    socket_mode: int = DEFAULT_SOCKET_MODE,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    what: str = "socketmap lookups",
) -> None:
    """Answer socketmap lookups on ``listen`` until ``stop`` is set (or the task is cancelled).

    ``ready`` is called once the socket accepts connections. A unix socket is created with
    ``socket_mode`` and removed again on the way out. Raises ValueError for a bad
    ``listen``, OSError when the address cannot be used (in use, no such folder, ...).
    """
    address = parse_listen(listen)
    sessions: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        sessions[task] = writer
        try:
            await _session(lookup, reader, writer, idle_timeout)
        finally:
            sessions.pop(task, None)

    server = await _listen(address, on_connect, socket_mode)
    inode = _inode(address)
    try:
        log.info("serving %s on %s", what, listen)
        if ready is not None:
            ready()
        await (stop or asyncio.Event()).wait()
    finally:
        server.close()
        # Postfix holds its connections open: waiting for it to close them would wait
        # forever. Cutting them ends each session at its next read or write; Postfix tries
        # a lookup once more on a closed connection.
        for writer in list(sessions.values()):
            writer.transport.abort()
        await asyncio.gather(*sessions, return_exceptions=True)
        await server.wait_closed()
        _remove_socket(address, inode)
        log.info("stopped serving on %s", listen)


async def _session(
    lookup: Lookup,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    idle_timeout: float,
) -> None:
    decoder = NetstringDecoder()
    try:
        while True:
            try:
                payload = decoder.next()
            except ProtocolError as exc:
                log.warning("socketmap client: %s; closing the connection", exc)
                await _send(writer, Reply("PERM", str(exc)))
                return
            if payload is not None:
                await _send(writer, lookup(payload))
                continue
            async with asyncio.timeout(idle_timeout):
                data = await reader.read(65536)
            if not data:
                return
            decoder.feed(data)
    except (TimeoutError, ConnectionError) as exc:
        log.debug("socketmap client gone: %r", exc)
    except asyncio.CancelledError:
        # Only our own shutdown cancels a session; ending it quietly keeps asyncio's
        # stream callback (3.11) from logging the cancellation as an error.
        return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _send(writer: asyncio.StreamWriter, reply: Reply) -> None:
    writer.write(reply.encode())
    async with asyncio.timeout(WRITE_TIMEOUT):
        await writer.drain()


_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _listen(
    address: UnixAddress | InetAddress, on_connect: _Handler, socket_mode: int
) -> asyncio.Server:
    if isinstance(address, InetAddress):
        return await asyncio.start_server(
            on_connect, address.host, address.port, reuse_address=True, backlog=LISTEN_BACKLOG
        )
    await _clear_stale_socket(address.path)
    server = await asyncio.start_unix_server(on_connect, path=address.path, backlog=LISTEN_BACKLOG)
    # Until this chmod the umask applies, which can only be stricter: no window for others.
    os.chmod(address.path, socket_mode)
    return server


async def _clear_stale_socket(path: Path) -> None:
    """Remove a socket left by a server that died; refuse to take over a live one."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket", str(path))
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except ConnectionRefusedError:
        path.unlink(missing_ok=True)
        return
    writer.close()
    raise OSError(errno.EADDRINUSE, "another server is listening on this socket", str(path))


def _inode(address: UnixAddress | InetAddress) -> tuple[int, int] | None:
    if isinstance(address, InetAddress):
        return None
    st = address.path.stat()
    return (st.st_dev, st.st_ino)


def _remove_socket(address: UnixAddress | InetAddress, inode: tuple[int, int] | None) -> None:
    if not isinstance(address, UnixAddress) or inode is None:
        return
    # Only our own socket: a server started after us may have put its own there.
    with contextlib.suppress(FileNotFoundError):
        st = address.path.lstat()
        if (st.st_dev, st.st_ino) == inode:
            address.path.unlink()
