"""One deferred message from its queue file and defer log, exactly as showq lists it (pure).

``postqueue -j`` is showq's listing (``src/showq/showq.c``, ``showq_report``):
the first size record's content size (else the file size), the first arrival
time (else the file's mtime), the sender, then every entry of the defer log
(address and reason, in file order), then each pending recipient record (read
in order, pointers followed, the content skipped) whose address the log did
not name, with no reason. Addresses pass through ``quote_822_local`` and
``printable``; the null sender is listed as ``empty_address_recipient``.

This module reproduces that for the common case only: anything where showq's
answer would take more than copying (an address that needs quoting, a byte
outside printable ASCII, a damaged record, more log entries than showq's
duplicate filter holds) raises NotAsShowq, and the caller asks showq itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

from rescue.errors import RescueError
from rescue.postfix.records import (
    REC_TYPE_END,
    REC_TYPE_FROM,
    REC_TYPE_MESG,
    REC_TYPE_PTR,
    REC_TYPE_RCPT,
    REC_TYPE_SIZE,
    REC_TYPE_TIME,
    RecordError,
    pointer_target,
    read_record,
)

DEFERRED = "deferred"
# mail_queue.h: MAIL_QUEUE_STAT_READY (the owner's rwx: the file is complete) and
# MAIL_QUEUE_STAT_EXPIRE (group x: `postsuper -e` asked for it to be returned).
STAT_READY = 0o700
STAT_EXPIRE = 0o010

# An address showq prints as it is: quote_822_local leaves a dot-atom local part
# alone, printable() leaves printable ASCII alone. Anything else goes to showq.
_ATOM = rb"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rb"%s(?:\.%s)*(?:@[\x21-\x3f\x41-\x7e]*)?" % (_ATOM, _ATOM))
# What a defer log holds when every line is printable ASCII (printable() keeps it):
# deleting these bytes leaves nothing.
_PLAIN_LOG_BYTES = bytes(b for b in range(256) if 0x20 <= b <= 0x7E or b == ord("\n"))
# showq's check of the size record: digits and spaces only (then atol()).
_SIZE = re.compile(rb"[0-9 ]*")
# The arrival time record: "seconds microseconds" (atol() reads the seconds).
_TIME = re.compile(rb" *([0-9]{1,18})(?: [0-9]*)?")
_MAX_DIGITS = 18
# What bounce_log.c gives an entry without them (rescue.postfix.deferlog's DEFAULT_*;
# copied: the helper processes that read the files load no more than they need).
DEFAULT_REASON = "(description unavailable)"
DEFAULT_RECIPIENT = "(recipient address unavailable)"
_R = ord("r")
_LT = ord("<")


class NotAsShowq(RescueError):
    """This message (or queue) is not read here the way showq reads it: ask showq."""


class ShowqParams(NamedTuple):
    """The main.cf parameters showq's listing of the deferred queue depends on."""

    empty_address: str = "MAILER-DAEMON"  # empty_address_recipient
    duplicate_filter_limit: int = 1000  # 0: no limit


class FileFacts(NamedTuple):
    """What lstat() says of a queue file (showq uses these when records do not).

    A named tuple: one is made per queued message.
    """

    size: int
    mtime: int
    mode: int


def plain_address(raw: bytes) -> str:
    """The address as showq prints it, if that is the address itself; else NotAsShowq."""
    if _PLAIN_ADDRESS.fullmatch(raw) is None:
        raise NotAsShowq(f"address {raw[:80]!r} is quoted or made printable by showq")
    return raw.decode("ascii")


def _size(payload: bytes) -> int:
    if _SIZE.fullmatch(payload) is None:
        raise NotAsShowq(f"malformed size record {payload[:40]!r}")
    words = payload.split()
    if words and len(words[0]) > _MAX_DIGITS:
        raise NotAsShowq("size record out of range")
    return int(words[0]) if words else 0


def _arrival(payload: bytes) -> int:
    found = _TIME.fullmatch(payload)
    if found is None:
        raise NotAsShowq(f"malformed arrival time record {payload[:40]!r}")
    return int(found.group(1))


class _Envelope:
    """What the records said, while they are read."""

    __slots__ = ("arrival", "recipients", "sender", "size")

    def __init__(self) -> None:
        self.arrival = 0
        self.size: int | None = None
        self.sender: bytes | None = None
        self.recipients: list[bytes] = []


