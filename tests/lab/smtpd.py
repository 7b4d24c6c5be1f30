"""Fake SMTP servers in threads: a recording smarthost with scripted faults, a fake provider.

Built on aiosmtpd's SMTP protocol class. MAIL and RCPT are parsed here rather than by
aiosmtpd, because aiosmtpd refuses the null sender, upper-cases parameter values (ENVID and
ORCPT are case-sensitive) and knows no DSN parameters.
"""

from __future__ import annotations

import asyncio
import collections
import re
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, AnyStr, Literal, Self, get_args

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.lab import Running, wait_for
from tests.lab.certs import LabCerts, default_certs

Stage = Literal["GREETING", "EHLO", "MAIL", "RCPT", "DATA", "BODY", "EOD"]
Action = Literal["reply", "disconnect", "hang"]
STAGES: tuple[str, ...] = get_args(Stage)
ACTIONS: tuple[str, ...] = get_args(Action)

# Far above RFC 5321's 1,000 octets: a smarthost must take what Postfix queued, and
# Postfix accepts and relays longer lines.
LINE_LENGTH_LIMIT = 1 << 20
# Room for long SRS senders, ENVID (100 xtext chars, RFC 3461) and ORCPT parameters.
COMMAND_SIZE_LIMIT = 4096
_REPLY_LINE = re.compile(r"\d{3}([ -].*)?")
_PATH = re.compile(r"\s*<([^<>]*)>(.*)", re.DOTALL)
_MAIL_PARAMS_DSN = frozenset({"RET", "ENVID"})
_RCPT_PARAMS_DSN = frozenset({"NOTIFY", "ORCPT"})


@dataclass(frozen=True)
class Fault:
    """What a server does wrong, and how often.

    stage: where it strikes: GREETING, EHLO, MAIL, RCPT, DATA (the DATA command), BODY
        (while the message text arrives: "disconnect", or "hang": a slow reader) or EOD
        (after the final dot).
    action: "reply" answers `reply` instead of going on; "disconnect" drops the connection
        without a word; "hang" stays silent for `seconds` (None: until the client leaves)
        or until `gate` is set, then answers `reply`, or carries on normally when there is
        none. A hang at EOD with no reply records the message first: the server has it,
        only the answer is late. A hang at BODY stops reading the text after each part
        that arrives, for `seconds` or until `gate` is set: the client's writes back up.
    times: how many matching events it strikes (None: until cleared). Each connection meets
        GREETING and EHLO once, each transaction MAIL, DATA, BODY and EOD once.
    recipient: at RCPT, strike only this address; at EOD, only a transaction to it.
    A reply may span lines ("421-first\\r\\n421 second"). After a 421 reply the server closes
    the connection, as RFC 5321 section 3.8 says.
    """

    stage: Stage
    reply: str | None = None
    action: Action = "reply"
    seconds: float | None = None
    times: int | None = 1
    recipient: str | None = None
    gate: threading.Event | None = None  # "hang": until the test sets it

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {self.stage!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, not {self.action!r}")
        if self.action == "reply" and self.reply is None:
            raise ValueError('action "reply" needs a reply')
        if self.action == "disconnect" and self.reply is not None:
            raise ValueError('action "disconnect" sends no reply')
        if self.stage == "BODY" and self.action not in ("disconnect", "hang"):
            raise ValueError('stage "BODY" only knows actions "disconnect" and "hang"')
        if self.stage == "BODY" and self.reply is not None:
            raise ValueError('stage "BODY" sends no reply')
        if self.recipient is not None and self.stage not in ("RCPT", "EOD"):
            raise ValueError('only stages "RCPT" and "EOD" can name a recipient')
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1, or None for always")
        if (self.seconds is not None or self.gate is not None) and self.action != "hang":
            raise ValueError('only action "hang" takes seconds or a gate')
        if self.reply is not None:
            lines = self.reply.replace("\r\n", "\n").split("\n")
            if not all(_REPLY_LINE.fullmatch(line) for line in lines):
                raise ValueError(f"not an SMTP reply: {self.reply!r}")
            object.__setattr__(self, "reply", "\r\n".join(lines))

    @property
    def closes(self) -> bool:
        """Whether the server hangs up after this reply (a 421, or any greeting fault)."""
        return self.stage == "GREETING" or (self.reply or "").startswith("421")


@dataclass(frozen=True)
class Received:
    """One transaction a server accepted; `content` is the DATA bytes as sent, after
    dot-unstuffing, with CRLF line ends."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    mail_options: tuple[str, ...]
    rcpt_options: tuple[tuple[str, ...], ...]  # one tuple per recipient, as sent
    content: bytes
    connection: int = 0  # which connection (1, 2, ...) carried it
    helo: str = ""
    tls: bool = False
    auth_user: str | None = None
    at: float = 0.0  # when the server stored it (time.time())


@dataclass
class _Scripted:
    fault: Fault
    left: int | None


class _FaultScript:
    """The faults a test has asked for, consumed by the server thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Scripted] = []

    def add(self, faults: tuple[Fault, ...]) -> None:
        with self._lock:
            self._entries.extend(_Scripted(fault, fault.times) for fault in faults)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def pending(self) -> list[Fault]:
        with self._lock:
            return [entry.fault for entry in self._entries]

    def take(self, stage: Stage, recipient: str | None = None) -> Fault | None:
        """The first fault due at `stage` (for `recipient`), counting it as used."""
        with self._lock:
            for entry in self._entries:
                wanted = entry.fault.recipient
                if entry.fault.stage != stage:
                    continue
                if wanted is not None and (recipient or "").lower() != wanted.lower():
                    continue
                if entry.left is not None:
                    entry.left -= 1
                    if entry.left == 0:
                        self._entries.remove(entry)
                return entry.fault
            return None


