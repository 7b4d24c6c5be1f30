"""Registered domains (the part a company registers: mail.example.co.uk -> example.co.uk).

The public suffix list comes bundled with the publicsuffixlist package and is read
from there; nothing is downloaded at run time. Names under a suffix the list does not
know (e.g. `.test`) count their last label as the suffix, as the list's default rule says.

publicsuffixlist rather than tldextract: it reads only the list it ships (new releases
follow the upstream list), has no dependencies, and has no code path that fetches the
list over the network; tldextract fetches and caches it on first use unless told not
to, and brings requests and filelock along.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from publicsuffixlist import PublicSuffixList


@cache
def _list() -> PublicSuffixList:
    # Loaded at the first question only: reading the list takes a few hundredths of a
    # second that a run with no unknown MX host need not spend.
    from publicsuffixlist import PublicSuffixList  # noqa: PLC0415

    return PublicSuffixList()


@cache
def registered_domain(host: str) -> str:
    """The registered domain of a host name; the name itself when it is a public suffix."""
    name = host.lower().rstrip(".")
    return _list().privatesuffix(name) or name
