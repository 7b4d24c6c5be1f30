"""Checks of a sender domain's own DNS: it exists, takes mail, and its MX and NS are sound."""

from __future__ import annotations

from rescue.diagnose.answers import Answer, Lookup, Outcome, mx_hosts
from rescue.diagnose.result import Result, error, fail, ok, warn

NULL_MX = "."


def exists(mx: Answer) -> bool:
    """Whether the MX answer shows that the domain exists in DNS."""
    return mx.outcome in (Outcome.ANSWER, Outcome.NODATA)


def sender_domain(domain: str, dns: Lookup) -> Result:
    """The domain exists and names a mail host: an MX, or else an A/AAAA record."""
    check = "sender-domain"
    mx = dns.get(domain, "MX")
    if mx.outcome is Outcome.NXDOMAIN:
        return fail(
            check,
            domain,
            f"{domain} MX: NXDOMAIN: the domain does not exist in DNS",
            f"Publish {domain} in DNS (an MX record for its mail host), or rewrite envelope "
            "senders in it to a domain that exists (Postfix: myorigin, sender_canonical_maps).",
        )
    if mx.unasked:
        return error(check, domain, f"{domain} MX: {mx.describe()}")
    if mx.failed:
        return fail(
            check,
            domain,
            f"{domain} MX: no answer ({mx.error}); providers that check the sender domain "
            "cannot verify it either",
            f"Make the authoritative name servers of {domain} answer (see the ns check), "
            "and check the zone's DNSSEC signatures if it is signed.",
        )
    if mx.found:
        return ok(check, domain, mx.describe())
    addresses = [dns.get(domain, "A"), dns.get(domain, "AAAA")]
    found = [a for a in addresses if a.found]
    if found:
        seen = "; ".join(a.describe() for a in found)
        return ok(check, domain, f"no MX record; {seen} (RFC 5321 section 5.1: implicit MX)")
    if any(a.failed for a in addresses):
        return error(check, domain, "; ".join(a.describe() for a in addresses))
    return fail(
        check,
        domain,
        f"{domain} has no MX record and no A/AAAA record: no host takes its mail",
        f"Publish an MX record for {domain} that names its mail server "
        "(a host name with A/AAAA records).",
    )


def null_mx(domain: str, dns: Lookup) -> Result:
    """RFC 7505: "MX 0 ." says the domain takes no mail, so it cannot send any either."""
    check = "null-mx"
    mx = dns.get(domain, "MX")
    if any(host == NULL_MX for _, host in mx_hosts(mx)):
        return fail(
            check,
            domain,
            f"{domain} MX 0 . (RFC 7505 null MX: the domain takes no mail, not even replies "
            "and bounces)",
            f"Replace the null MX of {domain} with an MX record for the host that takes its "
            "mail, or send with an envelope sender in a domain that takes mail.",
        )
    return ok(check, domain, "no null MX" if not mx.found else mx.describe())


def _targets(domain: str, dns: Lookup) -> list[str]:
    return [host for _, host in mx_hosts(dns.get(domain, "MX")) if host != NULL_MX]


def mx_cname(domain: str, dns: Lookup) -> Result:
    """No MX target is an alias (RFC 2181 section 10.3, RFC 5321 section 5.1)."""
    check = "mx-cname"
    hosts = _targets(domain, dns)
    if not hosts:
        return ok(check, domain, "no MX target")
    aliases = []
    unknown = []
    for host in hosts:
        answer = dns.get(host, "CNAME")
        if answer.found:
            aliases.append((host, answer.records[0]))
        elif answer.failed:
            unknown.append(f"{host}: {answer.describe()}")
    if aliases:
        seen = "; ".join(f"{host} is a CNAME to {target}" for host, target in aliases)
        host, target = aliases[0]
        return fail(
            check,
            domain,
            f"MX of {domain}: {seen}",
            f"Point the MX record of {domain} at a name with A/AAAA records (such as {target}) "
            f"instead of the alias {host}; an MX must not name a CNAME "
            "(RFC 2181 section 10.3).",
        )
    if unknown:
        return error(check, domain, "; ".join(unknown))
    return ok(check, domain, f"no MX target is a CNAME ({', '.join(hosts)})")


