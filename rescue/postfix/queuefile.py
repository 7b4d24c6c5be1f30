"""Read one Postfix queue file into envelope and content, as Postfix itself reads it.

The reading order follows Postfix's queue manager (``qmgr_message.c``) and
``postcat``: pointer records are followed, the content runs from the size
record's data offset to the ``X`` record, and DSN data that cleanup stores as
named attributes counts as the DSN records they stand for. ``format_envelope``
prints what ``postcat -e`` prints, so tests can hold the reader against it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from rescue.errors import QueueFileError
from rescue.model import Envelope, Recipient
from rescue.postfix.records import (
    ATTR_RECORD_TYPES,
    DSN_NOTIFY_NAMES,
    DSN_NOTIFY_NEVER,
    DSN_RET_FULL,
    DSN_RET_HDRS,
    ENVELOPE_TYPES,
    REC_TYPE_ATTR,
    REC_TYPE_CONT,
    REC_TYPE_CTIME,
    REC_TYPE_DONE,
    REC_TYPE_DRCP,
    REC_TYPE_DSN_ENVID,
    REC_TYPE_DSN_NOTIFY,
    REC_TYPE_DSN_ORCPT,
    REC_TYPE_DSN_RET,
    REC_TYPE_END,
    REC_TYPE_FROM,
    REC_TYPE_MESG,
    REC_TYPE_NORM,
    REC_TYPE_ORCP,
    REC_TYPE_RCPT,
    REC_TYPE_SIZE,
    REC_TYPE_TIME,
    REC_TYPE_WARN,
    REC_TYPE_XTRA,
    RECORD_NAMES,
    UNKNOWN_RECORD_NAME,
    RecordError,
    iter_records,
)

# Bits allowed in the size record's queue manager flags (qmgr_user.h
# QMGR_READ_FLAG_USER: "mixed recipient/other" plus DSN notify bits << 1).
_QMGR_FLAGS_ALLOWED = 0x1F
_NO_REASONS: Mapping[str, str] = MappingProxyType({})
_RET_NAMES = {DSN_RET_FULL: "FULL", DSN_RET_HDRS: "HDRS"}
_C_LONG = re.compile(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)")  # what C's atol() reads
_NEWLINE = b"\n"
_NUL = b"\0"
_C_LONG_MAX = 2**63 - 1
_C_LONG_DIGITS = 19


def _text(raw: bytes) -> str:
    """Postfix strings are bytes (UTF-8 with SMTPUTF8); keep any byte round-trippable."""
    return raw.decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class QueueRecipient:
    """One recipient record, pending or done, with the DSN data that preceded it."""

    address: str
    done: bool  # delivered ("D") or canceled ("/"): Postfix will not deliver it again
    orig_rcpt: str | None  # the "original_recipient" (O) record, before aliasing
    dsn_orcpt: str | None  # DSN ORCPT as stored, "rfc822;user@example.com"
    notify: int | None  # DSN NOTIFY bitmask as stored (records.DSN_NOTIFY_*)
    offset: int  # file offset of the recipient record; defer logs refer to it


@dataclass(frozen=True, slots=True)
class QueueFile:
    """A queued message: its envelope records, recipients and content."""

    queue_id: str
    arrival_time: float  # seconds since the epoch, with microseconds
    sender: str  # "" is the null sender
    recipients: tuple[QueueRecipient, ...]  # in file order, done ones included
    envid: str | None  # DSN ENVID
    ret: int | None  # DSN RET: records.DSN_RET_FULL or DSN_RET_HDRS
    attributes: Mapping[str, str]  # named attributes, except per-recipient DSN ones
    content: bytes  # header and body as `postcat -bh` prints them
    # From the size record:
    message_size: int  # as `postqueue -j` shows it: bytes from data_offset to the X record
    content_length: int  # as the queue manager logs it ("size="); differs after milter edits
    data_offset: int  # offset of the first content record
    recipient_count: int  # recipients when cleanup wrote the file
    create_time: int | None = None  # when the queue file was created, if recorded
    raw: bytes = field(default=b"", repr=False, compare=False)  # the file, for format_envelope

    def pending(self) -> tuple[QueueRecipient, ...]:
        """Recipients Postfix still has to deliver."""
        return tuple(rcpt for rcpt in self.recipients if not rcpt.done)

    def envelope(self, reasons: Mapping[str, str] = _NO_REASONS) -> Envelope:
        """The message as the rest of queue-rescue carries it: pending recipients only."""
        recipients = tuple(
            Recipient(
                address=rcpt.address,
                delay_reason=reasons.get(rcpt.address, ""),
                orig_rcpt=rcpt.dsn_orcpt,
                notify=notify_text(rcpt.notify),
            )
            for rcpt in self.pending()
        )
        return Envelope(
            queue_id=self.queue_id,
            sender=self.sender,
            recipients=recipients,
            content=self.content,
            envid=self.envid,
            ret=_RET_NAMES.get(self.ret) if self.ret is not None else None,
        )


def notify_text(mask: int | None) -> str | None:
    """RFC 3461 NOTIFY keywords for a Postfix notify bitmask, in Postfix's order."""
    if mask is None:
        return None
    if mask & DSN_NOTIFY_NEVER:
        return "NEVER"
    return ",".join(name for bit, name in DSN_NOTIFY_NAMES if mask & bit) or None


