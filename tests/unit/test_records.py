"""The record layer: length encoding, pointer following, padding, END, damage."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rescue.postfix.records import (
    REC_TYPE_DTXT,
    REC_TYPE_END,
    REC_TYPE_FROM,
    REC_TYPE_NORM,
    REC_TYPE_PTR,
    REC_TYPE_RCPT,
    RecordError,
    iter_records,
    pointer_target,
    read_record,
)


def encode(rtype: int, payload: bytes) -> bytes:
    """A record as Postfix's rec_put() writes it (written here independently of the reader)."""
    length = len(payload)
    groups = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        groups.append(byte | (0x80 if length else 0))
        if not length:
            return bytes([rtype]) + bytes(groups) + payload


def ptr(offset: int) -> bytes:
    return encode(REC_TYPE_PTR, b"%15d" % offset)  # fixed width, as cleanup writes them


def walk(data: bytes, pos: int = 0) -> list[tuple[int, bytes]]:
    return [(rtype, data[start:end]) for _, rtype, start, end in iter_records(data, pos)]


@pytest.mark.parametrize("length", [0, 1, 127, 128, 2047, 2048, 16383, 16384, 1 << 21])
def test_length_groups_low_order_first(length: int) -> None:
    payload = b"x" * length
    data = encode(REC_TYPE_NORM, payload) + b"tail"
    rtype, start, end = read_record(data, 0)
    assert (rtype, data[start:end]) == (REC_TYPE_NORM, payload)


def test_two_length_bytes_as_postfix_writes_them() -> None:
    # 300 = 0b10_0101100: low group 0x2C with the "more" bit, then 0x02.
    data = b"N\xac\x02" + b"y" * 300
    assert read_record(data, 0) == (REC_TYPE_NORM, 3, 303)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"N", "truncated record header"),
        (b"N\x05", "truncated payload"),
        (b"N\x80", "truncated length"),
        (b"N\x80\x80\x80\x80\x80\x01", "too many length bytes"),
        (b"Nabc", "truncated payload"),
    ],
)
def test_damaged_records_are_refused(data: bytes, problem: str) -> None:
    with pytest.raises(RecordError, match=problem) as caught:
        read_record(data, 0)
    assert caught.value.offset == 0


@pytest.mark.parametrize(
    ("payload", "target"), [(b"              0", 0), (b"", 0), (b"   ", 0), (b"  1234", 1234)]
)
def test_pointer_targets(payload: bytes, target: int) -> None:
    assert pointer_target(payload, 0) == target


@pytest.mark.parametrize("payload", [b"12a", b"-5", b"1 2", b"9" * 5000])
def test_malformed_pointers(payload: bytes) -> None:
    with pytest.raises(RecordError, match="malformed pointer"):
        pointer_target(payload, 7)


def test_pointer_is_followed_and_comes_back() -> None:
    # S <ptr to heap> R E | heap: R(added) <ptr back to E>
    head = encode(REC_TYPE_FROM, b"a@x.test")
    jump = len(head)
    after_ptr = jump + len(ptr(0))
    body = encode(REC_TYPE_RCPT, b"one@x.test") + encode(REC_TYPE_END, b"")
    heap_at = after_ptr + len(body)
    heap = encode(REC_TYPE_RCPT, b"added@x.test") + ptr(after_ptr)
    data = head + ptr(heap_at) + body + heap
    assert walk(data) == [
        (REC_TYPE_FROM, b"a@x.test"),
        (REC_TYPE_RCPT, b"added@x.test"),
        (REC_TYPE_RCPT, b"one@x.test"),
        (REC_TYPE_END, b""),
    ]


def test_dummy_pointers_and_padding_are_invisible() -> None:
    data = ptr(0) + encode(REC_TYPE_DTXT, b"     0") + encode(REC_TYPE_NORM, b"text")
    assert walk(data) == [(REC_TYPE_NORM, b"text")]


def test_reading_stops_at_the_end_record() -> None:
    data = encode(REC_TYPE_END, b"") + b"\xff garbage that is only reachable by pointers"
    assert walk(data) == [(REC_TYPE_END, b"")]


def test_pointer_loop_is_refused() -> None:
    looping = encode(REC_TYPE_NORM, b"a") + ptr(3)  # the pointer at 3 points at itself
    with pytest.raises(RecordError, match="pointer loop"):
        walk(looping)


@pytest.mark.parametrize("target", [10_000, 1 << 40])
def test_pointer_past_the_end_is_refused(target: int) -> None:
    with pytest.raises(RecordError, match="past end"):
        walk(encode(REC_TYPE_NORM, b"a") + ptr(target))


record_types = st.sampled_from(b"CTFSDROWAMNLXEiont<>/")


@given(st.lists(st.tuples(record_types, st.binary(max_size=300)), max_size=20))
@example([(REC_TYPE_NORM, b"x" * 128)])
def test_encoded_records_read_back(records: list[tuple[int, bytes]]) -> None:
    records = [(t, p) for t, p in records if t != REC_TYPE_END]
    data = b"".join(encode(t, p) for t, p in records)
    assert walk(data) == records


@given(st.binary(max_size=500), st.integers(min_value=0, max_value=600))
@example(b"p\x0f" + b"1" * 15, 0)
@example(b"p\x02 1N\x00", 0)
def test_any_bytes_read_or_raise_record_error(data: bytes, pos: int) -> None:
    with contextlib.suppress(RecordError):
        walk(data, pos)
