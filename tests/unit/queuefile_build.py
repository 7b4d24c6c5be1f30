"""Queue files built record by record for the reader's tests, as Postfix writes them."""

from __future__ import annotations

import base64
import io
import zlib

from rescue.postfix.queuefile import (
    QueueFile,
    read_queue_file,
)
from rescue.postfix.records import (
    REC_TYPE_ATTR,
    REC_TYPE_CONT,
    REC_TYPE_END,
    REC_TYPE_FROM,
    REC_TYPE_MESG,
    REC_TYPE_NORM,
    REC_TYPE_ORCP,
    REC_TYPE_RCPT,
    REC_TYPE_SIZE,
    REC_TYPE_TIME,
    REC_TYPE_XTRA,
)
from tests.unit.test_records import encode

Rec = tuple[int, bytes]


LINE_LIMIT = 2048  # Postfix's line_length_limit: longer lines are stored in pieces
SIZE_FORMAT = b"%15d %15d %15d %15d %15d %15d"  # rec_type.h, six fields in Postfix 3.7
ARRIVAL = b"1795863633 692240"


# -- building queue files the way cleanup writes them ------------------------------------


def text_records(lines: list[bytes]) -> list[Rec]:
    """Lines (without newline) as N records, long ones split into L pieces first."""
    records = []
    for line in lines:
        rest = line
        while len(rest) > LINE_LIMIT:
            records.append((REC_TYPE_CONT, rest[:LINE_LIMIT]))
            rest = rest[LINE_LIMIT:]
        records.append((REC_TYPE_NORM, rest))
    return records


def rcpt(
    address: bytes,
    *,
    done: int | None = None,
    orcpt: bytes | None = None,
    notify: int | None = None,
    orig: bytes | None = None,
) -> list[Rec]:
    """A recipient with its DSN attributes, in cleanup's order."""
    records: list[Rec] = []
    if notify is not None:
        records.append((REC_TYPE_ATTR, b"notify_flags=%d" % notify))
    if orcpt is not None:
        records.append((REC_TYPE_ATTR, b"dsn_orig_rcpt=" + orcpt))
    records.append((REC_TYPE_ORCP, address if orig is None else orig))
    records.append((done or REC_TYPE_RCPT, address))
    return records


def assemble(
    envelope: list[Rec],
    content: list[Rec],
    extracted: list[Rec] = (),  # type: ignore[assignment]
    *,
    recipient_count: int = 1,
) -> bytes:
    """A complete queue file: size record, envelope, content, extracted segment, END."""
    head = b"".join(encode(t, p) for t, p in envelope)
    size_length = len(encode(REC_TYPE_SIZE, SIZE_FORMAT % (0, 0, 0, 0, 0, 0)))
    mesg = encode(REC_TYPE_MESG, b"")
    data_offset = size_length + len(head) + len(mesg)
    body = b"".join(encode(t, p) for t, p in content)
    tail = b"".join(
        encode(t, p) for t, p in [(REC_TYPE_XTRA, b""), *extracted, (REC_TYPE_END, b"")]
    )
    size = SIZE_FORMAT % (len(body), data_offset, recipient_count, 0, len(body), 0)
    return encode(REC_TYPE_SIZE, size) + head + mesg + body + tail


def simple_envelope(sender: bytes = b"sender@src.test", *recipients: list[Rec]) -> list[Rec]:
    records: list[Rec] = [
        (REC_TYPE_TIME, ARRIVAL),
        (REC_TYPE_ATTR, b"create_time=1795863633"),
        (REC_TYPE_ATTR, b"rewrite_context=local"),
        (REC_TYPE_FROM, sender),
        (REC_TYPE_ATTR, b"log_client_name=localhost"),
    ]
    for recipient in recipients or (rcpt(b"rcpt@dst.test"),):
        records.extend(recipient)
    return records


HEADER = [b"From: a@src.test", b"Subject: test", b""]


def parse(data: bytes, queue_id: str = "4F2A81C0B1") -> QueueFile:
    return read_queue_file(io.BytesIO(data), queue_id)


# -- envelope -------------------------------------------------------------------------


GOOD = assemble(simple_envelope(), text_records([*HEADER, b"body"]))


# A queue file Postfix 3.7 wrote after a milter inserted, added and changed headers, added
# two recipients (one with NOTIFY=NEVER), deleted one and changed the sender: pointer
# records into a heap after END, padding, a canceled recipient, a delivered recipient.
REAL_FILE = zlib.decompress(
    base64.b64decode(
        """
eNrtWG1LG0EQjp+KUKy2pLXQwkDBKjZ2dy8vZ+KJp0YQ6qUkabGUEs7bSXLlvE33tsZ868/qr+hv6l4S9C6J4tfS
e0IIM/PszOzsXsiTow7cwigZJUjCZAzSKM3YBO5br+PtNVrZLZllo1I0gZYMWjbs555EV2FH+Zdo3YbtfCB6HZ9j
qCxWOSyajBLzkNp5iUPpa74nQoXXygqE5waDJ4kyxXJp134ZL/cCX6/vhK5OPeb1RaTsV4mQy7nEKLIoq+wQ/aKT
utPoQEhllQllZftt7L7UVLeHHSH9nh/epvx6s/zbpHAfAzEpO8m0o1AXfhGHBlIo4YlgEq63ztof7fziRl9LvEIZ
4R37WL9zD2vz/a9HKHWyReRpZEw2CGElO7+4/2f39T5N3FGjAVrMfsOjcDynjvQGypJdT9+fmgjxgGMX5ThhYyVt
N2fsO5KooUglSdvvZ2x7Y3GSvkQ8cD0PB5PdNdbmXMfzrvRFKxXpWS7tKlKWGBls3hwXJC7JlkOWL0bwQ05JH3W8
619vwdBXfRjPFXwOiXtfczaWW656B8wER1wBI6wMlFYJq2rPNtGAzU/toy1n9USKyyq4B5H0FrRc3DWJ82fpvHDm
Bwploa0Zms15n0s4L9icI7dGGNXAD6PYR7T3xJeRspQY1MDr92Jv6+fFd/QUUMvru2EPOUQTTy3OFQ86/kSeOIib
yMCVoN+JEDiN9unJF8upf643a8AxGGfYS5/kfg26em8Q4jDCkKO82aJDziZPZuGUV2EvHg6lzKSUMGbuJMZ4MB35
vrN9rL90qvCgmaYnaFRMJ+csXwg+gsAP8cOv1VGGDBkyZMiQ4b+D8/tRNoQMGf49pH7bx/9RnOfmXPWc83gqjaqg
tdFwiaQ41GA0ZoxlUhW0TtIMhzXRQ/8qXjOWLQ+QhenKZqXorE+FVhVmdFa6AS1VGquzgqs555lRr7tFeyUUyu+O
Ot3A7UUWbaykhVlzxp5pkJHW03k1liYxYvwFMBaJ7A==
"""
    )
)
