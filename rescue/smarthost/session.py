"""One SMTP session to a smarthost: TLS, AUTH, and an all-or-nothing transaction.

Every failure leaves here as a DeliveryError that says whether trying again can
help (`transient`), whether the smarthost itself is at fault (`session`), and
whether it may have taken the message anyway (`uncertain`).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from dataclasses import dataclass
from typing import cast

import aiosmtplib

from rescue.aio import outcome_of
from rescue.config import SmarthostConfig
from rescue.errors import DeliveryError
from rescue.model import Envelope
from rescue.smarthost.replies import Reply, ReplyError, ReplyReader

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

_LEADING_DOT = re.compile(rb"(?m)^\.")


class SessionError(DeliveryError):
    """The smarthost or the connection failed, not just this message."""


def tls_context(cfg: SmarthostConfig) -> ssl.SSLContext:
    """Certificates are verified; `ca_file` adds a private CA to the system's."""
    context = ssl.create_default_context()
    if cfg.ca_file is not None:
        context.load_verify_locations(cafile=str(cfg.ca_file))
    return context


def encode_data(content: bytes) -> bytes:
    """Queued content as DATA: CRLF line ends, dot-stuffed, with the final dot.

    Postfix stores lines without their CRLF; anything else in a line (a bare CR,
    8-bit bytes) is passed on exactly as stored.
    """
    if content and not content.endswith(b"\n"):
        content += b"\n"
    return _LEADING_DOT.sub(b"..", content).replace(b"\n", b"\r\n") + b".\r\n"


def xtext(value: str) -> str:
    """RFC 3461 section 4 xtext: '+', '=' and bytes outside 33..126 become +HH."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


# RFC 5321 section 4.1.2: atext, plus UTF-8 for SMTPUTF8 (RFC 6531 section 3.3).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def smtp_path(address: str) -> str:
    """An address as an SMTP path: <>, <local@domain>, or <"quoted local"@domain>.

    Postfix keeps addresses unquoted (its internal form); like Postfix's own
    client, quote the local part when it is not a dot-atom.
    """
    if not address:
        return "<>"
    if _CONTROL.search(address):
        raise ValueError(f"address {address!r} contains control characters")
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if not all(_ATOM.fullmatch(part) for part in local.split(".")):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"<{local}@{domain}>" if at else f"<{local}>"


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
        if _high_bytes(envelope.content) or (envelope.body or "").upper() == "8BITMIME":
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

    async def send(self, envelope: Envelope, sender: str) -> str:
        """Send one message to all its pending recipients, or to none; the reply.

        With PIPELINING, MAIL, every RCPT and DATA go out in one write. If the
        smarthost refuses a recipient but still says 354 to DATA, the connection
        is dropped before any text: a transaction without its final dot is never
        delivered (RFC 5321 section 4.1.1.4), so nothing reaches the others.
        """
        data = encode_data(envelope.content)
        addresses = [sender, *(r.address for r in envelope.recipients)]
        smtputf8 = self._check_addresses(addresses) or envelope.smtputf8
        encoding = "utf-8" if smtputf8 else "ascii"
        mail = _line(b"MAIL FROM:", sender, self._mail_options(envelope, data, smtputf8), encoding)
        rcpts = [
            _line(b"RCPT TO:", r.address, self._rcpt_options(r.orig_rcpt, r.notify), encoding)
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
            reader.write(data)
            # Once the final dot is out the smarthost may take the message: a cancellation
            # now waits for its answer (within the timeout) so that it is not lost.
            final, cancelled = await outcome_of(reader.read(self.cfg.timeout))
        except ReplyError as exc:
            reader.close()
            uncertain = stage == END_OF_DATA
            detail = str(exc)
            if uncertain:
                detail += " -- message may be sent more than once"
            raise self._error(
                stage, Exception(detail), session=True, transient=True, uncertain=uncertain
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


def _line(verb: bytes, address: str, options: list[str], encoding: str) -> bytes:
    """MAIL or RCPT with our own quoting (aiosmtplib's would unquote local parts)."""
    words = [verb + smtp_path(address).encode(encoding), *(o.encode("ascii") for o in options)]
    return b" ".join(words) + b"\r\n"


_GOOD = {MAIL: (250,), RCPT: (250, 251), DATA: (354,)}


def _first_refusal(replies: list[tuple[str, Reply]]) -> tuple[str, Reply] | None:
    """The first (stage, reply) that says no, in the order the commands went."""
    for stage, reply in replies:
        if reply.code not in _GOOD[stage]:
            return stage, reply
    return None


_ASCII = bytes(range(0x80))


def _high_bytes(content: bytes) -> bytes:
    """The bytes of `content` above 0x7F (empty for 7-bit content); fast in C."""
    return content.translate(None, _ASCII)


def _cause(exc: BaseException) -> BaseException:
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, ssl.SSLError | OSError) else exc