# How much of a queue file is read at a time: the envelope of most messages, whole.
CHUNK = 1 << 16
# rec_goto() gives up after this many jumps back (record.c REVERSE_JUMP_LIMIT).
_REVERSE_JUMP_LIMIT = 10000
# The records showq looks at (rec_get() follows pointers itself); it passes over the rest.
_NOTED = frozenset(
    (REC_TYPE_TIME, REC_TYPE_SIZE, REC_TYPE_FROM, REC_TYPE_RCPT, REC_TYPE_MESG, REC_TYPE_PTR)
)


class _Window:
    """The part of a queue file at hand; reads another part when a record is not in it."""

    def __init__(self, read_at: Callable[[int, int], bytes], file_size: int) -> None:
        self._read_at = read_at
        self.size = file_size
        self.buf = b""
        self.base = 0
        self._window = CHUNK
        self._whole = False
        self._jumped_to = 0
        self._reverse_jumps = 0

    def record(self, pos: int) -> tuple[int, int, int]:
        """The record at file offset `pos`: type, payload start and end in `buf`."""
        while True:
            rel = pos - self.base
            if not 0 <= rel < len(self.buf):
                self._load(pos)
                continue
            try:
                return read_record(self.buf, rel)
            except RecordError as exc:
                if self._whole or self.base + len(self.buf) >= self.size:
                    raise NotAsShowq(f"unreadable record: {exc}") from None
                if self.base == pos:
                    self._window *= 2  # one record longer than the window
                self._load(pos)

    def _load(self, pos: int) -> None:
        data = self._read_at(pos, self._window)
        if not data:
            raise NotAsShowq("the queue file ends before its size said")
        # Less than asked for: the rest of the file is at hand, there is no more to read.
        self._whole = len(data) < self._window
        self.buf, self.base = data, pos

    def jump(self, payload: bytes, pos: int) -> int | None:
        """Where a pointer record at `pos` leads (rec_goto); None for a dummy."""
        try:
            target = pointer_target(payload, pos)
        except RecordError as exc:
            raise NotAsShowq(f"unreadable record: {exc}") from None
        if target == 0:  # cleanup leaves these for recipients added later
            return None
        if target <= self._jumped_to:
            self._reverse_jumps += 1
            if self._reverse_jumps > _REVERSE_JUMP_LIMIT:
                raise NotAsShowq("pointer records that loop")
        self._jumped_to = target
        return target


def scan_envelope(
    read_at: Callable[[int, int], bytes], file_size: int, first: bytes = b""
) -> _Envelope:
    """Sender, recipient records, arrival time and content size, read as showq reads them.

    `read_at(offset, n)` returns up to `n` bytes of the queue file from `offset`, `first`
    is what the caller read from its start already (most often the whole file); the
    content is skipped, as showq seeks over it, so a large message is not read whole.
    """
    if len(first) == file_size:
        return _scan_whole(first)
    found = _Envelope()
    window = _Window(read_at, file_size)
    window.buf = buf = first
    base, limit = 0, len(first)
    pos = 0
    while pos < file_size:
        # Most records are short: their length is one byte (read_record does the rest).
        rel = pos - base
        length = buf[rel + 1] if 0 <= rel < limit - 1 else 0x80
        if length < 0x80 and rel + 2 + length <= limit:
            rtype, start, end = buf[rel], rel + 2, rel + 2 + length
        else:
            rtype, start, end = window.record(pos)
            buf, base = window.buf, window.base
            limit = len(buf)
        at, pos = pos, base + end
        if rtype not in _NOTED:
            if rtype == REC_TYPE_END:
                break
            continue
        if rtype == REC_TYPE_RCPT:
            if found.sender is None:
                raise NotAsShowq("recipient before the sender")
            found.recipients.append(buf[start:end])
        elif rtype == REC_TYPE_PTR:
            target = window.jump(buf[start:end], at)
            if target is not None:
                pos = target
        else:
            pos += _take(found, rtype, buf[start:end])
    if found.sender is None:
        raise NotAsShowq("no sender record")
    return found


def log_entries(data: bytes) -> list[tuple[str, str]]:
    """(recipient, reason) of each entry of a defer log of printable ASCII lines.

    What rescue.postfix.deferlog.parse_defer_log reads (Postfix's bounce_log.c) of
    such a log, but only these two fields: a defer log per message is read, and a
    large queue has many.
    """
    entries = []
    recipient = reason = b""
    in_entry = False
    for line in data.split(b"\n"):
        if not line:
            if in_entry:
                entries.append(_entry(recipient, reason))
                recipient = reason = b""
                in_entry = False
            continue
        in_entry = True
        if line[0] == _R:  # "recipient = ..." or "reason = ..." (the name alone, then "=")
            name, eq, value = line.partition(b"=")
            if eq:
                name = name.rstrip()
                if name == b"recipient":
                    recipient = value.strip()
                elif name == b"reason":
                    reason = value.strip()
        elif line[0] == _LT and b">: " in line:  # the old style "<recipient>: reason"
            recipient, _, reason = line[1:].partition(b">: ")
            reason = reason.lstrip()
    if in_entry:
        entries.append(_entry(recipient, reason))
    return entries


