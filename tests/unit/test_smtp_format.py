"""The bytes a smarthost sees: DATA encoding, xtext, DSN flags, postcat envelopes."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from rescue.errors import QueueFileError
from rescue.postfix.commands import envelope_from_postcat, notify_keywords, postcat_queue
from rescue.smarthost.wire import encode_data, xtext


def unstuff(data: bytes) -> bytes:
    """What an SMTP server makes of DATA: the inverse of encode_data."""
    assert data.endswith(b".\r\n")
    lines = data[:-3].split(b"\r\n")[:-1]
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\n" for line in lines)


def test_encode_data_stuffs_dots_and_uses_crlf() -> None:
    assert encode_data(b"a\n.b\n..c\n.\n") == b"a\r\n..b\r\n...c\r\n..\r\n.\r\n"


def test_encode_data_adds_missing_final_newline() -> None:
    assert encode_data(b"a\nlast") == b"a\r\nlast\r\n.\r\n"


def test_encode_data_keeps_8bit_and_bare_cr() -> None:
    assert encode_data(b"caf\xc3\xa9 \r x\n") == b"caf\xc3\xa9 \r x\r\n.\r\n"


@given(st.lists(st.binary().map(lambda b: b.replace(b"\n", b"")), min_size=1))
@example([b".", b"..", b"", b"x" * 5000])
def test_encode_data_round_trips(lines: list[bytes]) -> None:
    content = b"".join(line + b"\n" for line in lines)
    assert unstuff(encode_data(content)) == content


def test_xtext() -> None:
    assert xtext("user@example.com") == "user@example.com"
    assert xtext("a+b=c d") == "a+2Bb+3Dc+20d"
    assert xtext("jörg@x") == "j+C3+B6rg@x"


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (0, None),
        (1, "NEVER"),
        (2, "SUCCESS"),
        (4, "FAILURE"),
        (6, "SUCCESS,FAILURE"),
        (14, "SUCCESS,DELAY,FAILURE"),
    ],
)
def test_notify_keywords(flags: int, words: str | None) -> None:
    assert notify_keywords(flags) == words


POSTCAT_E = b"""*** ENVELOPE RECORDS deferred/4F2A81C0D3 ***
message_size: 347 227 2 0 347 0
message_arrival_time: Sat Nov 28 11:00:00 2026
create_time: Sat Nov 28 11:00:00 2026
named_attribute: rewrite_context=remote
sender: alice@example.com
named_attribute: envelope_id=ENV123
named_attribute: ret_flags=2
named_attribute: notify_flags=14
named_attribute: dsn_orig_rcpt=rfc822;done@kunde1.test
original_recipient: done@kunde1.test
done_recipient: done@kunde1.test
named_attribute: notify_flags=4
named_attribute: dsn_orig_rcpt=rfc822;Bob@Kunde2.test
original_recipient: bob@kunde2.test
recipient: bob@kunde2.test
recipient: carol@kunde3.test
*** MESSAGE CONTENTS deferred/4F2A81C0D3 ***
"""


def test_envelope_from_postcat_keeps_pending_recipients_with_their_dsn() -> None:
    env = envelope_from_postcat("4F2A81C0D3", POSTCAT_E, b"Subject: x\n\nbody\n")
    assert env.sender == "alice@example.com"
    assert (env.envid, env.ret) == ("ENV123", "HDRS")
    assert [r.address for r in env.recipients] == ["bob@kunde2.test", "carol@kunde3.test"]
    bob, carol = env.recipients
    assert (bob.orig_rcpt, bob.notify) == ("rfc822;Bob@Kunde2.test", "FAILURE")
    assert (carol.orig_rcpt, carol.notify) == (None, None)


def test_envelope_without_sender_is_an_error() -> None:
    with pytest.raises(QueueFileError):
        envelope_from_postcat("4F2A81C0D3", b"recipient: a@b\n", b"")


def test_postcat_says_which_queue_it_read() -> None:
    assert postcat_queue(POSTCAT_E) == "deferred"
    assert postcat_queue(b"*** ENVELOPE RECORDS hold/4/4F2A81C0B1 ***\nsender: a@b\n") == "hold"
    assert postcat_queue(b"sender: a@b\n") is None