def read_queue_file(path_or_file: str | Path | BinaryIO, queue_id: str | None = None) -> QueueFile:
    """Read a queue file; raise QueueFileError if it is truncated, corrupt or foreign.

    FileNotFoundError (Postfix delivered the message and removed the file) and
    other OSErrors pass through unchanged.
    """
    if isinstance(path_or_file, str | os.PathLike):
        with open(path_or_file, "rb") as file:
            data = file.read()
        name = os.path.basename(path_or_file)
    else:
        data = path_or_file.read()
        name = os.path.basename(str(getattr(path_or_file, "name", "") or ""))
    qid = queue_id or name or "-"
    try:
        return _parse(bytes(data), qid)
    except RecordError as exc:
        raise QueueFileError(qid, str(exc)) from exc


@dataclass(slots=True)
class _Size:
    data_size: int
    data_offset: int
    recipient_count: int
    content_length: int


def _parse_size(payload: bytes, qid: str) -> _Size:
    """The size record: "%15ld %15ld %15ld %15ld %15ld ..." (rec_type.h)."""
    numbers: list[int] = []
    for word in payload.split():
        if not _C_LONG.fullmatch(word):
            break
        numbers.append(_c_long(word))
    if len(numbers) < 3:  # one number would be a pre-2001 file: not supported
        raise QueueFileError(qid, f"invalid size record {payload[:100]!r}")
    data_size, data_offset, count = numbers[:3]
    flags = numbers[3] if len(numbers) > 3 else 0
    # Files from before Postfix 2.4 have no content length: the queue manager uses data_size.
    content_length = numbers[4] if len(numbers) > 4 and numbers[4] else data_size
    if data_size <= 0 or data_offset <= 0 or count < 0 or content_length < 0:
        raise QueueFileError(qid, f"invalid size record {payload[:100]!r}")
    if flags & ~_QMGR_FLAGS_ALLOWED:
        raise QueueFileError(qid, f"invalid flags in size record {payload[:100]!r}")
    return _Size(data_size, data_offset, count, content_length)


def _split_nameval(payload: bytes) -> tuple[bytes, bytes] | None:
    """Postfix's split_nameval(): "name = value" with blanks trimmed; None if malformed.

    The payload counts up to its first NUL byte, as a C string does.
    """
    text = payload.split(_NUL, 1)[0].lstrip()
    name, eq, value = text.partition(b"=")
    name = name.rstrip()
    if not text or not eq or len(name.split()) > 1:
        return None
    return name, value.strip()


def _c_long(payload: bytes) -> int:
    """What C's atol() makes of the text (glibc clamps to the range of a long)."""
    match = _C_LONG.match(payload)
    if not match:
        return 0
    text = match[1]
    negative = text.startswith(b"-")
    if len(text.lstrip(b"+-").lstrip(b"0")) > _C_LONG_DIGITS:  # int() would be slow or refuse
        return -_C_LONG_MAX - 1 if negative else _C_LONG_MAX
    return max(-_C_LONG_MAX - 1, min(_C_LONG_MAX, int(text)))


def _dsn_notify(payload: bytes) -> int | None:
    """A stored NOTIFY mask; None when malformed, which the queue manager ignores too."""
    if not payload.isdigit():
        return None
    mask = _c_long(payload)
    if mask == DSN_NOTIFY_NEVER or (mask and mask == mask & 0b1110):
        return mask
    return None


