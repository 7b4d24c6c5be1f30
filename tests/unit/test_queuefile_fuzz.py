"""The queue file reader on generated, random and mutated files: read, or QueueFileError."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rescue.errors import QueueFileError
from rescue.postfix.queuefile import (
    QueueFile,
    format_envelope,
)
from rescue.postfix.records import (
    REC_TYPE_DONE,
    REC_TYPE_DRCP,
    REC_TYPE_RCPT,
    REC_TYPE_TIME,
)
from tests.unit.queuefile_build import (
    ARRIVAL,
    GOOD,
    LINE_LIMIT,
    REAL_FILE,
    Rec,
    assemble,
    parse,
    rcpt,
    simple_envelope,
    text_records,
)
from tests.unit.test_records import encode


def read_or_refuse(data: bytes) -> QueueFile | None:
    """The property: a QueueFile or QueueFileError, never another exception."""
    try:
        qf = parse(data, "FUZZ")
    except QueueFileError:
        return None
    # Whatever was read must also be usable.
    format_envelope(qf)
    qf.envelope({})
    return qf


lines = st.lists(
    st.binary(max_size=LINE_LIMIT * 2 + 10).map(lambda b: b.replace(b"\n", b"")),
    min_size=1,  # Postfix refuses a file with no content at all (data size 0)
    max_size=12,
)
addresses = st.one_of(st.binary(max_size=40), st.sampled_from([b"", "\u00fc@\u00e4.test".encode()]))
recipients = st.lists(
    st.builds(
        rcpt,
        addresses,
        done=st.sampled_from([None, REC_TYPE_DONE, REC_TYPE_DRCP]),
        orcpt=st.none() | st.binary(max_size=40).map(lambda b: b"rfc822;" + b),
        notify=st.none() | st.sampled_from([1, 2, 4, 8, 10, 14]),
    ),
    min_size=1,
    max_size=6,
)


@st.composite
def queue_files(draw: st.DrawFn) -> tuple[bytes, list[bytes], list[list[Rec]]]:
    body = draw(lines)
    rcpts = draw(recipients)
    sender = draw(addresses)
    return assemble(simple_envelope(sender, *rcpts), text_records(body)), body, rcpts


@given(queue_files())
def test_generated_files_read_back(case: tuple[bytes, list[bytes], list[list[Rec]]]) -> None:
    data, body, rcpts = case
    qf = parse(data)
    assert qf.content == b"".join(line + b"\n" for line in body)
    assert [r.address.encode("utf-8", "surrogateescape") for r in qf.recipients] == [
        records[-1][1] for records in rcpts
    ]
    assert [r.done for r in qf.recipients] == [records[-1][0] != REC_TYPE_RCPT for records in rcpts]


@settings(max_examples=300)
@given(st.binary(max_size=3000))
@example(b"C\x00")
@example(b"C\x05 1 1 1")
@example(GOOD[:97] + b"p\x0f" + b"%15d" % 97)  # a pointer to itself
def test_random_bytes_read_or_raise(data: bytes) -> None:
    read_or_refuse(data)


record_types = st.sampled_from(b"CTcFILSDRO/WVA>K<ionMNLwXrePpVdmE")
numbers = st.integers(min_value=0, max_value=6000).map(lambda n: b"%15d" % n)
payloads = st.one_of(
    st.binary(max_size=60),
    numbers,
    st.sampled_from([b"9" * 5000, b"notify_flags=99999999999999999999999", b"create_time=-9"]),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(record_types, payloads), max_size=40))
def test_random_record_streams_read_or_raise(records: list[Rec]) -> None:
    read_or_refuse(b"".join(encode(t, p) for t, p in records))


@settings(max_examples=300)
@given(st.lists(st.tuples(record_types, payloads), max_size=20), lines, st.data())
def test_well_framed_files_with_random_records_read_or_raise(
    envelope: list[Rec], body: list[bytes], data: st.DataObject
) -> None:
    extracted = data.draw(st.lists(st.tuples(record_types, payloads), max_size=8))
    read_or_refuse(assemble([(REC_TYPE_TIME, ARRIVAL), *envelope], text_records(body), extracted))


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), st.integers(min_value=0), st.integers(0, 255)),
        st.tuples(st.just("retype"), st.integers(min_value=0), record_types),
        st.tuples(st.just("delete"), st.integers(min_value=0), st.integers(1, 64)),
        st.tuples(st.just("insert"), st.integers(min_value=0), st.binary(min_size=1, max_size=32)),
        st.tuples(st.just("truncate"), st.integers(min_value=0), st.just(0)),
        st.tuples(st.just("number"), st.integers(min_value=0), numbers),
    ),
    min_size=1,
    max_size=5,
)


Step = tuple[str, int, int | bytes]


def mutate(data: bytes, steps: list[Step]) -> bytes:
    """Apply damage: overwrite, retype, delete, insert, truncate, overwrite with a number."""
    buf = bytearray(data)
    for kind, where, what in steps:
        at = where % (len(buf) + 1)
        if isinstance(what, bytes):  # "insert" or "number"
            buf[at : at + (15 if kind == "number" else 0)] = what
        elif kind == "set" and at < len(buf):
            buf[at] = what
        elif kind == "retype" and buf:
            # Bytes that look like record types are likely (not certainly) record starts.
            starts = [i for i, byte in enumerate(buf) if byte in b"CTSRDONLXEApw/"] or [0]
            buf[starts[where % len(starts)]] = what
        elif kind == "delete":
            del buf[at : at + what]
        elif kind == "truncate":
            del buf[at:]
    return bytes(buf)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(queue_files().map(lambda case: case[0]), st.just(REAL_FILE)), mutations)
def test_mutated_queue_files_read_or_raise(data: bytes, steps: list[Step]) -> None:
    read_or_refuse(mutate(data, steps))


# -- defer logs ---------------------------------------------------------------------------
