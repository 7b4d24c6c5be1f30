"""One SMTP session to a smarthost: TLS, AUTH, and an all-or-nothing transaction.

Every failure leaves here as a DeliveryError that says whether trying again can
help (`transient`), whether the smarthost itself is at fault (`session`), and
whether it may have taken the message anyway (`uncertain`).
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPResponse

from rescue.config import SmarthostConfig
from rescue.errors import DeliveryError
from rescue.model import Envelope

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


def reply_text(response: SMTPResponse) -> str:
    return f"{response.code} {' '.join(response.message.split())}"


@dataclass(frozen=True, slots=True)
class Accepted:
    smarthost: str
    reply: str


class Session:
    """An open, authenticated connection that carries many transactions."""

    def __init__(self, cfg: SmarthostConfig) -> None:
        self.cfg = cfg
        self.sent = 0
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
        return self._smtp.is_connected and self.sent < self.cfg.max_messages_per_session

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
        self._smtp.close()

    async def quit(self) -> None:
        try:
            await self._smtp.quit()
        except (aiosmtplib.SMTPException, OSError):
            self._smtp.close()

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
        if _high_bytes(envelope.content):
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

    async def send(self, envelope: Envelope, sender: str) -> str:
        """Send one message to all its pending recipients, or to none; the reply."""
        data = encode_data(envelope.content)
        addresses = [sender, *(r.address for r in envelope.recipients)]
        for address in addresses:
            try:
                address.encode("utf-8")
                smtp_path(address)
            except (UnicodeEncodeError, ValueError):
                # Bytes that are not UTF-8, or control characters: SMTP cannot carry them.
                raise self._error(
                    MAIL,
                    Exception(f"address {address!r} cannot be sent over SMTP"),
                    transient=False,
                ) from None
        smtputf8 = not all(a.isascii() for a in addresses)
        encoding = "utf-8" if smtputf8 else "ascii"
        smtp = self._smtp
        options = self._mail_options(envelope, data, smtputf8)
        stage = MAIL
        try:
            await self._command(b"MAIL", b"FROM:", sender, options, encoding, (250,))
            stage = RCPT
            for rcpt in envelope.recipients:
                options = self._rcpt_options(rcpt.orig_rcpt, rcpt.notify)
                await self._command(b"RCPT", b"TO:", rcpt.address, options, encoding, (250, 251))
            stage = DATA
            start = await smtp.execute_command(b"DATA")
            if start.code != 354:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            stage = END_OF_DATA
            reply = await self._write_data(data)
        except aiosmtplib.SMTPResponseException as exc:
            await self._reset()
            raise self._error(stage, exc, code=exc.code) from exc
        except (aiosmtplib.SMTPTimeoutError, aiosmtplib.SMTPServerDisconnected, OSError) as exc:
            self.close()
            uncertain = stage == END_OF_DATA
            detail = str(exc) or type(exc).__name__
            if uncertain:
                detail += " -- message may be sent more than once"
            raise self._error(
                stage, Exception(detail), session=True, transient=True, uncertain=uncertain
            ) from exc
        self.sent += 1
        return reply

    async def _command(
        self,
        verb: bytes,
        prefix: bytes,
        address: str,
        options: list[str],
        encoding: str,
        good: tuple[int, ...],
    ) -> None:
        """MAIL or RCPT with our own quoting (aiosmtplib's would unquote local parts)."""
        arguments = [prefix + smtp_path(address).encode(encoding)]
        arguments.extend(option.encode("ascii") for option in options)
        response = await self._smtp.execute_command(verb, *arguments)
        if response.code not in good:
            raise aiosmtplib.SMTPResponseException(response.code, response.message)

    async def _write_data(self, data: bytes) -> str:
        protocol = self._smtp.protocol
        if protocol is None:
            raise aiosmtplib.SMTPServerDisconnected("connection lost")
        protocol.write(data)
        response = await protocol.read_response(timeout=self.cfg.timeout)
        if response.code != 250:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        return reply_text(response)

    async def _reset(self) -> None:
        """RSET after a refused transaction so the session can carry the next one."""
        try:
            await self._smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self.close()


_ASCII = bytes(range(0x80))


def _high_bytes(content: bytes) -> bytes:
    """The bytes of `content` above 0x7F (empty for 7-bit content); fast in C."""
    return content.translate(None, _ASCII)


def _cause(exc: BaseException) -> BaseException:
    cause = exc.__cause__ or exc.__context__
    return cause if isinstance(cause, ssl.SSLError | OSError) else exc
