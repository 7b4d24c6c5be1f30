"""SPF: one valid record per domain, and its verdict for an address (pyspf, RFC 7208).

pyspf asks DNS through its module hook `spf.DNSLookup` (the hook its maintainer points
to for other resolvers); ours answers from the run's Lookup, so SPF evaluation honours
[dns], the cache and the time budget like every other check.
"""

from __future__ import annotations

import contextvars
import ipaddress
from typing import Any

import spf as pyspf

from rescue.diagnose.answers import Lookup
from rescue.diagnose.result import Result, error, fail, ok, warn

# TEST-NET-1's network address (RFC 5737): no record authorises it, so evaluating a
# record for it walks every term and counts every DNS lookup (RFC 7208 section 4.6.4).
UNLISTED_ADDRESS = "192.0.2.0"

_lookup: contextvars.ContextVar[Lookup | None] = contextvars.ContextVar("spf_lookup", default=None)


def _dns_lookup(name: str, qtype: str, strict: Any = True, timeout: Any = None) -> list[Any]:
    """pyspf's DNSLookup: [((name, type), value), ...] from the current Lookup."""
    lookup = _lookup.get()
    if lookup is None:
        raise pyspf.TempError("DNS: no resolver for this evaluation")
    qtype = qtype.upper()
    answer = lookup.get(name, qtype)
    if answer.failed:
        raise pyspf.TempError(f"DNS: {answer.error}")
    found: list[Any] = []
    for record in answer.records:
        if qtype in ("TXT", "SPF"):
            found.append(((name, qtype), (record.encode("utf-8"),)))
        elif qtype == "MX":
            preference, _, host = record.partition(" ")
            found.append(((name, qtype), (int(preference), host)))
        else:
            found.append(((name, qtype), record))
    return found


pyspf.DNSLookup = _dns_lookup


def evaluate(dns: Lookup, ip: str, sender: str, helo: str) -> tuple[str, str]:
    """check_host(): (result, explanation); result is pass, fail, softfail, neutral,
    none, permerror or temperror."""
    token = _lookup.set(dns)
    try:
        query = pyspf.query(i=ip, s=sender, h=helo, strict=True)
        result, _code, explanation = query.check()
    finally:
        _lookup.reset(token)
    return str(result), str(explanation)


def records(domain: str, dns: Lookup) -> list[str]:
    """The SPF records among the domain's TXT records (RFC 7208 section 4.5)."""
    texts = dns.get(domain, "TXT").records
    return [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]


def with_address(record: str, ip: str) -> str:
    """The record with `ip` authorised before its final `all` (or at its end)."""
    version = ipaddress.ip_address(ip).version
    term = f"ip{version}:{ip}"
    terms = record.split()
    for index, word in enumerate(terms):
        if word.lstrip("+-~?").lower() == "all" or word.lower().startswith("redirect="):
            return " ".join([*terms[:index], term, *terms[index:]])
    return " ".join([*terms, term])


def spf(domain: str, dns: Lookup) -> Result:
    """Exactly one SPF record, that parses and needs at most 10 DNS-querying terms."""
    check = "spf"
    txt = dns.get(domain, "TXT")
    if txt.failed:
        return error(check, domain, f"{domain} TXT: {txt.describe()}")
    found = records(domain, dns)
    if not found:
        return fail(
            check,
            domain,
            f"{domain} has no SPF record (no TXT record starting with v=spf1)",
            f"Publish one TXT record at {domain} listing the hosts that send its mail, e.g. "
            f'"v=spf1 mx -all" plus ip4:/ip6: terms for each sending address.',
        )
    if len(found) > 1:
        shown = "; ".join(f'"{r}"' for r in found)
        return fail(
            check,
            domain,
            f"{domain} has {len(found)} SPF records: {shown} (RFC 7208 section 4.5: permerror)",
            f"Merge them into one TXT record at {domain} and delete the others.",
        )
    result, explanation = evaluate(dns, UNLISTED_ADDRESS, f"postmaster@{domain}", domain)
    if result == "permerror":
        return fail(
            check,
            domain,
            f'"{found[0]}": {explanation}',
            f"Correct the SPF record of {domain}: at most 10 terms that query DNS (include, a, "
            "mx, ptr, exists, redirect; RFC 7208 section 4.6.4), counting those of included "
            "records; replace includes by ip4:/ip6: terms where they add up.",
        )
    if result == "temperror":
        return error(check, domain, f'"{found[0]}": {explanation}')
    return ok(check, domain, f'"{found[0]}"')


_VERDICT_FIX = (
    "Authorise {ip} in the SPF record of {domain}: "
    '"{suggested}" (or send through a host the record already names).'
)


def spf_ip(domain: str, dns: Lookup, ip: str | None, helo: str, sender: str = "") -> Result:
    """The SPF verdict of `domain` for the sending IP and HELO name: pass, or a finding."""
    check = "spf-ip"
    if ip is None:
        return error(check, domain, "no sending IP known", "Give --ip or [diagnose] public_ip.")
    sender = sender or f"postmaster@{domain}"
    result, explanation = evaluate(dns, ip, sender, helo)
    said = f"SPF of {domain} for {ip} (HELO {helo or '-'}): {result}"
    if result == "pass":
        return ok(check, domain, said)
    if result == "temperror":
        return error(check, domain, f"{said}: {explanation}")
    found = records(domain, dns)
    if result == "permerror" or not found:
        return fail(check, domain, f"{said}: {explanation}", "Fix the SPF record first (spf).")
    fix = _VERDICT_FIX.format(ip=ip, domain=domain, suggested=with_address(found[0], ip))
    if result == "fail":
        return fail(check, domain, f'{said}: "{found[0]}" does not list {ip}', fix)
    return warn(check, domain, f'{said}: "{found[0]}" does not authorise {ip}', fix)


def srs_spf(srs_domain: str, dns: Lookup, smarthosts: list[tuple[str, str]], helo: str) -> Result:
    """The SRS domain's SPF passes for every smarthost address: (name, address) pairs."""
    check = "srs-spf"
    if not smarthosts:
        return error(check, srs_domain, "no smarthost address known")
    verdicts, failing = [], []
    for name, address in smarthosts:
        if not address:
            verdicts.append(f"{name}: no address")
            failing.append(name)
            continue
        result, _ = evaluate(dns, address, f"postmaster@{srs_domain}", helo)
        verdicts.append(f"{name} {address}: {result}")
        if result != "pass":
            failing.append(address)
    detail = f"SPF of {srs_domain}: {'; '.join(verdicts)}"
    if not failing:
        return ok(check, srs_domain, detail)
    found = records(srs_domain, dns)
    suggested = found[0] if found else "v=spf1 -all"
    for address in failing:
        try:
            suggested = with_address(suggested, address)
        except ValueError:
            continue
    return fail(
        check,
        srs_domain,
        detail + " (a smarthost may send from other addresses than it listens on)",
        f'Make the SPF record of {srs_domain} authorise every smarthost: "{suggested}", '
        "or include the smarthost provider's SPF record.",
    )