class _Envelope:
    """Collects envelope records in reading order, as qmgr_message_read() does."""

    def __init__(self, qid: str) -> None:
        self.qid = qid
        self.size: _Size | None = None
        self.arrival_time: float | None = None
        self.create_time: int | None = None
        self.sender: str | None = None
        self.envid: str | None = None
        self.ret: int | None = None
        self.attributes: dict[str, str] = {}
        self.recipients: list[QueueRecipient] = []
        # DSN data waiting for the next recipient record.
        self.orig_rcpt: str | None = None
        self.dsn_orcpt: str | None = None
        self.notify: int | None = None

    def take(self, rtype: int, payload: bytes, offset: int) -> None:
        if rtype == REC_TYPE_ATTR:
            split = _split_nameval(payload)
            if split is None:
                raise QueueFileError(self.qid, f"offset {offset}: malformed attribute")
            name = _text(split[0])
            mapped = ATTR_RECORD_TYPES.get(name)
            if mapped not in (REC_TYPE_DSN_ORCPT, REC_TYPE_DSN_NOTIFY):
                self.attributes[name] = _text(split[1])
            if mapped is None:
                return
            rtype, payload = mapped, split[1]
        if rtype in (REC_TYPE_RCPT, REC_TYPE_DONE, REC_TYPE_DRCP):
            self.recipients.append(
                QueueRecipient(
                    address=_text(payload),
                    done=rtype != REC_TYPE_RCPT,
                    orig_rcpt=self.orig_rcpt,
                    dsn_orcpt=self.dsn_orcpt,
                    notify=self.notify,
                    offset=offset,
                )
            )
            self.orig_rcpt = self.dsn_orcpt = self.notify = None
        elif rtype == REC_TYPE_ORCP:
            self.orig_rcpt = _text(payload)
        elif rtype == REC_TYPE_DSN_ORCPT:
            self.dsn_orcpt = _text(payload)
        elif rtype == REC_TYPE_DSN_NOTIFY:
            self.notify = _dsn_notify(payload)
        else:
            self._take_message_record(rtype, payload)

    def _take_message_record(self, rtype: int, payload: bytes) -> None:
        # The first of each wins, as in the queue manager.
        if rtype == REC_TYPE_SIZE and self.size is None:
            self.size = _parse_size(payload, self.qid)
        elif rtype == REC_TYPE_TIME and self.arrival_time is None:
            seconds, _, micro = payload.partition(b" ")
            if not seconds.isdigit() or not 0 < _c_long(seconds) < _C_LONG_MAX:
                raise QueueFileError(self.qid, f"invalid arrival time {payload[:40]!r}")
            self.arrival_time = _c_long(seconds) + _c_long(micro) / 1e6
        elif rtype == REC_TYPE_CTIME and self.create_time is None:
            self.create_time = _c_long(payload)
        elif rtype == REC_TYPE_FROM and self.sender is None:
            self.sender = _text(payload)
        elif rtype == REC_TYPE_DSN_ENVID and self.envid is None:
            self.envid = _text(payload)
        elif rtype == REC_TYPE_DSN_RET and self.ret is None and payload.isdigit():
            ret = _c_long(payload)
            self.ret = ret if ret in (DSN_RET_FULL, DSN_RET_HDRS) else None


def _parse(data: bytes, qid: str) -> QueueFile:
    if not data:
        raise QueueFileError(qid, "empty file")
    if data[0] not in ENVELOPE_TYPES:
        raise QueueFileError(qid, "not a Postfix queue file")
    env = _Envelope(qid)
    for offset, rtype, start, end in iter_records(data):
        if rtype == REC_TYPE_MESG:
            break
        if rtype == REC_TYPE_END:
            raise QueueFileError(qid, f"offset {offset}: end record before the content")
        env.take(rtype, data[start:end], offset)
    else:
        raise QueueFileError(qid, "no message content (truncated?)")
    size = env.size
    if size is None:
        raise QueueFileError(qid, "no size record")
    _read_extracted(data, size.data_offset + size.data_size, env)
    if env.arrival_time is None:
        raise QueueFileError(qid, "no arrival time record")
    if env.sender is None:
        raise QueueFileError(qid, "no sender record")
    return QueueFile(
        queue_id=qid,
        arrival_time=env.arrival_time,
        sender=env.sender,
        recipients=tuple(env.recipients),
        envid=env.envid,
        ret=env.ret,
        attributes=MappingProxyType(env.attributes),
        content=_read_content(data, size.data_offset, qid),
        message_size=size.data_size,
        content_length=size.content_length,
        data_offset=size.data_offset,
        recipient_count=size.recipient_count,
        create_time=env.create_time,
        raw=data,
    )


def _read_extracted(data: bytes, xtra_offset: int, env: _Envelope) -> None:
    """The records after the content: from the X record to the END record."""
    if xtra_offset >= len(data):
        raise QueueFileError(env.qid, "size record points past the end of the file")
    records = iter_records(data, xtra_offset)
    first = next(records, None)
    if first is None or first[0] != xtra_offset or first[1] != REC_TYPE_XTRA:
        raise QueueFileError(env.qid, "size record does not lead to the end of the content")
    for offset, rtype, start, end in records:
        if rtype == REC_TYPE_END:
            return
        env.take(rtype, data[start:end], offset)
    raise QueueFileError(env.qid, "no end record (truncated?)")


