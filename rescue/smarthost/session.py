"""One SMTP session to a smarthost: TLS, AUTH, and an all-or-nothing transaction.

Every failure leaves here as a DeliveryError that says whether trying again can
help (`transient`), whether the smarthost itself is at fault (`session`), and
whether it may have taken the message anyway (`uncertain`).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import aiosmtplib

from rescue.aio import outcome_of
from rescue.config import SmarthostConfig
from rescue.errors import DeliveryError
from rescue.model import Envelope
from rescue.smarthost.replies import Reply, ReplyError, ReplyReader
from rescue.smarthost.wire import command_line, encode_data, high_bytes, smtp_path, xtext

# Stages of a session, named as Postfix names them in its own delay reasons.
CONNECT = "connect"
GREETING = "greeting"
TLS = "TLS handshake"
EHLO = "EHLO"
AUTH = "AUTH"
MAIL = "MAIL FROM"
RCPT = "RCPT TO"
DATA = "DATA"
END_OF_DATA = "end of DATA"

SESSION_STAGES = frozenset({CONNECT, GREETING, TLS, EHLO, AUTH})

# Waiting longer for the answer to QUIT gains nothing.
QUIT_TIMEOUT = 5.0


class SessionError(DeliveryError):
    """The smarthost or the connection failed, not just this message."""


def tls_context(cfg: SmarthostConfig) -> ssl.SSLContext:
    """Certificates are verified; `ca_file` adds a private CA to the system's."""
    context = ssl.create_default_context()
    if cfg.ca_file is not None:
        context.load_verify_locations(cafile=str(cfg.ca_file))
    return context


@dataclass(frozen=True, slots=True)
class Accepted:
    smarthost: str
    reply: str


class AcceptedWhileCancelled(asyncio.CancelledError):
    """The task was cancelled after the final dot, and the smarthost then took the message.

    A cancellation all the same, which carries what the caller must know: the message
    is delivered, so it must be deleted, never given back to Postfix.
    """

    def __init__(self, accepted: Accepted) -> None:
        super().__init__(f"cancelled; {accepted.smarthost} accepted it: {accepted.reply}")
        self.accepted = accepted


