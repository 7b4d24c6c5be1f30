"""The relay endpoint's protocol: the SMTP (TCP) or LMTP (unix socket) Postfix delivers to.

Written on asyncio streams rather than with aiosmtpd: aiosmtpd refuses the null sender
(bounces must pass too), upper-cases ENVID and ORCPT values and knows no DSN, so its
MAIL and RCPT handling would have to be replaced, which is most of what it does for us.
The server takes what Postfix's smtp/lmtp client sends and nothing more: EHLO/LHLO,
MAIL, RCPT, DATA, RSET, NOOP, QUIT. It holds no mail: each transaction is answered only
after `deliver` returns, with its reply (one per recipient for LMTP).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import logging
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

# RFC 5321 4.5.3.1.4 says 512 octets for a command line; DSN parameters and long SRS
# addresses make Postfix's own longer, and it accepts 2048 (line_length_limit).
COMMAND_LIMIT = 4096
# A text line as Postfix sends it: any length it accepted (its line_length_limit splits
# longer ones, which the record reader joins); 1 MiB as the lab's smarthost.
LINE_LIMIT = 1 << 20
# Postfix's message_size_limit default: the relay takes what Postfix took (the service
# passes Postfix's own limit); the message is held in memory until the smarthost has it.
MAX_SIZE = 10_240_000
IDLE_TIMEOUT = 300.0  # RFC 5321 4.5.3.2.7: the server's timeout
SOCKET_MODE = 0o660  # the unix socket: root and Postfix's group only
POSTFIX_GROUP = "postfix"  # Postfix's default mail_owner's group: its lmtp client connects

_XTEXT = re.compile(r"\+([0-9A-F]{2})")
_MAIL_PARAMS = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID"})
_RCPT_PARAMS = frozenset({"NOTIFY", "ORCPT"})


@dataclass
class Transaction:
    """One envelope and its text, as Postfix sent them (parameters decoded)."""

    sender: str  # Postfix's internal form: unquoted local part; "" the null sender
    params: dict[str, str] = field(default_factory=dict)  # MAIL: SIZE, BODY, RET, ENVID...
    recipients: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    data: bytes = b""  # the text after dot-unstuffing, CRLF line ends

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.params


@dataclass(frozen=True, slots=True)
class Answer:
    """What the relay says after the final dot: an SMTP reply, never 5xx (see relay.py)."""

    code: int
    text: str

    def line(self) -> bytes:
        text = " ".join(self.text.split())
        return f"{self.code} {text}\r\n".encode("utf-8", "replace")


Deliver = Callable[[Transaction], Awaitable[Answer]]


class ProtocolError(Exception):
    """A command refused. About a transaction always 4xx: a 5xx would make Postfix bounce
    the message, and nothing the relay path dislikes is a reason to bounce mail."""

    def __init__(self, reply: str) -> None:
        super().__init__(reply)
        self.reply = reply


def xtext_decode(value: str) -> str:
    """RFC 3461 section 4: +HH back to the byte (UTF-8 as the session encodes it)."""
    raw = _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def parse_path(text: str) -> tuple[str, str]:
    """`<addr> PARAMS` -> (address in internal form, the parameters' text)."""
    text = text.lstrip()
    if not text.startswith("<"):
        raise ProtocolError("451 4.1.7 Bad address syntax")
    quoted = False
    end = -1
    for index in range(1, len(text)):
        char = text[index]
        if char == "\\" and quoted:
            continue
        if char == '"' and text[index - 1] != "\\":
            quoted = not quoted
        elif char == ">" and not quoted:
            end = index
            break
    if end < 0:
        raise ProtocolError("451 4.1.7 Bad address syntax")
    address, rest = text[1:end], text[end + 1 :]
    if address.startswith("@") and ":" in address:  # a source route: RFC 5321 C.
        address = address.partition(":")[2]
    local, at, domain = address.rpartition("@")
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        local = re.sub(r"\\(.)", r"\1", local[1:-1])
        address = f"{local}@{domain}"
    elif not at:
        address = domain
    return address, rest


def parse_params(text: str, allowed: frozenset[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        key = key.upper()
        if key not in allowed:
            raise ProtocolError(f"451 4.5.4 Unsupported parameter {key}")
        params[key] = value
    return params


def unstuff(text: bytes) -> bytes:
    """RFC 5321 4.5.2: the text without the dot the client put before each line that
    begins with one (`text` begins at a line's start)."""
    text = text.replace(b"\n.", b"\n")
    return text[1:] if text.startswith(b".") else text


async def read_data(reader: asyncio.StreamReader, max_size: int) -> bytes | None:
    """The text after DATA up to the line ".", unstuffed; None if over `max_size`.

    Read in runs up to each ".<CR><LF>", not line by line: a line of its own ends the
    text only where a <CR><LF> comes before it (or the text is empty). What follows the
    final dot stays in `reader`: pipelined commands after it are read as commands.
    """
    parts: list[bytes] = []
    raw = 0
    tail = b"\r\n"  # the DATA line's end: the text begins at a line's start
    while True:
        try:
            async with asyncio.timeout(IDLE_TIMEOUT):
                chunk = await reader.readuntil(b".\r\n")
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("the client left during DATA") from exc
        except asyncio.LimitOverrunError as exc:
            # No ".<CR><LF>" in the buffered limit: take what cannot begin one, go on.
            async with asyncio.timeout(IDLE_TIMEOUT):
                chunk = await reader.readexactly(exc.consumed)
            ended = False
        else:
            ended = (tail + chunk)[-5:-3] == b"\r\n"
        raw += len(chunk)
        # Stuffing adds at most a third to a line: this much is over max_size unstuffed.
        if raw <= 2 * max_size:
            parts.append(chunk)
        tail = (tail + chunk)[-2:]
        if ended:
            break
    if raw > 2 * max_size:
        return None
    text = unstuff(b"".join(parts)[:-3])
    return text if len(text) <= max_size else None


class _Session:
    """One client connection."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        lmtp: bool,
        hostname: str,
        deliver: Deliver,
        max_size: int,
    ) -> None:
        self.max_size = max_size
        self.reader = reader
        self.writer = writer
        self.lmtp = lmtp
        self.hostname = hostname
        self.deliver = deliver
        self.greeted = False
        self.tx: Transaction | None = None
        self.idle = asyncio.Event()  # clear between the final dot and the answer
        self.idle.set()

    async def reply(self, *lines: str | bytes) -> None:
        for line in lines:
            self.writer.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        kind = "LMTP" if self.lmtp else "ESMTP"
        await self.reply(f"220 {self.hostname} {kind} queue-rescue relay")
        while True:
            async with asyncio.timeout(IDLE_TIMEOUT):
                line = await self.reader.readline()
            if not line:
                return
            if not line.endswith(b"\n"):
                await self.reply("500 5.5.2 Line too long")
                return
            try:
                text = line.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError:
                await self.reply("500 5.5.2 Not UTF-8")
                continue
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                await self.reply("221 2.0.0 Bye")
                return
            try:
                await self.command(verb, arg)
            except ProtocolError as exc:
                await self.reply(exc.reply)

    async def command(self, verb: str, arg: str) -> None:
        hello = "LHLO" if self.lmtp else "EHLO"
        if verb in (hello, "HELO") and not (self.lmtp and verb == "HELO"):
            self.greeted, self.tx = True, None
            if verb == "HELO":
                await self.reply(f"250 {self.hostname}")
                return
            await self.reply(
                f"250-{self.hostname}",
                "250-PIPELINING",
                f"250-SIZE {self.max_size}",
                "250-8BITMIME",
                "250-SMTPUTF8",
                "250-DSN",
                "250 ENHANCEDSTATUSCODES",
            )
        elif verb in ("RSET", "NOOP"):
            if verb == "RSET":
                self.tx = None
            await self.reply("250 2.0.0 Ok")
        elif verb == "MAIL":
            self._mail(arg)
            await self.reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            self._rcpt(arg)
            await self.reply("250 2.1.5 Ok")
        elif verb == "DATA":
            await self._data()
        elif verb == "VRFY":
            await self.reply("252 2.5.2 Send some mail")
        else:
            raise ProtocolError("502 5.5.2 Command not recognized")

    def _mail(self, arg: str) -> None:
        if not self.greeted:
            raise ProtocolError("451 4.5.1 Say hello first")
        if self.tx is not None:
            raise ProtocolError("451 4.5.1 Nested MAIL command")
        if not arg.upper().startswith("FROM:"):
            raise ProtocolError("451 4.5.4 Syntax: MAIL FROM:<address>")
        sender, rest = parse_path(arg[5:])
        params = parse_params(rest, _MAIL_PARAMS)
        size = params.get("SIZE", "0")
        if not size.isdigit() or int(size) > self.max_size:
            # 4xx, not 552: a relay path never bounces mail; Postfix keeps it.
            raise ProtocolError("452 4.3.4 Message too big for the relay path")
        if "ENVID" in params:
            params["ENVID"] = xtext_decode(params["ENVID"])
        if not sender.isascii() and "SMTPUTF8" not in params:
            raise ProtocolError("451 4.6.7 UTF-8 address without SMTPUTF8")
        self.tx = Transaction(sender, params)

    def _rcpt(self, arg: str) -> None:
        if self.tx is None:
            raise ProtocolError("451 4.5.1 Need MAIL first")
        if not arg.upper().startswith("TO:"):
            raise ProtocolError("451 4.5.4 Syntax: RCPT TO:<address>")
        address, rest = parse_path(arg[3:])
        if "@" not in address:
            raise ProtocolError("451 4.1.3 Recipient without a domain")
        params = parse_params(rest, _RCPT_PARAMS)
        if "ORCPT" in params:
            kind, _, value = params["ORCPT"].partition(";")
            params["ORCPT"] = f"{kind};{xtext_decode(value)}"
        self.tx.recipients.append((address, params))

    async def _data(self) -> None:
        tx = self.tx
        if tx is None or not tx.recipients:
            raise ProtocolError("451 4.5.1 Need RCPT first")
        await self.reply("354 End data with <CR><LF>.<CR><LF>")
        data = await read_data(self.reader, self.max_size)
        self.tx = None
        if data is None:
            await self._answer(tx, Answer(452, "4.3.4 Message too big for the relay path"))
            return
        tx.data = data
        self.idle.clear()
        try:
            await self._answer(tx, await self.deliver(tx))
        finally:
            self.idle.set()

    async def _answer(self, tx: Transaction, answer: Answer) -> None:
        # LMTP: one reply per recipient (RFC 2033 4.2); the smarthost takes all or none.
        count = len(tx.recipients) if self.lmtp else 1
        await self.reply(*([answer.line()] * count))


class RelayServer:
    """Listens on loopback TCP (SMTP) or a unix socket (LMTP) until closed."""

    def __init__(self, deliver: Deliver, *, hostname: str, max_size: int = MAX_SIZE) -> None:
        """`max_size`: Postfix's message_size_limit, so that what Postfix took passes."""
        self._deliver = deliver
        self._max_size = max_size
        self._hostname = hostname
        self._server: asyncio.Server | None = None
        self._sessions: dict[asyncio.Task[None], _Session] = {}
        self.address = ""

    async def start(self, listen: tuple[str, str, int]) -> None:
        kind, where, port = listen
        if kind == "unix":
            path = Path(where)
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a socket left by a crash
            old = os.umask(0o117)
            try:
                self._server = await asyncio.start_unix_server(
                    lambda r, w: self._serve(r, w, lmtp=True), path, limit=LINE_LIMIT
                )
            finally:
                os.umask(old)
            os.chmod(path, SOCKET_MODE)
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(path, -1, grp.getgrnam(POSTFIX_GROUP).gr_gid)
            self.address = f"unix:{path}"
        else:
            self._server = await asyncio.start_server(
                lambda r, w: self._serve(r, w, lmtp=False), where, port, limit=LINE_LIMIT
            )
            sockname = self._server.sockets[0].getsockname()
            self.address = f"{sockname[0]}:{sockname[1]}"

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2]) if self._server else 0

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, lmtp: bool
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        session = _Session(
            reader,
            writer,
            lmtp=lmtp,
            hostname=self._hostname,
            deliver=self._deliver,
            max_size=self._max_size,
        )
        self._sessions[task] = session
        try:
            await session.run()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            # ValueError: a line over the limit (StreamReader's LimitOverrunError).
            log.debug("relay: session ended: %s", exc)
        except asyncio.CancelledError:
            # close() ended it; asyncio's stream callback would report a cancelled task
            # as an error.
            log.debug("relay: session closed")
        finally:
            self._sessions.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def close(self, grace: float = 0.0) -> None:
        """Stop listening; give transactions waiting for the smarthost `grace` seconds to
        get their answer to Postfix, then end every session. One cut off gets no answer:
        Postfix keeps its message (and says it may be sent twice if the smarthost had it)."""
        if self._server is not None:
            self._server.close()
        busy = [s.idle.wait() for s in self._sessions.values() if not s.idle.is_set()]
        for task, session in list(self._sessions.items()):
            if session.idle.is_set():
                task.cancel()
        if busy and grace > 0:
            waiters = [asyncio.ensure_future(b) for b in busy]
            await asyncio.wait(waiters, timeout=grace)
            for waiter in waiters:
                waiter.cancel()
        for task in list(self._sessions):
            task.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions))
        if self._server is not None:
            await self._server.wait_closed()
