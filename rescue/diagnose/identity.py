"""The outbound identity: the sending IP's PTR, that it resolves back, and the HELO name."""

from __future__ import annotations

import ipaddress
import re

from rescue.diagnose.answers import Lookup, address_type, reverse_name, same_address
from rescue.diagnose.result import Result, error, fail, ok, warn

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")

NO_IP = "Give the sending IP with --ip or [diagnose] public_ip."


def ptr(ip: str | None, dns: Lookup) -> Result:
    check = "ptr"
    if ip is None:
        return error(check, "-", "no sending IP known", NO_IP)
    name = reverse_name(ip)
    answer = dns.get(name, "PTR")
    if answer.found:
        return ok(check, ip, f"{name} {answer.describe()}")
    if answer.failed:
        return error(check, ip, f"{name} PTR: {answer.describe()}")
    return fail(
        check,
        ip,
        f"{ip} has no PTR record ({name}: {answer.describe()})",
        f"Have the owner of {ip} (the hosting or internet provider) set its PTR record to "
        f"the mail server's name, a name that resolves back to {ip}; use it as HELO name.",
    )


def fcrdns(ip: str | None, dns: Lookup) -> Result:
    """Forward-confirmed reverse DNS: a PTR name of the IP resolves back to it."""
    check = "fcrdns"
    if ip is None:
        return error(check, "-", "no sending IP known", NO_IP)
    answer = dns.get(reverse_name(ip), "PTR")
    if answer.failed:
        return error(check, ip, f"PTR: {answer.describe()}")
    if not answer.found:
        return fail(
            check,
            ip,
            f"{ip} has no PTR name to resolve back",
            f"Set a PTR record for {ip} (see ptr) to a name with an {address_type(ip)} "
            f"record {ip}.",
        )
    seen = []
    for name in answer.records:
        forward = dns.get(name, address_type(ip))
        if any(same_address(ip, a) for a in forward.records):
            return ok(check, ip, f"{ip} PTR {name}, {name} {forward.describe()}")
        seen.append(f"{name} {forward.describe()}")
    if all(dns.get(n, address_type(ip)).failed for n in answer.records):
        return error(check, ip, "; ".join(seen))
    name = answer.records[0]
    return fail(
        check,
        ip,
        f"{ip} PTR {', '.join(answer.records)}; {'; '.join(seen)}: not {ip}",
        f"Add an {address_type(ip)} record {name} -> {ip}, or set the PTR record of {ip} "
        f"to a name that resolves to {ip}.",
    )


def is_fqdn(name: str) -> bool:
    labels = name.lower().rstrip(".").split(".")
    try:
        ipaddress.ip_address(name.strip("[]"))
        return False
    except ValueError:
        pass
    return len(labels) >= 2 and all(_LABEL.match(label) for label in labels)


def helo(name: str | None, ip: str | None, dns: Lookup) -> Result:
    """The HELO name is a fully qualified domain name that resolves to the sending IP."""
    check = "helo"
    if not name:
        return error(check, "-", "no HELO name known", "Give --helo NAME.")
    if not is_fqdn(name):
        return fail(
            check,
            name,
            f"HELO {name} is not a fully qualified domain name",
            "Set Postfix's smtp_helo_name (or myhostname) to the server's public name, "
            "the PTR name of its sending IP.",
        )
    if ip is None:
        return error(check, name, "no sending IP known", NO_IP)
    forward = dns.get(name, address_type(ip))
    if forward.failed:
        return error(check, name, f"{name}: {forward.describe()}")
    if any(same_address(ip, a) for a in forward.records):
        return ok(check, name, f"{name} {forward.describe()}")
    fix = (
        f"Publish an {address_type(ip)} record {name} -> {ip}, or set Postfix's "
        f"smtp_helo_name to a name that resolves to {ip} (its PTR name)."
    )
    if not forward.found:
        return fail(check, name, f"HELO {name} does not resolve ({forward.describe()})", fix)
    return warn(check, name, f"HELO {name} {forward.describe()}: not {ip}", fix)
