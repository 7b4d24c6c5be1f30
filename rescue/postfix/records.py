"""The record layer of Postfix queue files: typed, length-prefixed records.

A record is one type byte, the payload length in 7-bit groups (low-order
group first, high bit set on every byte but the last), then the payload
(Postfix's ``src/global/record.c``). Record types and their printable names
come from ``src/global/rec_type.h`` and ``rec_type.c`` (Postfix 3.7).
"""

from __future__ import annotations

from collections.abc import Iterator

from rescue.errors import RescueError

# Record types (rec_type.h).
REC_TYPE_SIZE = ord("C")  # first record: content size, data offset, counts
REC_TYPE_TIME = ord("T")  # arrival time "seconds microseconds"
REC_TYPE_CTIME = ord("c")  # create time (Postfix >= 2.3 writes an attribute instead)
REC_TYPE_FULL = ord("F")  # sender full name
REC_TYPE_INSP = ord("I")  # content inspector transport
REC_TYPE_FILT = ord("L")  # content filter transport (same byte as REC_TYPE_CONT)
REC_TYPE_FROM = ord("S")  # envelope sender, "" for the null sender
REC_TYPE_DONE = ord("D")  # recipient delivered: qmgr overwrites the R type byte
REC_TYPE_RCPT = ord("R")  # recipient still to do
REC_TYPE_ORCP = ord("O")  # original recipient (before aliasing), precedes R/D
REC_TYPE_DRCP = ord("/")  # canceled recipient (milter delrcpt, duplicate)
REC_TYPE_WARN = ord("W")  # time of the next delay warning
REC_TYPE_ATTR = ord("A")  # named attribute "name=value"
REC_TYPE_KILL = ord("K")  # killed record
REC_TYPE_RDR = ord(">")  # redirect target
REC_TYPE_FLGS = ord("f")  # cleanup processing flags
REC_TYPE_DELAY = ord("d")  # cleanup delay upon arrival
REC_TYPE_MESG = ord("M")  # start of message content
REC_TYPE_CONT = ord("L")  # a piece of a long line, continued by the next text record
REC_TYPE_NORM = ord("N")  # a line (or the last piece of one), newline not stored
REC_TYPE_DTXT = ord("w")  # padding, skipped by every reader
REC_TYPE_XTRA = ord("X")  # end of content, start of the extracted segment
REC_TYPE_RRTO = ord("r")  # return-receipt address from headers
REC_TYPE_ERTO = ord("e")  # errors-to address from headers
REC_TYPE_PRIO = ord("P")  # priority
REC_TYPE_PTR = ord("p")  # pointer: continue reading at the offset in the payload
REC_TYPE_VERP = ord("V")  # VERP delimiters
REC_TYPE_DSN_RET = ord("<")  # DSN RET as a number (see DSN_RET_*)
REC_TYPE_DSN_ENVID = ord("i")  # DSN ENVID
REC_TYPE_DSN_ORCPT = ord("o")  # DSN ORCPT "addrtype;address", precedes R/D
REC_TYPE_DSN_NOTIFY = ord("n")  # DSN NOTIFY as a bitmask (see DSN_NOTIFY_*), precedes R/D
REC_TYPE_MILT_COUNT = ord("m")  # milter header count
REC_TYPE_END = ord("E")  # end of the queue file

# Record types a queue file may start with (REC_TYPE_ENVELOPE, as postcat checks).
ENVELOPE_TYPES = frozenset(b"MCTcFILSDRO/WVA>K<ion")

# Named attributes that Postfix reads as if they were these record types
# (rec_attr_map.c; names from mail_proto.h). Cleanup writes DSN data this way.
ATTR_RECORD_TYPES = {
    "dsn_orig_rcpt": REC_TYPE_DSN_ORCPT,
    "notify_flags": REC_TYPE_DSN_NOTIFY,
    "envelope_id": REC_TYPE_DSN_ENVID,
    "ret_flags": REC_TYPE_DSN_RET,
    "create_time": REC_TYPE_CTIME,
}

# DSN bits (dsn_mask.h); text order as Postfix's dsn_notify_str() prints them.
DSN_NOTIFY_NEVER = 1 << 0
DSN_NOTIFY_SUCCESS = 1 << 1
DSN_NOTIFY_FAILURE = 1 << 2
DSN_NOTIFY_DELAY = 1 << 3
DSN_NOTIFY_NAMES = (
    (DSN_NOTIFY_SUCCESS, "SUCCESS"),
    (DSN_NOTIFY_FAILURE, "FAILURE"),
    (DSN_NOTIFY_DELAY, "DELAY"),
)
DSN_RET_FULL = 1
DSN_RET_HDRS = 2