def mx_address(domain: str, dns: Lookup) -> Result:
    """Every MX target has an A or AAAA record."""
    check = "mx-address"
    hosts = _targets(domain, dns)
    if not hosts:
        return ok(check, domain, "no MX target")
    seen, missing, unknown = [], [], []
    for host in hosts:
        answers = [dns.get(host, "A"), dns.get(host, "AAAA")]
        found = [a for a in answers if a.found]
        if found:
            seen.append(f"{host} {'; '.join(a.describe() for a in found)}")
        elif any(a.failed for a in answers):
            unknown.append(f"{host}: {'; '.join(a.describe() for a in answers)}")
        else:
            gone = answers[0].outcome is Outcome.NXDOMAIN
            missing.append(f"{host} {'does not exist (NXDOMAIN)' if gone else 'has no A/AAAA'}")
    if missing:
        return fail(
            check,
            domain,
            f"MX of {domain}: {'; '.join(missing)}",
            f"Give {missing[0].split()[0]} an A (and AAAA) record for the mail server, or point "
            f"the MX record of {domain} at a host name that has one.",
        )
    if unknown:
        return error(check, domain, "; ".join(unknown))
    return ok(check, domain, "; ".join(seen))


def zone_of(domain: str, dns: Lookup) -> str | None:
    """The zone `domain` is in: the closest name at or above it with an SOA record."""
    labels = domain.split(".")
    for start in range(len(labels) - 1):
        name = ".".join(labels[start:])
        answer = dns.get(name, "SOA")
        if answer.found:
            return name
        if answer.failed:
            return None
    return None


def _serial(answer: Answer) -> int | None:
    fields = answer.records[0].split() if answer.found else []
    return int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else None


def ns(domain: str, dns: Lookup) -> Result:
    """Every authoritative name server of the domain's zone answers, with one SOA serial."""
    check = "ns"
    zone = zone_of(domain, dns)
    if zone is None:
        return error(check, domain, f"no SOA record found at or above {domain}")
    names = dns.get(zone, "NS")
    if not names.found:
        return error(check, domain, f"{zone} NS: {names.describe()}")
    serials: dict[str, int] = {}
    silent = []
    for host in sorted(names.records):
        addresses = dns.get(host, "A")
        if not addresses.found:
            addresses = dns.get(host, "AAAA")
        if not addresses.found:
            silent.append(f"{host} has no address ({addresses.describe()})")
            continue
        for address in addresses.records:
            answer = dns.ask_server(address, zone, "SOA")
            if answer.unasked:
                return error(check, domain, f"{host} ({address}): {answer.describe()}")
            serial = _serial(answer)
            if serial is None:
                silent.append(f"{host} ({address}): {answer.describe()}")
            else:
                serials[f"{host} ({address})"] = serial
    seen = ", ".join(f"{server} serial {serial}" for server, serial in serials.items())
    if silent:
        return fail(
            check,
            domain,
            f"name servers of {zone}: {'; '.join(silent)}" + (f"; {seen}" if seen else ""),
            f"Make every name server in the NS records of {zone} answer for it, or remove "
            "the ones that do not from the NS records (in the zone and at the registrar).",
        )
    if len(set(serials.values())) > 1:
        newest = max(serials.values())
        return warn(
            check,
            domain,
            f"name servers of {zone} disagree: {seen}",
            f"Bring every name server of {zone} to serial {newest} (zone transfers from the "
            "primary: NOTIFY and AXFR/IXFR); a stale one serves old records.",
        )
    return ok(check, domain, f"name servers of {zone}: {seen}")


def srs_mx(srs_domain: str, dns: Lookup) -> Result:
    """The SRS domain takes mail: bounces to SRS addresses must come back."""
    check = "srs-mx"
    mx = dns.get(srs_domain, "MX")
    hosts = _targets(srs_domain, dns)
    fix = (
        f"Publish an MX record for {srs_domain} naming this mail server, where Postfix "
        "hands SRS addresses to queue-rescue's bounce map (README: SRS)."
    )
    if mx.failed:
        return error(check, srs_domain, mx.describe())
    if hosts:
        return ok(check, srs_domain, mx.describe())
    if mx.found:  # a null MX
        return fail(check, srs_domain, f"{mx.describe()}: the SRS domain takes no mail", fix)
    address = dns.get(srs_domain, "A")
    if address.found:
        return warn(
            check,
            srs_domain,
            f"no MX record; bounces go to {address.describe()} (implicit MX)",
            fix,
        )
    return fail(
        check,
        srs_domain,
        f"{srs_domain}: {mx.describe()}, no A record: bounces to SRS senders cannot come back",
        fix,
    )
