"""SRS policy: which envelope senders to rewrite, into what, and which SRS addresses to trust.

The hash is srslib's (HMAC-SHA1 over the lowercased fields, base64, truncated), which is
byte for byte what libsrs2 and so postsrsd compute. The address handling around it is ours,
because srslib's own ``forward``/``reverse`` are too trusting for an address that arrives
from the Internet:

- ``check_hash`` compares only ``len(hash)`` characters, so a 1-character hash "verifies"
  one time in 32; we refuse hashes shorter than ``hash_length``.
- ``reverse`` ignores the domain of the SRS address; we refuse any domain but ours.
- its timestamp window is one day shorter than postsrsd's (it accepts ages 0..20 for 21
  days, postsrsd 0..21); we follow postsrsd so that neither refuses the other's addresses.
- it takes its clock from a private attribute; we inject ours.
- it splits at the last '@' and passes any local part; postsrsd splits at the first, so
  a local part holding '@' (or anything else that needs quoting) gives addresses the two
  disagree on, and that are not valid unquoted in SMTP; we refuse those senders.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import srslib

from rescue.errors import SrsError

if TYPE_CHECKING:
    from rescue.config import SrsConfig

# Separators allowed right after the SRS0/SRS1 tag (libsrs2's srs_separators); we write '='.
TAG_SEPARATORS = "=+-"
SEPARATOR = "="

# Timestamps are two base32 characters counting days modulo 1024 (the SRS paper, libsrs2).
TIMESTAMP_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
TIMESTAMP_SLOTS = len(TIMESTAMP_ALPHABET) ** 2
SECONDS_PER_DAY = 86_400

DEFAULT_HASH_LENGTH = 4  # postsrsd's -n and -N defaults
DEFAULT_MAX_AGE_DAYS = 21  # libsrs2's maxage
MIN_HASH_LENGTH = 4  # fewer characters make forging a bounce address a matter of minutes
# A truncated base64 HMAC-SHA1: 20 bytes give 27 significant characters before the padding.
MAX_HASH_LENGTH = 27
HASH_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")

# Every SRS address published leaks 24 bits of an HMAC of known data, enough to test guessed
# secrets offline. 16 characters (about 96 bits when random base64, as postsrsd's generated
# secrets are) put that out of reach; a word or a short password does not.
MIN_SECRET_LENGTH = 16

# Characters that force a local part to be quoted in SMTP (RFC 5321 atext plus '.' is what
# may stand unquoted). An SRS address carries the original local part inside its own, so
# such a sender would produce an address that is not valid unquoted.
_UNQUOTED_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")
_DOMAIN = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
MAX_DOMAIN_LENGTH = 253  # RFC 1035, in presentation form without the final dot


class NotSrsError(SrsError):
    """The address is no SRS address at our domain: nothing to reverse, and no attack either."""


@dataclass(frozen=True, slots=True)
class _Srs0:
    hash: str
    stamp: str
    host: str
    local: str


@dataclass(frozen=True, slots=True)
class _Srs1:
    hash: str
    host: str  # the first hop, which made the SRS0 address inside
    opaque: str  # the first hop's SRS0 local part without "SRS0", separator first


class SrsRewriter:
    """Forward senders to SRS addresses at our domain and reverse those addresses again."""

    __slots__ = ("_clock", "_domain", "_exclude", "_hash_length", "_max_age", "_secrets", "_srs")

    def __init__(
        self,
        *,
        domain: str,
        secrets: Sequence[str],
        exclude_domains: Iterable[str] = (),
        hash_length: int = DEFAULT_HASH_LENGTH,
        max_age_days: int = DEFAULT_MAX_AGE_DAYS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._domain = _checked_domain(domain, "the SRS domain")
        self._secrets = _checked_secrets(secrets)
        self._exclude = tuple(_checked_exclude(d) for d in exclude_domains)
        if not MIN_HASH_LENGTH <= hash_length <= MAX_HASH_LENGTH:
            raise SrsError(
                f"hash_length must be {MIN_HASH_LENGTH} to {MAX_HASH_LENGTH}, not {hash_length}"
            )
        if not 1 <= max_age_days < TIMESTAMP_SLOTS:
            raise SrsError(f"max_age_days must be 1 to {TIMESTAMP_SLOTS - 1}, not {max_age_days}")
        self._hash_length = hash_length
        self._max_age = max_age_days
        self._clock = clock
        # Only its hash function is used; see the module docstring for why.
        self._srs = srslib.SRS(self._secrets[0], hash_length=hash_length)

    @classmethod
    def from_config(cls, cfg: SrsConfig, *, clock: Callable[[], float] = time.time) -> SrsRewriter:
        return cls(
            domain=cfg.domain,
            secrets=[secret.value for secret in cfg.secrets],
            exclude_domains=cfg.exclude_domains,
            hash_length=cfg.hash_length,
            max_age_days=cfg.max_age_days,
            clock=clock,
        )

    def __repr__(self) -> str:
        # Never the secrets themselves.
        return f"SrsRewriter(domain={self._domain!r}, secrets=<{len(self._secrets)} hidden>)"

    @property
    def domain(self) -> str:
        return self._domain

    def forward(self, sender: str) -> str:
        """The envelope sender to use when relaying mail from ``sender``.

        Unchanged: the null sender, a sender at our SRS domain (its bounces come here
        anyway, and an SRS address of ours would only nest), a sender at an excluded domain.
        SRS0 or SRS1 of another domain: SRS1 that bounces straight to the first hop.
        Anything else: SRS0. Raises SrsError for a sender that cannot be rewritten safely.
        """
        if sender == "":
            return sender
        local, host = _split_sender(sender)
        if self._is_ours_or_excluded(host.lower()):
            return sender
        srs = _parse_srs(local)
        if isinstance(srs, _Srs1):
            # Bounces skip us and the hop before: straight back to the first hop.
            return self._srs1(srs.host, srs.opaque)
        if _is_srs0_tagged(local):
            # Only the first hop can check its opaque part, so it is kept verbatim.
            return self._srs1(host, local[4:])
        # A malformed SRS1 local part lands here too: wrapped as it is, its bounces still
        # find their way back to it (libsrs2 refuses it, and then Postfix keeps it as it is).
        stamp = _encode_day(self._today())
        digest = self._digest(stamp + host + local, self._secrets[0], self._hash_length)
        return f"SRS0{SEPARATOR}{digest}={stamp}={host}={local}@{self._domain}"

    def reverse(self, address: str) -> str:
        """The address a bounce to ``address`` must go to.

        Raises SrsError unless ``address`` is an SRS0 or SRS1 address at our domain whose
        hash one of our secrets made and (SRS0) whose timestamp is at most max_age_days old.
        """
        if not address.isascii():
            raise NotSrsError(f"<{address}>: not an SRS address of ours (not ASCII)")
        local, at, host = address.rpartition("@")
        if not at or host.lower() != self._domain:
            raise NotSrsError(f"<{address}>: not at our SRS domain {self._domain}")
        srs = _parse_srs(local)
        if srs is None:
            raise NotSrsError(f"<{address}>: not a well-formed SRS0 or SRS1 address")
        if isinstance(srs, _Srs1):
            self._verify(address, srs.hash, srs.host + srs.opaque)
            return f"SRS0{srs.opaque}@{srs.host}"
        self._verify(address, srs.hash, srs.stamp + srs.host + srs.local)
        age = (self._today() - _decode_day(address, srs.stamp)) % TIMESTAMP_SLOTS
        if age > self._max_age:
            raise SrsError(f"<{address}>: expired ({age} days old, at most {self._max_age})")
        return f"{srs.local}@{srs.host}"

    def _srs1(self, first_hop: str, opaque: str) -> str:
        digest = self._digest(first_hop + opaque, self._secrets[0], self._hash_length)
        return f"SRS1{SEPARATOR}{digest}={first_hop}={opaque}@{self._domain}"

    def _is_ours_or_excluded(self, host: str) -> bool:
        if host == self._domain:
            return True
        # postsrsd's rule: "example.com" is that domain, ".example.com" its subdomains.
        return any(
            host.endswith(entry) if entry.startswith(".") else host == entry
            for entry in self._exclude
        )

    def _today(self) -> int:
        return int(self._clock() // SECONDS_PER_DAY) % TIMESTAMP_SLOTS

    def _digest(self, data: str, secret: bytes, length: int) -> str:
        digest: str = self._srs.generate_hash(data, secret, length)
        return digest

    def _verify(self, address: str, digest: str, data: str) -> None:
        # A shorter hash would be checked on fewer characters (srslib) or refused (postsrsd);
        # a longer one must be right on every character given, which is never weaker.
        if len(digest) < self._hash_length:
            raise SrsError(f"<{address}>: hash shorter than {self._hash_length} characters")
        if len(digest) > MAX_HASH_LENGTH or not HASH_ALPHABET.issuperset(digest):
            raise SrsError(f"<{address}>: malformed hash")
        # The SRS papers and libsrs2 compare hashes without case: mail systems fold it.
        given = digest.lower().encode()
        for secret in self._secrets:
            expected = self._digest(data, secret, len(digest)).lower().encode()
            if hmac.compare_digest(given, expected):
                return
        raise SrsError(f"<{address}>: hash does not verify (forged, or signed with another secret)")


def _split_sender(sender: str) -> tuple[str, str]:
    local, at, host = sender.rpartition("@")
    if not at or not local or not host:
        raise SrsError(f"<{sender}>: not rewritten: not an address with a local part and a domain")
    if not _UNQUOTED_LOCAL.fullmatch(local):
        raise SrsError(f"<{sender}>: not rewritten: the local part would need quoting in SMTP")
    if len(host) > MAX_DOMAIN_LENGTH or not _DOMAIN.fullmatch(host):
        raise SrsError(f"<{sender}>: not rewritten: the domain is not a host name")
    return local, host


def _parse_srs(local: str) -> _Srs0 | _Srs1 | None:
    """The fields of an SRS0 or SRS1 local part; None when it is not a well-formed one."""
    tag = local[:4].upper()
    if len(local) < 5 or local[4] not in TAG_SEPARATORS:
        return None
    if tag == "SRS0":
        fields = local[5:].split("=", 3)
        if len(fields) == 4 and all(fields):
            return _Srs0(*fields)
    elif tag == "SRS1":
        # SRS1=HASH=HOST==HHHH=TT=...: the opaque part keeps its own leading separator.
        fields = local[5:].split("=", 2)
        if len(fields) == 3 and all(fields) and fields[2][0] in TAG_SEPARATORS:
            return _Srs1(*fields)
    return None


def _is_srs0_tagged(local: str) -> bool:
    return local[:4].upper() == "SRS0" and len(local) > 4 and local[4] in TAG_SEPARATORS


def _encode_day(day: int) -> str:
    return TIMESTAMP_ALPHABET[day >> 5 & 31] + TIMESTAMP_ALPHABET[day & 31]


def _decode_day(address: str, stamp: str) -> int:
    upper = stamp.upper()
    if len(upper) != 2 or not set(upper) <= set(TIMESTAMP_ALPHABET):
        raise SrsError(f"<{address}>: malformed timestamp")
    return TIMESTAMP_ALPHABET.index(upper[0]) * 32 + TIMESTAMP_ALPHABET.index(upper[1])


def _checked_domain(domain: str, what: str) -> str:
    if len(domain) > MAX_DOMAIN_LENGTH or not domain.isascii() or not _DOMAIN.fullmatch(domain):
        raise SrsError(f"{what} {domain!r} is not a host name")
    return domain.lower()


def _checked_exclude(entry: str) -> str:
    name = entry.removeprefix(".")
    _checked_domain(name, "excluded domain")
    return entry.lower()


def _checked_secrets(secrets: Sequence[str]) -> tuple[bytes, ...]:
    if isinstance(secrets, str):
        # A str is a Sequence[str]: each character would become a secret.
        raise TypeError("secrets must be a sequence of strings, not one string")
    if not secrets:
        raise SrsError("no SRS secret: at least one is needed")
    checked = []
    for number, secret in enumerate(secrets, start=1):
        # Lengths and positions only: a secret never goes into a message.
        if len(secret) < MIN_SECRET_LENGTH:
            raise SrsError(
                f"SRS secret #{number} has {len(secret)} characters;"
                f" at least {MIN_SECRET_LENGTH} are needed"
            )
        if any(c in secret for c in "\0\r\n"):
            # postsrsd reads secrets line by line with C strings: it could never match these.
            raise SrsError(f"SRS secret #{number} holds a NUL or line break")
        checked.append(secret.encode())
    return tuple(checked)