def _entry(recipient: bytes, reason: bytes) -> tuple[str, str]:
    return (recipient.decode() or DEFAULT_RECIPIENT, reason.decode() or DEFAULT_REASON)


# A message as showq lists it, in plain values (a helper process sends these back):
# queue id, arrival time, size, sender, forced to expire, (address, delay reason)s.
ListedRow = tuple[str, int, int, str, bool, tuple[tuple[str, str], ...]]


def _scan_whole(data: bytes) -> _Envelope:
    """scan_envelope of a queue file read whole (most are): the same, with less to do."""
    found = _Envelope()
    recipients = found.recipients
    size = len(data)
    pos = 0
    jumps: _Window | None = None  # pointer bookkeeping, for the rare file that has any
    while pos < size:
        if pos + 1 < size and data[pos + 1] < 0x80:
            rtype, start = data[pos], pos + 2
            end = start + data[pos + 1]
            if end > size:
                raise NotAsShowq("truncated record")
        else:
            try:
                rtype, start, end = read_record(data, pos)
            except RecordError as exc:
                raise NotAsShowq(f"unreadable record: {exc}") from None
        if rtype not in _NOTED:
            if rtype == REC_TYPE_END:
                break
            pos = end
        elif rtype == REC_TYPE_RCPT:
            if found.sender is None:
                raise NotAsShowq("recipient before the sender")
            recipients.append(data[start:end])
            pos = end
        elif rtype == REC_TYPE_PTR:
            jumps = jumps or _Window(_no_more, size)
            target = jumps.jump(data[start:end], pos)
            pos = end if target is None else target
        else:
            pos = end + _take(found, rtype, data[start:end])
    if found.sender is None:
        raise NotAsShowq("no sender record")
    return found


def _no_more(pos: int, n: int) -> bytes:
    return b""


def _take(found: _Envelope, rtype: int, payload: bytes) -> int:
    """Note one record as showq does; the number of bytes to skip after it (the content)."""
    if rtype == REC_TYPE_TIME:
        if found.arrival == 0:
            found.arrival = _arrival(payload)
    elif rtype == REC_TYPE_SIZE:
        if found.size is None:
            found.size = _size(payload)
    elif rtype == REC_TYPE_FROM:
        if found.sender is not None:
            raise NotAsShowq("duplicate sender record")
        found.sender = payload
    elif rtype == REC_TYPE_MESG:
        if found.size is None:
            raise NotAsShowq("content before the size record")
        return found.size  # showq seeks over the content
    return 0


def deferred_row(
    queue_id: str,
    read_at: Callable[[int, int], bytes],
    facts: FileFacts,
    defer_log: bytes | None,
    params: ShowqParams,
    first: bytes = b"",
) -> ListedRow:
    """The message as `postqueue -j` lists it (before rescue.postfix.listing's parsing);
    `first`: the start of the queue file, if read already (see scan_envelope)."""
    env = scan_envelope(read_at, facts.size, first)
    assert env.sender is not None  # scan_envelope's promise
    sender = plain_address(env.sender or params.empty_address.encode())
    listed: list[tuple[str, str]] = []
    named: set[str] = set()
    if defer_log is not None:
        if defer_log.translate(None, _PLAIN_LOG_BYTES):
            raise NotAsShowq("defer log with bytes that are not printable ASCII")
        for recipient, reason in log_entries(defer_log):
            listed.append((recipient, reason))
            named.add(recipient)
        limit = params.duplicate_filter_limit
        if limit and len(named) > limit:
            raise NotAsShowq("more logged recipients than showq's duplicate filter holds")
    for raw in env.recipients:
        address = plain_address(raw) if raw else ""
        if not address:
            raise NotAsShowq("empty recipient address")
        if address not in named:
            listed.append((address, ""))
    return (
        queue_id,
        env.arrival if env.arrival > 0 else facts.mtime,
        env.size if env.size is not None else facts.size,
        sender,
        bool(facts.mode & STAT_EXPIRE),
        tuple(listed),
    )
