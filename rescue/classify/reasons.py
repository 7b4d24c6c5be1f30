"""Read Postfix delay reasons: which host answered, and a normalised form for grouping.

The formats come from Postfix's smtp client (smtp_proto.c, smtp_connect.c,
smtp_trouble.c) and queue manager (qmgr_deliver.c); see the README.
"""

from __future__ import annotations

import re

_SUSPENDED = "delivery temporarily suspended: "

# NAME[ADDR] as Postfix writes a peer; ADDR may be IPv4, IPv6 or "ipv6:..." text.
_PEER = r"(?P<name>[^\s\[\]]+)\[(?P<addr>[^\]\s]*)\]"
_HOST_PATTERNS = tuple(
    re.compile(p)
    for p in (
        rf"\bhost {_PEER} said: ",
        rf"\bhost {_PEER} refused to talk to me: ",
        rf"\bconnect to {_PEER}(?::\d+)?: ",
        rf"\blost connection with {_PEER} while ",
        rf"\bconversation with {_PEER} timed out while ",
        rf"\bnot offered by host {_PEER}",
        rf"\bServer certificate not (?:verified|trusted).* {_PEER}",
        rf"\bhost {_PEER}",
    )
)


def strip_suspended(reason: str) -> str:
    """The original reason behind "delivery temporarily suspended: ..."."""
    while reason.startswith(_SUSPENDED):
        reason = reason[len(_SUSPENDED) :]
    return reason


def reason_host(reason: str) -> tuple[str, str] | None:
    """The (host name, address) a delay reason says answered or failed, if any."""
    text = strip_suspended(reason)
    for pattern in _HOST_PATTERNS:
        match = pattern.search(text)
        if match:
            name = match.group("name").rstrip(".").lower()
            return name, match.group("addr")
    return None


def reply_text(reason: str) -> str:
    """The remote server's reply inside a reason, or the reason itself."""
    text = strip_suspended(reason)
    for marker in (" said: ", " refused to talk to me: "):
        _, sep, tail = text.partition(marker)
        if sep:
            return re.sub(r"\s*\(in reply to [^)]*\)\s*$", "", tail)
    return text


_MASKS = (
    # [192.0.2.1] or [2001:db8::1]; not a bracketed code such as Orange's [104].
    (re.compile(r"\[(?:ipv6:)?(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]*:[0-9A-Fa-f:.]+)\]"), "[IP]"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b"), "IP"),
    (re.compile(r"\b[0-9A-F]{10,12}\b"), "QUEUEID"),  # short Postfix queue ids
    (re.compile(r"\b[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{12,}z[0-9A-Za-z]{5,}\b"), "QUEUEID"),
    (re.compile(r"\b[0-9a-f]{16,}\b", re.IGNORECASE), "ID"),
    (re.compile(r"\s+"), " "),
)


def normalize_reason(reason: str) -> str:
    """Mask addresses, queue ids and long tokens so equal reasons group together."""
    text = strip_suspended(reason)
    for pattern, replacement in _MASKS:
        text = pattern.sub(replacement, text)
    return text.strip()
