"""Bytes on the wire to a smarthost: DATA dot-stuffed, xtext, paths and command lines.

Pure functions, tested without a server.
"""

from __future__ import annotations

import functools
import re

_LEADING_DOT = re.compile(rb"(?m)^\.")


def encode_data(content: bytes) -> bytes:
    """Queued content as DATA: CRLF line ends, dot-stuffed, with the final dot.

    Postfix stores lines without their CRLF; anything else in a line (a bare CR,
    8-bit bytes) is passed on exactly as stored.
    """
    if content and not content.endswith(b"\n"):
        content += b"\n"
    return _LEADING_DOT.sub(b"..", content).replace(b"\n", b"\r\n") + b".\r\n"


# Text that xtext leaves as it is: printable ASCII but '+' and '='.
_XTEXT_PLAIN = re.compile(r"[\x21-\x2a\x2c-\x3c\x3e-\x7e]*")


def xtext(value: str) -> str:
    """RFC 3461 section 4 xtext: '+', '=' and bytes outside 33..126 become +HH."""
    if _XTEXT_PLAIN.fullmatch(value):  # nearly every address: nothing to encode
        return value
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


# RFC 5321 section 4.1.2: atext, plus UTF-8 for SMTPUTF8 (RFC 6531 section 3.3).
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@functools.lru_cache(maxsize=4096)  # a backlog has few senders: each is quoted once
def smtp_path(address: str) -> str:
    """An address as an SMTP path: <>, <local@domain>, or <"quoted local"@domain>.

    Postfix keeps addresses unquoted (its internal form); like Postfix's own
    client, quote the local part when it is not a dot-atom.
    """
    if not address:
        return "<>"
    if _CONTROL.search(address):
        raise ValueError(f"address {address!r} contains control characters")
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if not all(_ATOM.fullmatch(part) for part in local.split(".")):
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"<{local}@{domain}>" if at else f"<{local}>"


def command_line(verb: bytes, address: str, options: list[str], encoding: str) -> bytes:
    """MAIL or RCPT with our own quoting (aiosmtplib's would unquote local parts)."""
    words = [verb + smtp_path(address).encode(encoding), *(o.encode("ascii") for o in options)]
    return b" ".join(words) + b"\r\n"


_ASCII = bytes(range(0x80))


def high_bytes(content: bytes) -> bytes:
    """The bytes of `content` above 0x7F (empty for 7-bit content); fast in C."""
    return content.translate(None, _ASCII)
