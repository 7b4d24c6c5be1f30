"""The lab servers' SMTP protocol: aiosmtpd's, with MAIL and RCPT parsed here.

aiosmtpd refuses the null sender, upper-cases parameter values (ENVID and ORCPT are
case-sensitive) and knows no DSN parameters, so MAIL and RCPT are parsed here; each
stage consults the fault script.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading
from typing import Any, AnyStr

from aiosmtpd.smtp import SMTP

from tests.lab.faults import Fault
from tests.lab.recorder import LabEnvelope, Recorder

# Far above RFC 5321's 1,000 octets: a smarthost must take what Postfix queued, and
# Postfix accepts and relays longer lines.
LINE_LENGTH_LIMIT = 1 << 20
# Room for long SRS senders, ENVID (100 xtext chars, RFC 3461) and ORCPT parameters.
COMMAND_SIZE_LIMIT = 4096
_PATH = re.compile(r"\s*<([^<>]*)>(.*)", re.DOTALL)
_MAIL_PARAMS_DSN = frozenset({"RET", "ENVID"})
_RCPT_PARAMS_DSN = frozenset({"NOTIFY", "ORCPT"})


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


class LabSMTP(SMTP):
    """aiosmtpd's SMTP with long lines, DSN, the null sender and the fault script."""

    # Read by SMTP.__init__ as the stream reader's limit.
    line_length_limit = LINE_LENGTH_LIMIT
    command_size_limit = COMMAND_SIZE_LIMIT

    def __init__(self, recorder: Recorder, **kwargs: Any) -> None:
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

    def _create_envelope(self) -> LabEnvelope:
        return LabEnvelope()

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
        assert isinstance(envelope, LabEnvelope)
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