@dataclass(frozen=True)
class _Options:
    hostname: str
    starttls: bool
    implicit_tls: bool
    require_auth: tuple[str, str] | None
    auth_require_tls: bool
    size_limit: int | None
    advertise_8bitmime: bool
    advertise_smtputf8: bool
    advertise_dsn: bool
    reply_delay: float  # seconds each reply waits (a slow server); at EOD, before it records


class _Recorder:
    """The state one server shares across connections: faults, counters, what it got.

    It is also the aiosmtpd handler (aiosmtpd calls its handle_DATA).
    """

    def __dir__(self) -> list[str]:
        # aiosmtpd looks through dir() of its handler on every connection for handle_* and
        # auth_* methods; listing only those keeps a connection cheap.
        return [name for name in dir(type(self)) if name.startswith(("handle_", "auth_"))]

    def __init__(self, options: _Options) -> None:
        self.options = options
        self.faults = _FaultScript()
        self._changed = threading.Condition()
        self.received: list[Received] = []
        self.commands: list[str] = []  # the verbs of MAIL, RCPT, DATA, RSET, QUIT seen
        self.connections = 0
        self.transactions = 0
        self.auth_attempts = 0  # AUTH commands that carried credentials
        self.closed = 0  # connections that have ended

    def connection_opened(self) -> int:
        with self._changed:
            self.connections += 1
            return self.connections

    def saw(self, verb: str) -> None:
        with self._changed:
            self.commands.append(verb)

    def connection_closed(self) -> None:
        with self._changed:
            self.closed += 1

    def transaction_started(self) -> None:
        with self._changed:
            self.transactions += 1

    def reset(self) -> None:
        self.faults.clear()
        with self._changed:
            self.received.clear()
            self.commands.clear()
            self.connections = 0
            self.transactions = 0
            self.auth_attempts = 0
            self.closed = 0

    def wait_for_count(self, n: int, timeout: float) -> list[Received]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.received) >= n, timeout):
                raise TimeoutError(
                    f"timed out after {timeout:g}s waiting for {n} messages; "
                    f"got {len(self.received)} over {self.connections} connections"
                )
            return list(self.received)

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        with self._changed:
            self.auth_attempts += 1
        expected = self.options.require_auth
        given = (data.login, data.password) if isinstance(data, LoginPassword) else None
        wanted = tuple(part.encode() for part in expected) if expected else None
        # handled=False: aiosmtpd then answers 535 itself (its default assumes we did).
        ok = given is not None and given == wanted
        return AuthResult(success=ok, handled=False, auth_data=data)

    async def handle_DATA(self, server: _LabSMTP, session: Session, envelope: Envelope) -> str:
        fault = self.faults.take("EOD", envelope.rcpt_tos[0] if envelope.rcpt_tos else None)
        if fault is None or (fault.action == "hang" and fault.reply is None):
            # A slow server thinks before it stores the message, then answers at once:
            # the time it has the message and the client does not know is only the wire's.
            await server.think()
            number = self._record(server, session, envelope)
            server.answer_now = True
            await server.act_out(fault)  # at most a pause before the late answer
            return f"250 2.0.0 Ok: queued as {number}"
        reply = await server.act_out(fault)
        assert reply is not None
        return reply

    def _record(self, server: _LabSMTP, session: Session, envelope: Envelope) -> int:
        assert isinstance(envelope, _LabEnvelope)
        login = getattr(session.auth_data, "login", None)
        received = Received(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            mail_options=tuple(envelope.mail_options),
            rcpt_options=tuple(envelope.rcpt_params),
            content=envelope.original_content or b"",
            connection=server.connection_number,
            helo=session.host_name or "",
            tls=server.tls_active,
            auth_user=login.decode(errors="replace") if isinstance(login, bytes) else None,
            at=time.time(),
        )
        with self._changed:
            self.received.append(received)
            self._changed.notify_all()
            return len(self.received)


