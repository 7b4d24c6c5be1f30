"""DMARC: the domain publishes one policy record that parses (RFC 7489 section 6.3).

A small parser on purpose: the check needs the record's tags and the policy values,
not a library (checkdmarc) that brings its own resolver and a dozen dependencies.
"""

from __future__ import annotations

from rescue.diagnose.answers import Lookup
from rescue.diagnose.result import Result, error, fail, ok, warn

POLICIES = frozenset({"none", "quarantine", "reject"})
ALIGNMENTS = frozenset({"r", "s"})


def parse(record: str) -> dict[str, str]:
    """The tags of a DMARC record; raises ValueError saying what is wrong."""
    tags: dict[str, str] = {}
    for part in record.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"{part.strip()!r} is not a tag=value pair")
        tags.setdefault(name.strip().lower(), value.strip())
    first = record.split(";", 1)[0].replace(" ", "")
    if first.lower() != "v=dmarc1":
        raise ValueError("the record must start with v=DMARC1")
    policy = tags.get("p")
    if policy is None:
        raise ValueError("the p= tag (the policy) is missing")
    for tag in ("p", "sp"):
        if tag in tags and tags[tag].lower() not in POLICIES:
            raise ValueError(f"{tag}={tags[tag]} is not none, quarantine or reject")
    for tag in ("adkim", "aspf"):
        if tag in tags and tags[tag].lower() not in ALIGNMENTS:
            raise ValueError(f"{tag}={tags[tag]} is not r or s")
    if "pct" in tags and not (tags["pct"].isdigit() and 0 <= int(tags["pct"]) <= 100):
        raise ValueError(f"pct={tags['pct']} is not a number from 0 to 100")
    return tags


def _records(texts: tuple[str, ...]) -> list[str]:
    return [t for t in texts if t.replace(" ", "").lower().startswith("v=dmarc1")]


def dmarc(domain: str, dns: Lookup, zone: str | None = None) -> Result:
    """One DMARC record at _dmarc.DOMAIN, else at the zone's (the organisational domain's)."""
    check = "dmarc"
    names = [f"_dmarc.{domain}"]
    if zone and zone != domain:
        names.append(f"_dmarc.{zone}")
    for name in names:
        answer = dns.get(name, "TXT")
        if answer.failed:
            return error(check, domain, f"{name} TXT: {answer.describe()}")
        found = _records(answer.records)
        if len(found) > 1:
            return fail(
                check,
                domain,
                f"{name} has {len(found)} DMARC records (RFC 7489 section 6.6.3: none applies)",
                f"Keep one TXT record at {name}.",
            )
        if found:
            try:
                tags = parse(found[0])
            except ValueError as exc:
                return fail(
                    check,
                    domain,
                    f'{name} "{found[0]}": {exc}',
                    f'Correct the TXT record at {name}, e.g. "v=DMARC1; p=none; '
                    f'rua=mailto:postmaster@{domain}".',
                )
            return ok(check, domain, f'{name} "{found[0]}" (policy {tags["p"]})')
    return warn(
        check,
        domain,
        f"no DMARC record at {' or '.join(names)}",
        f'Publish a TXT record at _dmarc.{zone or domain}: "v=DMARC1; p=none; '
        f'rua=mailto:postmaster@{zone or domain}" (large providers expect one).',
    )
