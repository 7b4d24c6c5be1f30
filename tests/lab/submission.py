"""Mail handed to a lab Postfix over SMTP: the envelope, its options, one transaction."""

from __future__ import annotations

import re
import smtplib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tests.lab.errors import PostfixLabError

_QUEUED_AS = re.compile(r"queued as ([0-9A-Za-z]+)")
_BARE_LF = re.compile(rb"(?<!\r)\n")


@dataclass(frozen=True)
class Submission:
    """One message to inject, with its envelope and optional DSN parameters (RFC 3461)."""

    sender: str
    recipients: Sequence[str]
    message: bytes
    dsn_notify: str | None = None  # NOTIFY for every recipient, e.g. "SUCCESS,FAILURE"
    # ORCPT as sent, e.g. "rfc822;a@b.test": one value for every recipient, or per recipient.
    dsn_orcpt: str | Mapping[str, str] | None = None
    envid: str | None = None
    ret: str | None = None  # "FULL" or "HDRS"
    smtputf8: bool | None = None  # None: only when an address is not ASCII

    def mail_options(self) -> list[str]:
        options = []
        if self.wants_smtputf8():
            options.append("SMTPUTF8")
        if not self.message.isascii():
            options.append("BODY=8BITMIME")
        if self.ret is not None:
            options.append(f"RET={self.ret}")
        if self.envid is not None:
            options.append(f"ENVID={self.envid}")
        return options

    def rcpt_options(self, recipient: str) -> list[str]:
        options = []
        if self.dsn_notify is not None:
            options.append(f"NOTIFY={self.dsn_notify}")
        orcpt = self.dsn_orcpt
        if isinstance(orcpt, Mapping):
            orcpt = orcpt.get(recipient)
        if orcpt is not None:
            options.append(f"ORCPT={orcpt}")
        return options

    def wants_smtputf8(self) -> bool:
        if self.smtputf8 is not None:
            return self.smtputf8
        return not all(address.isascii() for address in (self.sender, *self.recipients))


def transaction(client: smtplib.SMTP, submission: Submission) -> str:
    """One MAIL/RCPT/DATA transaction on an open session; the queue id from the reply."""
    if submission.wants_smtputf8():
        client.command_encoding = "utf-8"
    mail = " ".join([f"FROM:<{submission.sender}>", *submission.mail_options()])
    _expect(client, client.docmd("MAIL", mail), submission)
    for recipient in submission.recipients:
        rcpt = " ".join([f"TO:<{recipient}>", *submission.rcpt_options(recipient)])
        _expect(client, client.docmd("RCPT", rcpt), submission)
    code, reply = client.data(_BARE_LF.sub(b"\r\n", submission.message))
    _expect(client, (code, reply), submission)
    found = _QUEUED_AS.search(reply.decode(errors="replace"))
    if found is None:
        raise PostfixLabError(f"no queue id in {reply!r}")
    return found.group(1)


def _expect(client: smtplib.SMTP, answer: tuple[int, bytes], submission: Submission) -> None:
    code, reply = answer
    if not 200 <= code < 300:
        client.rset()
        raise PostfixLabError(
            f"submitting {submission.sender!r} -> {list(submission.recipients)!r}: "
            f"{code} {reply.decode(errors='replace')}"
        )
