"""DNS block lists: is the sending IP listed (RFC 5782)?"""

from __future__ import annotations

import ipaddress

from rescue.diagnose.answers import Lookup, dnsbl_name
from rescue.diagnose.result import Result, error, fail, ok

# RFC 5782 section 2.1: a listing answers an A record in 127.0.0.0/8.
LISTED = ipaddress.IPv4Network("127.0.0.0/8")
# Spamhaus (and lists following it) answer 127.255.255.x for a query they refuse to
# answer (public or shared resolvers, too many queries): an error, not a listing.
REFUSED = ipaddress.IPv4Network("127.255.255.0/24")


def _in(record: str, network: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(record) in network
    except ValueError:
        return False


def dnsbl(ip: str | None, zone: str, dns: Lookup) -> Result:
    check = "dnsbl"
    if ip is None:
        return error(check, zone, "no sending IP known", "Give --ip or [diagnose] public_ip.")
    name = dnsbl_name(ip, zone)
    answer = dns.get(name, "A")
    if answer.failed:
        return error(check, zone, f"{name}: {answer.describe()}")
    if not answer.found:
        return ok(check, zone, f"{ip} is not listed ({name}: {answer.describe()})")
    if any(_in(r, REFUSED) for r in answer.records):
        return error(
            check,
            zone,
            f"{zone} refused the query ({name} {answer.describe()}): it does not answer "
            "through public or shared resolvers, or asked too often",
            f"Ask {zone} through a resolver of your own ([dns] nameservers), or use the "
            "list's registered query service.",
        )
    if not all(_in(r, LISTED) for r in answer.records):
        return error(
            check, zone, f"{name} {answer.describe()}: not a block list answer (127.0.0.0/8)"
        )
    reason = dns.get(name, "TXT")
    said = f"; TXT {'; '.join(reason.records)}" if reason.found else ""
    return fail(
        check,
        zone,
        f"{ip} is listed on {zone}: {name} {answer.describe()}{said}",
        f"Find out why {ip} is listed (the TXT answer or {zone}'s web site), end the cause "
        "(a compromised account, an open relay, a spam run), then ask the list to remove it.",
    )
