"""The live answer: ask the provider's MX about one stuck sender and recipient, send nothing.

EHLO, MAIL FROM, RCPT TO, then RSET and QUIT: never DATA. STARTTLS when offered (without
checking the certificate, as Postfix's opportunistic TLS does), so the provider sees
what Postfix's deliveries look like.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiosmtplib

from rescue.diagnose.result import Result, error, fail, ok

CHECK = "probe"


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    provider: str
    host: str  # the name Postfix gave the peer
    address: str  # the address Postfix last talked to
    sender: str  # a stuck envelope sender ("" the null sender)
    recipient: str  # a stuck recipient


def _said(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {' '.join(exc.message.split())}"


async def _session(target: ProbeTarget, port: int, helo: str, timeout: float) -> Result:
    where = f"{target.host}[{target.address}]:{port}"
    ask = f"MAIL FROM:<{target.sender}> RCPT TO:<{target.recipient}>"
    client = aiosmtplib.SMTP(
        hostname=target.address,
        port=port,
        local_hostname=helo or None,
        timeout=timeout,
        start_tls=False,
        validate_certs=False,
    )
    stage = "connect"
    try:
        await client.connect()
        stage = "EHLO"
        await client.ehlo()
        if client.supports_extension("starttls"):
            stage = "STARTTLS"
            await client.starttls(validate_certs=False)
            await client.ehlo()
        stage = "MAIL FROM"
        await client.mail(target.sender)
        stage = "RCPT TO"
        reply = await client.rcpt(target.recipient)
    except aiosmtplib.SMTPResponseException as exc:
        return fail(
            CHECK,
            target.provider,
            f"{where} {ask}: refused at {stage}: {_said(exc)}",
            "See the findings that explain this reply; probe again after fixing them.",
        )
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return error(CHECK, target.provider, f"{where}: no answer at {stage}: {exc}")
    finally:
        await _leave(client)
    return ok(CHECK, target.provider, f"{where} {ask}: accepted ({reply.code} {reply.message})")


async def _leave(client: aiosmtplib.SMTP) -> None:
    """RSET and QUIT when the server still listens; close in any case."""
    if not client.is_connected:
        return
    try:
        await client.rset()
        await client.quit()
    except (aiosmtplib.SMTPException, OSError, TimeoutError):
        client.close()


async def probe(target: ProbeTarget, *, port: int, helo: str, timeout: float) -> Result:
    """The provider's live answer to MAIL FROM and RCPT TO: ok when both are accepted."""
    try:
        return await asyncio.wait_for(_session(target, port, helo, timeout), timeout * 4)
    except TimeoutError:
        return error(CHECK, target.provider, f"{target.address}:{port}: no answer in time")