class Session:
    """An open, authenticated connection that carries many transactions."""

    def __init__(self, cfg: SmarthostConfig) -> None:
        self.cfg = cfg
        self.sent = 0
        self._replies: ReplyReader | None = None
        self._pipelining = False
        self._smtp = aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port,
            use_tls=cfg.tls == "implicit",
            start_tls=False,
            timeout=cfg.timeout,
            tls_context=tls_context(cfg) if cfg.tls != "none" else None,
            local_hostname=cfg.helo_name,
        )

    @property
    def usable(self) -> bool:
        return (
            self._replies is not None
            and self._replies.open
            and self.sent < self.cfg.max_messages_per_session
        )

    @property
    def _reader(self) -> ReplyReader:
        if self._replies is None:
            raise RuntimeError("session not open")
        return self._replies

    def _error(
        self,
        stage: str,
        exc: BaseException,
        *,
        code: int | None = None,
        session: bool = False,
        transient: bool | None = None,
        uncertain: bool = False,
    ) -> DeliveryError:
        if transient is None:
            transient = code is None or 400 <= code < 500
        text = str(exc) if code is None else f"{code} {' '.join(str(exc).split())}"
        message = f"{self.cfg.name}: {stage}: {text}"
        if code == 421:  # RFC 5321 3.8: the server is closing the channel
            session = True
        kind = SessionError if session else DeliveryError
        return kind(
            message,
            smarthost=self.cfg.name,
            code=code,
            transient=transient,
            uncertain=uncertain,
            stage=stage,
        )

    async def open(self) -> None:
        smtp = self._smtp
        try:
            await smtp.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise self._error(GREETING, exc, code=exc.code, session=True) from exc
        except (aiosmtplib.SMTPConnectError, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            stage = TLS if isinstance(exc.__cause__, ssl.SSLError) else CONNECT
            raise self._error(stage, _cause(exc), session=True, transient=True) from exc
        try:
            await self._ehlo()
            if self.cfg.tls == "starttls":
                await self._starttls()
            if self.cfg.username is not None and self.cfg.password is not None:
                await self._login()
        except BaseException:
            self.close()
            raise
        # Set up: from here on transactions go through our reader (see replies.py).
        transport = cast(asyncio.Transport, self._smtp.transport)
        self._replies = ReplyReader(transport)
        transport.set_protocol(self._replies)
        self._pipelining = self._smtp.supports_extension("pipelining")

    async def _ehlo(self) -> None:
        try:
            await self._smtp.ehlo()
        except aiosmtplib.SMTPResponseException as exc:
            raise self._error(EHLO, exc, code=exc.code, session=True) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise self._error(EHLO, exc, session=True, transient=True) from exc

    async def _starttls(self) -> None:
        if not self._smtp.supports_extension("starttls"):
            raise self._error(
                TLS,
                Exception("STARTTLS is required but not offered"),
                session=True,
                transient=False,
            )
        try:
            await self._smtp.starttls()
        except aiosmtplib.SMTPResponseException as exc:
            raise self._error(TLS, exc, code=exc.code, session=True) from exc
        except ssl.SSLCertVerificationError as exc:
            raise self._error(TLS, exc, session=True, transient=False) from exc
        except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
            cause = _cause(exc)
            permanent = isinstance(cause, ssl.SSLCertVerificationError)
            raise self._error(TLS, cause, session=True, transient=not permanent) from exc
        await self._ehlo()

    async def _login(self) -> None:
        assert self.cfg.username is not None and self.cfg.password is not None
        if self.cfg.tls == "none":  # the config refuses this too; never send a password in clear
            raise self._error(
                AUTH, Exception("refusing AUTH without TLS"), session=True, transient=False
            )
        try:
            await self._smtp.login(self.cfg.username, self.cfg.password.value)
        except aiosmtplib.SMTPResponseException as exc:
            # 535 credentials refused: permanent; 454 temporary failure: transient.
            raise self._error(AUTH, exc, code=exc.code, session=True) from exc
        except aiosmtplib.SMTPException as exc:
            raise self._error(AUTH, exc, session=True, transient=False) from exc

    def close(self) -> None:
        if self._replies is not None:
            self._replies.close()
        else:
            self._smtp.close()

    async def quit(self) -> None:
        """End the session politely; a smarthost that does not answer is just left."""
        if self._replies is None or not self._replies.open:
            self.close()
            return
        try:
            self._replies.write(b"QUIT\r\n")
            await self._replies.read(min(self.cfg.timeout, QUIT_TIMEOUT))
        except ReplyError:
            pass
        finally:
            self._replies.close()

    # --- one transaction ----------------------------------------------------------------

    def _mail_options(self, envelope: Envelope, data: bytes, smtputf8: bool) -> list[str]:
        smtp = self._smtp
        options = []
        limit = smtp.esmtp_extensions.get("size", "")
        if limit.isdigit() and int(limit) and len(data) > int(limit):
            raise self._error(
                MAIL,
                Exception(f"message size {len(data)} exceeds the smarthost's SIZE {limit}"),
                transient=False,
            )
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if high_bytes(envelope.content) or (envelope.body or "").upper() == "8BITMIME":
            if not smtp.supports_extension("8bitmime"):
                raise self._error(
                    MAIL,
                    Exception("8-bit content, but the smarthost does not offer 8BITMIME"),
                    transient=False,
                )
            options.append("BODY=8BITMIME")
        if smtputf8:
            if not smtp.supports_extension("smtputf8"):
                raise self._error(
                    MAIL,
                    Exception("UTF-8 address, but the smarthost does not offer SMTPUTF8"),
                    transient=False,
                )
            options.append("SMTPUTF8")
        if smtp.supports_extension("dsn"):
            if envelope.ret:
                options.append(f"RET={envelope.ret}")
            if envelope.envid:
                options.append(f"ENVID={xtext(envelope.envid)}")
        return options

    def _rcpt_options(self, orig_rcpt: str | None, notify: str | None) -> list[str]:
        if not self._smtp.supports_extension("dsn"):
            return []
        options = []
        if notify:
            options.append(f"NOTIFY={notify}")
        if orig_rcpt:
            addr_type, _, addr = orig_rcpt.partition(";")
            if addr:
                options.append(f"ORCPT={addr_type};{xtext(addr)}")
        return options

    def _check_addresses(self, addresses: list[str]) -> bool:
        """Whether SMTPUTF8 is needed; refuses what SMTP cannot carry at all."""
        for address in addresses:
            try:
                address.encode("utf-8")
                smtp_path(address)
            except (UnicodeEncodeError, ValueError):
                # Bytes that are not UTF-8, or control characters.
                raise self._error(
                    MAIL,
                    Exception(f"address {address!r} cannot be sent over SMTP"),
                    transient=False,
                ) from None
        return not all(a.isascii() for a in addresses)

    async def send(
        self, envelope: Envelope, sender: str, on_accepted: Callable[[str], None] | None = None
    ) -> str:
        """Send one message to all its pending recipients, or to none; the reply.

        `on_accepted(reply)` runs the moment a 250 to the final dot arrives, before this
        task resumes (see ReplyReader.on_next_reply).

        With PIPELINING, MAIL, every RCPT and DATA go out in one write. If the
        smarthost refuses a recipient but still says 354 to DATA, the connection
        is dropped before any text: a transaction without its final dot is never
        delivered (RFC 5321 section 4.1.1.4), so nothing reaches the others.
        """
        data = encode_data(envelope.content)
        addresses = [sender, *(r.address for r in envelope.recipients)]
        smtputf8 = self._check_addresses(addresses) or envelope.smtputf8
        encoding = "utf-8" if smtputf8 else "ascii"
        mail = command_line(
            b"MAIL FROM:", sender, self._mail_options(envelope, data, smtputf8), encoding
        )
        rcpts = [
            command_line(
                b"RCPT TO:", r.address, self._rcpt_options(r.orig_rcpt, r.notify), encoding
            )
            for r in envelope.recipients
        ]
        commands = [(MAIL, mail), *((RCPT, r) for r in rcpts), (DATA, b"DATA\r\n")]
        reader = self._reader
        stage = MAIL
        try:
            if self._pipelining:
                reader.write(b"".join(command for _, command in commands))
                replies = await self._replies_to(commands)
            else:
                replies = await self._one_by_one(commands)
            refusal = _first_refusal(replies)
            if refusal is not None:
                stage, reply = refusal
                if replies[-1][1].code == 354:  # DATA began: end it by hanging up
                    reader.close()
                else:
                    await self._reset()
                raise self._error(stage, Exception(reply.text), code=reply.code)
            stage = END_OF_DATA
            final, cancelled = await self._upload(reader, data, on_accepted)
        except ReplyError as exc:
            # Never let a message we give up on finish its upload: abort, not close.
            dot_out = stage == END_OF_DATA and reader.unsent == 0
            reader.abort()
            detail = str(exc)
            if dot_out:
                detail += " -- message may be sent more than once"
            raise self._error(
                stage, Exception(detail), session=True, transient=True, uncertain=dot_out
            ) from exc
        if cancelled:
            if final.code == 250:
                self.sent += 1
                raise AcceptedWhileCancelled(Accepted(self.cfg.name, str(final)))
            raise asyncio.CancelledError
        if final.code != 250:
            await self._reset()
            raise self._error(END_OF_DATA, Exception(final.text), code=final.code)
        self.sent += 1
        return str(final)

    async def _upload(
        self, reader: ReplyReader, data: bytes, on_accepted: Callable[[str], None] | None
    ) -> tuple[Reply, bool]:
        """Write the message and its final dot; (the final reply, whether cancelled).

        The reply timer starts once the data is in the kernel (drain), so a large
        message's upload does not count against `timeout`; the drain itself gives up
        after `timeout` without progress. Cancelled while the dot is still ours, the
        connection is aborted and the smarthost never sees the dot; once it is out,
        a cancellation waits for the answer (within the timeout) so it is not lost.
        """
        if on_accepted is not None:

            def on_final(reply: Reply) -> None:
                if reply.code == 250:
                    on_accepted(str(reply))

            reader.on_next_reply(on_final)
        try:
            reader.write(data)
            cancelled = False
            try:
                await reader.drain(self.cfg.timeout)
            except asyncio.CancelledError:
                if reader.unsent > 0:  # the dot is still ours: the smarthost never gets it
                    reader.abort()
                    raise
                cancelled = True
            final, late = await outcome_of(reader.read(self.cfg.timeout))
        finally:
            reader.on_next_reply(None)
        return final, cancelled or late

    def abort(self) -> None:
        """Drop the connection at once (see Dispatcher.abort)."""
        if self._replies is not None:
            self._replies.abort()
        else:
            self._smtp.close()

    async def _replies_to(self, commands: list[tuple[str, bytes]]) -> list[tuple[str, Reply]]:
        """The replies to pipelined commands; a hang-up after a refusal still reports it."""
        replies: list[tuple[str, Reply]] = []
        try:
            for stage, _ in commands:
                replies.append((stage, await self._reader.read(self.cfg.timeout)))
        except ReplyError:
            if _first_refusal(replies) is None:
                raise
            self._reader.close()  # e.g. 421 and the server closed: the refusal says why
        return replies

    async def _one_by_one(self, commands: list[tuple[str, bytes]]) -> list[tuple[str, Reply]]:
        """Without PIPELINING: each command waits for its reply; stop at the first refusal."""
        replies = []
        for stage, command in commands:
            self._reader.write(command)
            reply = await self._reader.read(self.cfg.timeout)
            replies.append((stage, reply))
            if reply.code not in _GOOD[stage]:
                break
        return replies

    async def _reset(self) -> None:
        """RSET after a refused transaction so the session can carry the next one."""
        if not self._reader.open:
            return
        try:
            self._reader.write(b"RSET\r\n")
            reply = await self._reader.read(self.cfg.timeout)
        except ReplyError:
            reply = None
        if reply is None or reply.code != 250:
            self._reader.close()


_GOOD = {MAIL: (250,), RCPT: (250, 251), DATA: (354,)}


def _first_refusal(replies: list[tuple[str, Reply]]) -> tuple[str, Reply] | None:
    """The first (stage, reply) that says no, in the order the commands went."""
    for stage, reply in replies:
        if reply.code not in _GOOD[stage]:
            return stage, reply
    return None


def _cause(exc: BaseException) -> BaseException:
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, ssl.SSLError | OSError) else exc
