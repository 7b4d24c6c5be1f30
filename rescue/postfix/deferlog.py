"""Read a Postfix defer log: why each recipient of one queued message was deferred.

A defer log (``QUEUE_DIR/defer/H/QUEUEID``) holds one entry per recipient:
blank-line separated blocks of ``name=value`` lines, preceded in files that
Postfix writes by an old-style ``<recipient>: reason`` line. Parsing follows
Postfix's own reader (``src/global/bounce_log.c``), including its cleaning of
unprintable characters to ``?`` and its defaults for missing fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Defaults bounce_log.c gives a defer log entry that lacks these fields.
DEFAULT_STATUS = "4.0.0"
DEFAULT_ACTION = "delayed"
DEFAULT_REASON = "(description unavailable)"
DEFAULT_RECIPIENT = "(recipient address unavailable)"

# printable(): control characters and bytes that are not UTF-8 become "?".
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\udc80-\udcff]")
_DSN_NOTIFY_ANY = 0b1110  # SUCCESS | FAILURE | DELAY (dsn_mask.h)
_DSN_NOTIFY_NEVER = 0b0001
_MAX_DIGITS = 18


@dataclass(frozen=True, slots=True)
class DeferEntry:
    """One recipient's entry in a defer log."""

    recipient: str
    offset: int | None  # file offset of the recipient record in the queue file
    dsn_orig_rcpt: str | None  # DSN ORCPT, "rfc822;user@example.com"
    status: str  # enhanced status code, "4.7.1"
    action: str  # "delayed"
    diag_type: str | None  # "smtp" for a remote reply
    diag_text: str | None  # the remote reply, "450 4.7.1 Try again later"
    mta_type: str | None  # "dns"
    mta_mname: str | None  # the host that answered
    reason: str  # the delay reason `postqueue -j` shows
    orig_rcpt: str | None = None  # "original_recipient", when Postfix wrote it
    notify: int | None = None  # DSN NOTIFY bitmask, when one was requested


def read_defer_log(path: Path) -> dict[str, DeferEntry]:
    """Entries by recipient address (a later entry for the same address wins).

    FileNotFoundError passes through: a message that was never tried, or was
    delivered meanwhile, has no defer log.
    """
    return {entry.recipient: entry for entry in parse_defer_log(Path(path).read_bytes())}


def delay_reasons(entries: dict[str, DeferEntry]) -> dict[str, str]:
    """Recipient address to delay reason, as QueueFile.envelope() takes them."""
    return {address: entry.reason for address, entry in entries.items()}


def parse_defer_log(data: bytes) -> list[DeferEntry]:
    """All entries in file order."""
    entries = []
    block: list[str] = []
    for raw_line in data.split(b"\n"):
        line = _UNPRINTABLE.sub("?", raw_line.decode("utf-8", "surrogateescape"))
        if line:
            block.append(line)
        elif block:
            entries.append(_entry(block))
            block = []
    if block:  # Postfix drops an entry cut off before its blank line; we keep what is there
        entries.append(_entry(block))
    return entries


def _entry(lines: list[str]) -> DeferEntry:
    fields: dict[str, str] = {}
    for line in lines:
        if line[0].isascii() and line[0].isalnum():
            name, eq, value = line.partition("=")
            if eq and name.strip() and len(name.split()) == 1:
                fields[name.strip()] = value.strip()
        elif line.startswith("<") and ">: " in line:  # old style "<recipient>: reason"
            recipient, _, reason = line[1:].partition(">: ")
            fields["recipient"] = recipient
            fields["reason"] = reason.lstrip()
    return DeferEntry(
        recipient=fields.get("recipient") or DEFAULT_RECIPIENT,
        offset=_positive(fields.get("offset")),
        dsn_orig_rcpt=fields.get("dsn_orig_rcpt"),
        status=fields.get("status") or DEFAULT_STATUS,
        action=fields.get("action") or DEFAULT_ACTION,
        diag_type=fields.get("diag_type"),
        diag_text=fields.get("diag_text"),
        mta_type=fields.get("mta_type"),
        mta_mname=fields.get("mta_mname"),
        reason=fields.get("reason") or DEFAULT_REASON,
        orig_rcpt=fields.get("original_recipient"),
        notify=_notify(fields.get("notify_flags")),
    )


def _positive(text: str | None) -> int | None:
    """A positive decimal number; None for anything else (and for absurdly long ones)."""
    if not text or not text.isascii() or not text.isdigit() or len(text) > _MAX_DIGITS:
        return None
    return int(text) or None


def _notify(text: str | None) -> int | None:
    mask = _positive(text)
    if mask is None or not (mask == _DSN_NOTIFY_NEVER or mask == mask & _DSN_NOTIFY_ANY):
        return None
    return mask