class _LabEnvelope(Envelope):
    def __init__(self) -> None:
        super().__init__()
        self.rcpt_params: list[tuple[str, ...]] = []


async def _pause(seconds: float | None, gate: threading.Event | None = None) -> None:
    """Sleep, or wait for `gate`; None without a gate sleeps until cancelled (the client
    leaves or the server stops)."""
    if gate is not None:
        while not gate.is_set():  # short looks: a cancelled wait leaves no thread behind
            await asyncio.sleep(0.01)
    elif seconds is None:
        await asyncio.get_running_loop().create_future()
    else:
        await asyncio.sleep(seconds)


class _LabSMTP(SMTP):
    """aiosmtpd's SMTP with long lines, DSN, the null sender and the fault script."""

    # Read by SMTP.__init__ as the stream reader's limit.
    line_length_limit = LINE_LENGTH_LIMIT
    command_size_limit = COMMAND_SIZE_LIMIT

    def __init__(self, recorder: _Recorder, **kwargs: Any) -> None:
        super().__init__(recorder, **kwargs)
        # aiosmtpd's own is a class-wide dict it grows on every EHLO; ours stays fixed.
        self.command_size_limits = collections.defaultdict(lambda: COMMAND_SIZE_LIMIT)
        self.recorder = recorder
        self.options = recorder.options
        self.connection_number = 0
        self.answer_now = False  # the next reply goes without reply_delay
        self._slow_body: Fault | None = None  # a BODY "hang": reading the text slowly
        self._reading_later: asyncio.Task[None] | None = None

    async def think(self) -> None:
        """The server's time to work out a reply (reply_delay)."""
        if self.options.reply_delay:
            await asyncio.sleep(self.options.reply_delay)

    async def push(self, status: AnyStr) -> None:
        if self.answer_now:
            self.answer_now = False
        else:
            await self.think()
        await super().push(status)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        transport = self.transport
        fault = self._slow_body
        if fault is None or not isinstance(transport, asyncio.Transport):
            return
        if transport.is_closing() or self._reading_later is not None:
            return
        transport.pause_reading()
        self._reading_later = self.loop.create_task(self._read_later(transport, fault))

    async def _read_later(self, transport: asyncio.Transport, fault: Fault) -> None:
        try:
            await _pause(fault.seconds, fault.gate)
        finally:
            self._reading_later = None
        if not transport.is_closing():
            transport.resume_reading()

    def connection_lost(self, error: Exception | None) -> None:
        self.recorder.connection_closed()
        if self._reading_later is not None:
            self._reading_later.cancel()
        super().connection_lost(error)

    def __dir__(self) -> list[str]:
        # aiosmtpd looks through dir() of every new connection for its smtp_* and auth_*
        # methods, which cost a millisecond a connection, most of a fake provider's work
        # when Postfix makes thousands; those are the only names it wants.
        return [name for name in dir(type(self)) if name.startswith(("smtp_", "auth_"))]

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None or self.options.implicit_tls

    def _create_envelope(self) -> _LabEnvelope:
        return _LabEnvelope()

    async def act_out(self, fault: Fault | None) -> str | None:
        """Play `fault`: the reply to send instead of the normal one, or None to go on."""
        if fault is None:
            return None
        if fault.action == "disconnect":
            if isinstance(self.transport, asyncio.Transport):
                self.transport.abort()
            await _pause(None)  # connection_lost() cancels this task
        if fault.action == "hang":
            await _pause(fault.seconds, fault.gate)
        if fault.reply is not None and fault.closes:
            # Runs after the caller has written the reply, which close() still sends.
            self.loop.call_soon(self._close)
        return fault.reply

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _handle_client(self) -> None:
        # aiosmtpd sends the greeting here (a private method: there is no hook for it).
        self.connection_number = self.recorder.connection_opened()
        reply = await self.act_out(self.recorder.faults.take("GREETING"))
        if reply is not None:
            await self.push(reply)
            return
        await super()._handle_client()

    async def smtp_EHLO(self, hostname: str | None) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        reply = await self.act_out(self.recorder.faults.take("EHLO"))
        if reply is not None:
            await self.push(reply)
            return
        self.envelope = self._create_envelope()  # EHLO resets the transaction
        assert self.session is not None
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, *self._keywords(), "HELP"]
        text = "\r\n".join(f"250-{line}" for line in lines[:-1])
        await self.push(f"{text}\r\n250 {lines[-1]}")

    def _keywords(self) -> list[str]:
        options = self.options
        keywords = ["PIPELINING"]
        if options.size_limit:
            keywords.append(f"SIZE {options.size_limit}")
        if options.advertise_8bitmime:
            keywords.append("8BITMIME")
        if options.advertise_smtputf8:
            keywords.append("SMTPUTF8")
        if options.advertise_dsn:
            keywords.append("DSN")
        if self.tls_context and not self._tls_protocol:
            keywords.append("STARTTLS")
        if options.require_auth and (self.tls_active or not options.auth_require_tls):
            keywords.append("AUTH LOGIN PLAIN")
        return keywords

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.recorder.saw("MAIL")
        if await self.check_helo_needed("EHLO"):
            return
        assert self.session is not None and self.envelope is not None
        if self.options.require_auth and not self.session.authenticated:
            await self.push("530 5.7.0 Authentication required")
            return
        self.recorder.transaction_started()
        reply = await self.act_out(self.recorder.faults.take("MAIL"))
        if reply is not None:
            await self.push(reply)
            return
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        parsed = _parse_path("FROM:", arg)
        if parsed is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address> [parameters]")
            return
        address, params = parsed
        utf8 = any(param.upper() == "SMTPUTF8" for param in params)
        problem = self._check_params(params, self._mail_params()) or _ascii_problem(address, utf8)
        if problem:
            await self.push(problem)
            return
        self.envelope.mail_from = address
        self.envelope.mail_options.extend(params)
        self.envelope.smtp_utf8 = utf8
        await self.push("250 2.1.0 Ok")

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.recorder.saw("RCPT")
        if await self.check_helo_needed("EHLO"):
            return
        envelope = self.envelope
        assert isinstance(envelope, _LabEnvelope)
        if envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        parsed = _parse_path("TO:", arg)
        if parsed is None or not parsed[0]:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address> [parameters]")
            return
        address, params = parsed
        reply = await self.act_out(self.recorder.faults.take("RCPT", address))
        if reply is not None:
            await self.push(reply)
            return
        allowed = _RCPT_PARAMS_DSN if self.options.advertise_dsn else frozenset()
        problem = self._check_params(params, allowed) or _ascii_problem(address, envelope.smtp_utf8)
        if problem:
            await self.push(problem)
            return
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(params)
        envelope.rcpt_params.append(tuple(params))
        await self.push("250 2.1.5 Ok")

    async def smtp_RSET(self, arg: str | None) -> None:
        self.recorder.saw("RSET")
        await super().smtp_RSET(arg)

    async def smtp_QUIT(self, arg: str | None) -> None:
        self.recorder.saw("QUIT")
        await super().smtp_QUIT(arg)

    async def smtp_DATA(self, arg: str | None) -> None:
        self.recorder.saw("DATA")
        assert self.envelope is not None
        if self.envelope.rcpt_tos and not arg:
            reply = await self.act_out(self.recorder.faults.take("DATA"))
            if reply is not None:
                self.envelope = self._create_envelope()
                await self.push(reply)
                return
            body = self.recorder.faults.take("BODY")
            if body is not None and body.action == "disconnect":
                await self.push("354 End data with <CR><LF>.<CR><LF>")
                await self._reader.read(1)  # the message has begun to arrive
                await self.act_out(body)
            self._slow_body = body  # a slow reader until the final dot
        try:
            await super().smtp_DATA(arg)
        finally:
            self._slow_body = None

    def _mail_params(self) -> frozenset[str]:
        options = self.options
        allowed = set(_MAIL_PARAMS_DSN) if options.advertise_dsn else set()
        if options.size_limit:
            allowed.add("SIZE")
        if options.advertise_8bitmime:
            allowed.add("BODY")
        if options.advertise_smtputf8:
            allowed.add("SMTPUTF8")
        if options.require_auth:
            allowed.add("AUTH")
        return frozenset(allowed)

    def _check_params(self, params: list[str], allowed: frozenset[str]) -> str | None:
        """The error reply for the first parameter this server did not advertise, if any."""
        for param in params:
            key, _, value = param.partition("=")
            key = key.upper()
            if key not in allowed:
                return f"555 5.5.4 Unsupported option: {param}"
            if key == "SIZE" and self.options.size_limit:
                if not value.isdigit():
                    return "501 5.5.4 Bad SIZE parameter"
                if int(value) > self.options.size_limit:
                    return "552 5.3.4 Message size exceeds fixed limit"
            if key == "BODY" and value.upper() not in ("7BIT", "8BITMIME"):
                return f"501 5.5.4 Bad BODY parameter: {value}"
        return None


