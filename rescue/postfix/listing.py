"""Parse `postqueue -j` output: one JSON object per queued message per line."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from rescue.model import QueuedMessage, Recipient

# showq lists the null sender under this name; the queue file (read before sending)
# has the authoritative envelope sender.
SHOWQ_NULL_SENDER = "MAILER-DAEMON"


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line of the listing that could not be read; reported, never guessed at."""

    number: int
    problem: str
    queue_id: str | None = None


def parse_line(line: bytes | str) -> QueuedMessage:
    """One listing line as a message; raises ValueError with a reason on bad input."""
    if isinstance(line, bytes):
        # Postfix writes addresses as they came (SMTPUTF8, or broken 8-bit bytes).
        line = line.decode("utf-8", errors="surrogateescape")
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    queue_id = obj.get("queue_id")
    if not isinstance(queue_id, str) or not queue_id.isalnum():
        raise ValueError(f"bad queue_id {queue_id!r}")
    recipients = obj.get("recipients")
    if not isinstance(recipients, list):
        raise ValueError(f"{queue_id}: recipients missing")
    parsed = []
    for item in recipients:
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            raise ValueError(f"{queue_id}: bad recipient {item!r}")
        parsed.append((item["address"], str(item.get("delay_reason") or "")))
    sender = obj.get("sender")
    if not isinstance(sender, str):
        raise ValueError(f"{queue_id}: sender missing")
    arrival = obj.get("arrival_time")
    size = obj.get("message_size")
    if not isinstance(arrival, int) or not isinstance(size, int):
        raise ValueError(f"{queue_id}: arrival_time or message_size missing")
    return message_of(
        queue_id=queue_id,
        queue_name=str(obj.get("queue_name", "")),
        arrival_time=arrival,
        size=size,
        sender=sender,
        recipients=parsed,
        forced_expire=bool(obj.get("forced_expire", False)),
    )


def message_of(
    *,
    queue_id: str,
    queue_name: str,
    arrival_time: int,
    size: int,
    sender: str,
    recipients: Iterable[tuple[str, str]],
    forced_expire: bool,
) -> QueuedMessage:
    """The message showq listed with these values: (address, delay reason) per recipient.

    Also for a listing read from the queue files (rescue.postfix.deferred), so that
    both give the same objects.
    """
    # Thousands of recipients share a handful of reasons: keep one copy of each.
    parsed = tuple(
        Recipient(address=address, delay_reason=sys.intern(reason))
        for address, reason in recipients
    )
    if sender == SHOWQ_NULL_SENDER:
        sender = ""
    return QueuedMessage(
        queue_id=queue_id,
        queue_name=queue_name,
        arrival_time=arrival_time,
        size=size,
        sender=sys.intern(sender),  # a backlog has many messages from few senders
        recipients=parsed,
        forced_expire=forced_expire,
    )


def parse_listing(lines: Iterable[bytes | str]) -> Iterator[QueuedMessage | BadLine]:
    for number, raw in enumerate(lines, 1):
        line = raw.rstrip(b"\r\n") if isinstance(raw, bytes) else raw.rstrip("\r\n")
        if not line:
            continue
        try:
            yield parse_line(line)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the parser's stack; no listing of
            # Postfix's looks like that, so it is a damaged line like any other.
            yield BadLine(number, str(exc) or type(exc).__name__, _guess_id(line))


def _guess_id(line: bytes | str) -> str | None:
    """The queue id of a damaged line if it can still be seen, for the report."""
    text = line.decode("ascii", "replace") if isinstance(line, bytes) else line
    marker = '"queue_id": "'
    start = text.find(marker)
    if start < 0:
        return None
    end = text.find('"', start + len(marker))
    candidate = text[start + len(marker) : end] if end > 0 else ""
    return candidate if candidate.isalnum() else None