# Printable names, as rec_type_name() returns them for postcat (rec_type.c).
RECORD_NAMES = {
    REC_TYPE_SIZE: "message_size",
    REC_TYPE_TIME: "message_arrival_time",
    REC_TYPE_CTIME: "queue_file_create_time",
    REC_TYPE_FULL: "sender_fullname",
    REC_TYPE_INSP: "content_inspector",
    REC_TYPE_FILT: "content_filter",  # listed before "unterminated_text": it wins
    REC_TYPE_FROM: "sender",
    REC_TYPE_DONE: "done_recipient",
    REC_TYPE_DRCP: "canceled_recipient",
    REC_TYPE_RCPT: "recipient",
    REC_TYPE_ORCP: "original_recipient",
    REC_TYPE_WARN: "warning_message_time",
    REC_TYPE_ATTR: "named_attribute",
    REC_TYPE_PTR: "pointer_record",
    REC_TYPE_KILL: "killed_record",
    REC_TYPE_MESG: "message_content",
    REC_TYPE_NORM: "regular_text",
    REC_TYPE_DTXT: "padding",
    REC_TYPE_XTRA: "extracted_info",
    REC_TYPE_RRTO: "return_receipt",
    REC_TYPE_ERTO: "errors_to",
    REC_TYPE_PRIO: "priority",
    REC_TYPE_VERP: "verp_delimiters",
    REC_TYPE_END: "message_end",
    REC_TYPE_RDR: "redirect_to",
    REC_TYPE_FLGS: "flags",
    REC_TYPE_DSN_RET: "dsn_return_flags",
    REC_TYPE_DSN_ENVID: "dsn_envelope_id",
    REC_TYPE_DSN_ORCPT: "dsn_original_recipient",
    REC_TYPE_DSN_NOTIFY: "dsn_notify_flags",
}
UNKNOWN_RECORD_NAME = "unknown_record_type"

# record.c refuses a length that needs 32 bits or more of shift: 5 bytes at most.
_LENGTH_SHIFT_LIMIT = 32
_C_SPACE = b" \t\n\v\f\r"  # isspace() in the C locale
_MAX_OFFSET_DIGITS = 18  # more cannot be a file offset (and int() refuses > 4300 digits)


class RecordError(RescueError):
    """A record cannot be read: truncated, bad length, bad or looping pointer."""

    def __init__(self, offset: int, problem: str) -> None:
        self.offset = offset
        self.problem = problem
        super().__init__(f"offset {offset}: {problem}")


def read_record(data: bytes, pos: int) -> tuple[int, int, int]:
    """Return ``(type, payload_start, payload_end)`` of the record at ``pos``."""
    size = len(data)
    if pos + 2 > size:
        raise RecordError(pos, "truncated record header")
    rtype = data[pos]
    byte = data[pos + 1]
    if byte < 0x80:  # the common case: a payload shorter than 128 bytes
        start = pos + 2
        end = start + byte
    else:
        length = byte & 0x7F
        shift = 7
        start = pos + 2
        while True:
            if shift >= _LENGTH_SHIFT_LIMIT:
                raise RecordError(pos, f"too many length bytes, record type {rtype}")
            if start >= size:
                raise RecordError(pos, f"truncated length, record type {rtype}")
            byte = data[start]
            start += 1
            length |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
        end = start + length
    if end > size:
        raise RecordError(pos, f"truncated payload, record type {rtype}, length {end - start}")
    return rtype, start, end


def pointer_target(payload: bytes, offset: int) -> int:
    """The offset a pointer record points to; 0 for a dummy (rec_goto)."""
    text = payload.lstrip(_C_SPACE)
    if not text:
        return 0
    if not text.isdigit() or len(text) > _MAX_OFFSET_DIGITS:
        raise RecordError(offset, f"malformed pointer record {payload[:40]!r}")
    return int(text)


def iter_records(data: bytes, pos: int = 0) -> Iterator[tuple[int, int, int, int]]:
    """Yield ``(offset, type, payload_start, payload_end)`` in Postfix's reading order.

    Pointer records are followed (and not yielded), padding is skipped, and
    the iteration ends after the END record or at the end of the data, like
    Postfix's ``rec_get()``. A pointer that leaves the data or leads back to a
    place already jumped to (which would loop forever) raises RecordError.
    """
    size = len(data)
    visited: set[int] = set()
    while pos < size:
        # Inline the common one-byte length; read_record() does the rest and the checks.
        start = pos + 2
        if start < size and data[pos + 1] < 0x80 and (end := start + data[pos + 1]) <= size:
            rtype = data[pos]
        else:
            rtype, start, end = read_record(data, pos)
        if rtype == REC_TYPE_PTR:
            target = pointer_target(data[start:end], pos)
            if target == 0:
                pos = end
                continue
            if target >= size or target in visited:
                problem = "pointer loop" if target in visited else "pointer past end of file"
                raise RecordError(pos, f"{problem} (to {target})")
            visited.add(target)
            pos = target
            continue
        if rtype != REC_TYPE_DTXT:
            yield pos, rtype, start, end
            if rtype == REC_TYPE_END:
                return
        pos = end