def _read_content(data: bytes, data_offset: int, qid: str) -> bytes:
    """Header and body: each N record is a line, L records are pieces of a longer one."""
    lines: list[bytes] = []
    append = lines.append
    # The common case inline, a record at a time (a flush reads every message): N records
    # with a one-byte length. Anything else (an L piece, a pointer, padding, the end)
    # goes on below, record by record, where iter_records checks everything.
    size, pos = len(data), data_offset
    while pos + 2 <= size and data[pos] == REC_TYPE_NORM and data[pos + 1] < 0x80:
        end = pos + 2 + data[pos + 1]
        if end > size:
            break
        append(data[pos + 2 : end])
        pos = end
    pieces: list[bytes] = []  # of a long line, until its N record
    for offset, rtype, start, end in iter_records(data, pos):
        if rtype == REC_TYPE_NORM:
            if pieces:
                pieces.append(data[start:end])
                append(b"".join(pieces))
                pieces.clear()
            else:
                append(data[start:end])
        elif rtype == REC_TYPE_CONT:
            pieces.append(data[start:end])
        elif rtype == REC_TYPE_XTRA:
            if pieces:  # postcat ends a last, unterminated piece with a newline
                append(b"".join(pieces))
            return b"\n".join(lines) + _NEWLINE if lines else b""
        else:
            raise QueueFileError(qid, f"offset {offset}: record type {rtype} inside the content")
    raise QueueFileError(qid, "content not terminated (truncated?)")


def format_envelope(qf: QueueFile, label: str | None = None) -> str:
    """The envelope as `postcat -e` prints it; ``label`` is the path postcat shows.

    `postcat -q ID` shows the path relative to the queue directory, e.g.
    ``deferred/A/A91EE210857``; the default is the queue id. Times are printed
    in the local time zone, as postcat does. Bytes that are not UTF-8 come out
    as surrogate escapes: ``.encode("utf-8", "surrogateescape")`` gives
    postcat's bytes back.

    Not reproduced: postcat's warnings (stderr), a malformed attribute (postcat
    skips it with a warning; the reader refuses such a file), and a time that
    the C library cannot convert (printed here as "(time out of range)").
    """
    label = qf.queue_id if label is None else label
    data = qf.raw
    out = [f"*** ENVELOPE RECORDS {label} ***\n"]
    for _, rtype, start, end in iter_records(data):
        if rtype == REC_TYPE_MESG:
            break
        out.append(_format_record(rtype, data[start:end]))
    out.append(f"*** MESSAGE CONTENTS {label} ***\n")
    out.append(f"*** HEADER EXTRACTED {label} ***\n")
    records = iter_records(data, qf.data_offset + qf.message_size)
    next(records)  # the X record, checked when the file was read
    for _, rtype, start, end in records:
        if rtype == REC_TYPE_END:
            break
        out.append(_format_record(rtype, data[start:end]))
    out.append(f"*** MESSAGE FILE END {label} ***\n")
    return "".join(out)


def _asctime(payload: bytes) -> str:
    try:
        return time.asctime(time.localtime(_c_long(payload))) + "\n"
    except (OverflowError, OSError, ValueError):
        return "(time out of range)\n"  # postcat's asctime() would fail here too


def _format_record(rtype: int, payload: bytes) -> str:
    """One envelope record as postcat prints it (the switch in postcat.c)."""
    if rtype == REC_TYPE_TIME:
        return "message_arrival_time: " + _asctime(payload)
    if rtype == REC_TYPE_WARN:
        return "warning_message_time: " + _asctime(payload)
    if rtype == REC_TYPE_CONT:  # in the envelope this byte means content_filter
        return f"{RECORD_NAMES[rtype]}: {_text(payload)}\n"
    if rtype == REC_TYPE_NORM:
        return _text(payload) + "\n"
    if rtype == REC_TYPE_ATTR:
        split = _split_nameval(payload)
        if split is None:
            return ""  # postcat warns on stderr; the reader refuses such files anyway
        attr_name, value = split
        if attr_name == b"create_time":
            return "create_time: " + _asctime(value)
        return f"{RECORD_NAMES[rtype]}: {_text(attr_name)}={_text(value)}\n"
    name = RECORD_NAMES.get(rtype, UNKNOWN_RECORD_NAME)
    text = _text(payload.split(_NUL, 1)[0])  # printed with %s: stops at a NUL byte
    return f"{name}: {text}\n"