def _parse_path(keyword: str, arg: str | None) -> tuple[str, list[str]] | None:
    """("address", ["PARAM=value", ...]) from "FROM:<address> PARAM=value ..."."""
    if arg is None or arg[: len(keyword)].upper() != keyword:
        return None
    found = _PATH.fullmatch(arg[len(keyword) :])
    if found is None:
        return None
    return found.group(1), found.group(2).split()


def _ascii_problem(address: str, smtputf8: bool) -> str | None:
    if smtputf8 or address.isascii():
        return None
    return "553 5.6.7 Must declare SMTPUTF8 to send unicode address"


class _ServerThread:
    """An asyncio loop in a daemon thread, serving one listening socket on 127.0.0.1."""

    def __init__(
        self,
        protocol: Callable[[asyncio.AbstractEventLoop], asyncio.Protocol],
        ssl_context: ssl.SSLContext | None,
        receive_buffer: int | None = None,
    ) -> None:
        self._protocol = protocol
        self._ssl_context = ssl_context
        self._receive_buffer = receive_buffer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._live: weakref.WeakSet[asyncio.Protocol] = weakref.WeakSet()

    def start(self) -> int:
        """Listen on a free port; return it."""
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="lab-smtpd", daemon=True)
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=30)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _listen(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()

        def connection() -> asyncio.Protocol:
            protocol = self._protocol(loop)
            self._live.add(protocol)
            return protocol

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self._receive_buffer is not None:  # before listen(): accepted sockets inherit it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._receive_buffer)
        sock.bind(("127.0.0.1", 0))
        return await loop.create_server(connection, sock=sock, ssl=self._ssl_context)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        loop.close()
        self._loop = self._thread = self._server = None

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for protocol in list(self._live):
            transport = getattr(protocol, "transport", None)
            if transport is not None:
                transport.abort()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        await self._server.wait_closed()


class RecordingSmarthost(Running):
    """An SMTP server on 127.0.0.1 that records what it accepts and fails as scripted.

    TLS: `starttls` offers STARTTLS, `implicit_tls` speaks TLS from the first byte, both
    with the certificate of `certs` (default: tests.lab.certs.default_certs()).
    `require_auth=(user, password)` demands AUTH PLAIN/LOGIN before MAIL; with
    `auth_require_tls` AUTH is offered and accepted only under TLS. `reply_delay` makes
    it slow (seconds before each reply); `receive_buffer` fixes its sockets' SO_RCVBUF
    (bytes), so that a server that stops reading backs the client up soon, as over a
    network, instead of taking megabytes into loopback's buffers.
    """

    def __init__(
        self,
        *,
        starttls: bool = False,
        implicit_tls: bool = False,
        require_auth: tuple[str, str] | None = None,
        auth_require_tls: bool = False,
        size_limit: int | None = None,
        advertise_8bitmime: bool = True,
        advertise_smtputf8: bool = True,
        advertise_dsn: bool = True,
        certs: LabCerts | None = None,
        hostname: str = "smarthost.test",
        reply_delay: float = 0.0,
        receive_buffer: int | None = None,
    ) -> None:
        if starttls and implicit_tls:
            raise ValueError("choose starttls or implicit_tls, not both")
        self.host = "127.0.0.1"
        self._port: int | None = None
        options = _Options(
            hostname=hostname,
            starttls=starttls,
            implicit_tls=implicit_tls,
            require_auth=require_auth,
            auth_require_tls=auth_require_tls,
            size_limit=size_limit,
            advertise_8bitmime=advertise_8bitmime,
            advertise_smtputf8=advertise_smtputf8,
            advertise_dsn=advertise_dsn,
            reply_delay=reply_delay,
        )
        self._recorder = _Recorder(options)
        tls = (certs or default_certs()).server_context() if starttls or implicit_tls else None
        self._thread = _ServerThread(
            lambda loop: self._new_protocol(loop, tls if starttls else None),
            tls if implicit_tls else None,
            receive_buffer,
        )

    def _new_protocol(
        self, loop: asyncio.AbstractEventLoop, starttls: ssl.SSLContext | None
    ) -> _LabSMTP:
        options = self._recorder.options
        return _LabSMTP(
            self._recorder,
            loop=loop,
            hostname=options.hostname,
            data_size_limit=options.size_limit,
            enable_SMTPUTF8=options.advertise_smtputf8,
            tls_context=starttls,
            # Under implicit TLS aiosmtpd sees no STARTTLS and would refuse AUTH.
            auth_require_tls=options.auth_require_tls and not options.implicit_tls,
            authenticator=self._recorder.authenticate,
        )

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> Self:
        if self._port is None:
            self._port = self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()
        self._port = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not running: call start() first")
        return self._port

    @property
    def next_hop(self) -> str:
        """This server as a Postfix next hop: "smtp:[127.0.0.1]:PORT"."""
        return f"smtp:[{self.host}]:{self.port}"

    # -- scripting and watching --------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """Add faults; they strike in the order given, each for its `times`."""
        self._recorder.faults.add(faults)

    def clear_faults(self) -> None:
        self._recorder.faults.clear()

    def pending_faults(self) -> list[Fault]:
        """Faults that have not struck all their times yet."""
        return self._recorder.faults.pending()

    def reset(self) -> None:
        """Forget faults, received mail and counters (for a server shared between tests)."""
        self._recorder.reset()

    @property
    def received(self) -> list[Received]:
        with self._recorder._changed:
            return list(self._recorder.received)

    @property
    def commands(self) -> list[str]:
        """The verbs of every MAIL, RCPT, DATA, RSET and QUIT command received, in order."""
        with self._recorder._changed:
            return list(self._recorder.commands)

    @property
    def connections(self) -> int:
        return self._recorder.connections

    @property
    def auth_attempts(self) -> int:
        """AUTH commands that came with credentials, right or wrong."""
        return self._recorder.auth_attempts

    @property
    def connections_closed(self) -> int:
        """Connections that have ended (the server saw the client leave, or hung up)."""
        return self._recorder.closed

    @property
    def transactions_attempted(self) -> int:
        """MAIL commands seen from authorised clients, whatever became of them."""
        return self._recorder.transactions

    def wait_for_count(self, n: int, timeout: float = 30) -> list[Received]:
        """Wait until at least `n` messages were accepted; return all received so far."""
        return self._recorder.wait_for_count(n, timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
        """Poll any condition on this server (e.g. on `connections`)."""
        wait_for(predicate, timeout, what or "a condition on the SMTP server")


DEFAULT_PROVIDER_REPLY = "421 4.7.0 invalid sender domain, possibly misconfigured"


class FakeProvider(RecordingSmarthost):
    """A provider's MX that turns every delivery away with one reply at one stage,
    until `accept_all()`; then it records mail like a smarthost."""

    def __init__(
        self,
        reply: str = DEFAULT_PROVIDER_REPLY,
        stage: Stage = "MAIL",
        *,
        hostname: str = "mx.provider.test",
        **options: Any,
    ) -> None:
        super().__init__(hostname=hostname, **options)
        self._initial = (reply, stage)
        self.set_reply(reply, stage)

    def set_reply(self, reply: str, stage: Stage = "MAIL") -> None:
        """Answer every delivery with `reply` at `stage` from now on."""
        self.clear_faults()
        self.script(Fault(stage, reply, times=None))

    def accept_all(self) -> None:
        """Accept and record every delivery from now on."""
        self.clear_faults()

    def reset(self) -> None:
        """Back to refusing with the reply and stage it was made with; forget all mail."""
        super().reset()
        self.set_reply(*self._initial)
