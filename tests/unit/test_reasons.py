"""Delay reasons: which host answered, and grouping forms."""

from __future__ import annotations

import pytest

from rescue.classify.reasons import normalize_reason, reason_host, reply_text


@pytest.mark.parametrize(
    ("reason", "host"),
    [
        (
            "host mx00.kundenserver.de[212.227.15.41] said: 421 invalid sender domain, "
            "possibly misconfigured (in reply to MAIL FROM command)",
            ("mx00.kundenserver.de", "212.227.15.41"),
        ),
        (
            "host mx01.schlund.de[212.227.17.5] refused to talk to me: 421 unable to verify "
            "sender domain",
            ("mx01.schlund.de", "212.227.17.5"),
        ),
        (
            "connect to mx00.ionos.de[217.72.192.67]:25: Connection refused",
            ("mx00.ionos.de", "217.72.192.67"),
        ),
        (
            "lost connection with mx.example.com[192.0.2.1] while receiving the initial "
            "server greeting",
            ("mx.example.com", "192.0.2.1"),
        ),
        (
            "conversation with MX.Example.COM.[192.0.2.1] timed out while sending end of data "
            "-- message may be sent more than once",
            ("mx.example.com", "192.0.2.1"),
        ),
        (
            "delivery temporarily suspended: connect to mx00.kundenserver.de"
            "[212.227.15.41]:25: Connection timed out",
            ("mx00.kundenserver.de", "212.227.15.41"),
        ),
        (
            "TLS is required, but was not offered by host mx.example.org[2001:db8::25]",
            ("mx.example.org", "2001:db8::25"),
        ),
        (
            "Host or domain name not found. Name service error for name=kunde.test type=MX: "
            "Host not found, try again",
            None,
        ),
        ("", None),
    ],
)
def test_reason_host(reason: str, host: tuple[str, str] | None) -> None:
    assert reason_host(reason) == host


def test_reply_text_strips_the_postfix_frame() -> None:
    reason = (
        "host mx00.kundenserver.de[212.227.15.41] said: 421 invalid sender domain, possibly "
        "misconfigured (in reply to MAIL FROM command)"
    )
    assert reply_text(reason) == "421 invalid sender domain, possibly misconfigured"


def test_normalize_masks_addresses_and_queue_ids() -> None:
    a = normalize_reason(
        "host mx00.kundenserver.de[212.227.15.41] said: 421 id 4F2A81C0D3 rejected "
        "(in reply to MAIL FROM command)"
    )
    b = normalize_reason(
        "delivery temporarily suspended: host mx00.kundenserver.de[212.227.15.42] said: "
        "421 id 5B3C92D1E4 rejected (in reply to MAIL FROM command)"
    )
    assert a == b
    assert "[IP]" in a and "QUEUEID" in a


def test_normalize_keeps_bracketed_codes() -> None:
    text = normalize_reason("host smtp-in.orange.fr[193.252.22.65] said: 421 mwinf [104] refused")
    assert text == "host smtp-in.orange.fr[IP] said: 421 mwinf [104] refused"
    assert "[IP]" in normalize_reason("host mx.example[2001:db8::25] said: 451 later")
