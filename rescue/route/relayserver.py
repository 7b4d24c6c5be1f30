"""The relay endpoint's protocol: the SMTP (TCP) or LMTP (unix socket) Postfix delivers to.

Written on asyncio (an Inbox protocol, inbox.py) rather than with aiosmtpd: aiosmtpd
refuses the null sender (bounces must pass too), upper-cases ENVID and ORCPT values and
knows no DSN, so its MAIL and RCPT handling would have to be replaced, which is most of
what it does for us; and it reads a message line by line, which cost the relay half its
CPU. Replies to pipelined commands leave in one write.
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

from rescue.route.inbox import Inbox, LineTooLong

log = logging.getLogger(__name__)

# RFC 5321 4.5.3.1.4 says 512 octets for a command line; DSN parameters and long
# addresses make Postfix's longer. A longer line ends the session with a 421. The text of
# a message has no line limit (Postfix's line_length_limit applied when it took it).
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


class _Session:
    """One client connection."""

    def __init__(
        self, inbox: Inbox, *, lmtp: bool, hostname: str, deliver: Deliver, max_size: int
    ) -> None:
        self.max_size = max_size
        self.inbox = inbox
        self.lmtp = lmtp
        self.hostname = hostname
        self.deliver = deliver
        self.greeted = False
        self.tx: Transaction | None = None
        self.idle = asyncio.Event()  # clear between the final dot and the answer
        self.idle.set()

    def reply(self, *lines: str | bytes) -> None:
        """Replies leave together once the session waits for the client (Inbox.flush)."""
        for line in lines:
            self.inbox.write(line if isinstance(line, bytes) else line.encode() + b"\r\n")

    async def run(self) -> None:
        kind = "LMTP" if self.lmtp else "ESMTP"
        self.reply(f"220 {self.hostname} {kind} queue-rescue relay")
        while True:
            try:
                line = await self.inbox.line()
            except LineTooLong:
                self.reply("421 4.5.2 Line too long")  # 4xx: Postfix keeps the message
                return
            if not line:
                return
            try:
                text = line.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError:
                self.reply("500 5.5.2 Not UTF-8")
                continue
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            try:
                await self.command(verb, arg)
            except ProtocolError as exc:
                self.reply(exc.reply)

    async def command(self, verb: str, arg: str) -> None:
        hello = "LHLO" if self.lmtp else "EHLO"
        if verb in (hello, "HELO") and not (self.lmtp and verb == "HELO"):
            self.greeted, self.tx = True, None
            if verb == "HELO":
                self.reply(f"250 {self.hostname}")
                return
            self.reply(
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
            self.reply("250 2.0.0 Ok")
        elif verb == "MAIL":
            self._mail(arg)
            self.reply("250 2.1.0 Ok")
        elif verb == "RCPT":
            self._rcpt(arg)
            self.reply("250 2.1.5 Ok")
        elif verb == "DATA":
            await self._data()
        elif verb == "VRFY":
            self.reply("252 2.5.2 Send some mail")
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
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        data = await self.inbox.text(self.max_size)
        self.tx = None
        if data is None:
            self._answer(tx, Answer(452, "4.3.4 Message too big for the relay path"))
            return
        tx.data = data
        self.idle.clear()
        try:
            self._answer(tx, await self.deliver(tx))
        finally:
            self.idle.set()

    def _answer(self, tx: Transaction, answer: Answer) -> None:
        # LMTP: one reply per recipient (RFC 2033 4.2); the smarthost takes all or none.
        count = len(tx.recipients) if self.lmtp else 1
        self.reply(*([answer.line()] * count))
        self.inbox.flush()  # at once: the client waits for it before it sends more


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
        loop = asyncio.get_running_loop()
        if kind == "unix":
            path = Path(where)
            path.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a socket left by a crash
            old = os.umask(0o117)
            try:
                self._server = await loop.create_unix_server(lambda: self._inbox(True), path)
            finally:
                os.umask(old)
            os.chmod(path, SOCKET_MODE)
            with contextlib.suppress(KeyError, PermissionError):
                os.chown(path, -1, grp.getgrnam(POSTFIX_GROUP).gr_gid)
            self.address = f"unix:{path}"
        else:
            self._server = await loop.create_server(lambda: self._inbox(False), where, port)
            sockname = self._server.sockets[0].getsockname()
            self.address = f"{sockname[0]}:{sockname[1]}"

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2]) if self._server else 0

    def _inbox(self, lmtp: bool) -> Inbox:
        def connected(inbox: Inbox) -> None:
            session = _Session(
                inbox,
                lmtp=lmtp,
                hostname=self._hostname,
                deliver=self._deliver,
                max_size=self._max_size,
            )
            task = asyncio.get_running_loop().create_task(self._serve(session))
            self._sessions[task] = session

        return Inbox(connected, timeout=IDLE_TIMEOUT, line_limit=LINE_LIMIT)

    async def _serve(self, session: _Session) -> None:
        try:
            await session.run()
        except (TimeoutError, ConnectionError) as exc:
            log.debug("relay: session ended: %s", exc)
        except asyncio.CancelledError:
            log.debug("relay: session closed")  # by close()
        finally:
            task = asyncio.current_task()
            if task is not None:
                self._sessions.pop(task, None)
            session.inbox.close()

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
