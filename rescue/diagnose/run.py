"""A diagnosis run: the subjects, the outbound identity, every check, the probes."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rescue.classify.shape import UNKNOWN
from rescue.config import SmarthostConfig
from rescue.diagnose import dmarc, dnsbl, domain, identity, spfcheck
from rescue.diagnose.answers import Lookup
from rescue.diagnose.probe import ProbeTarget, probe
from rescue.diagnose.result import Result
from rescue.diagnose.stuck import StuckGroup

# A documentation address (RFC 5737): connecting a UDP socket to it sends nothing, but
# makes the kernel choose the source address of the default route.
_ROUTE_PROBE = "192.0.2.1"
# SMTP servers may take a while to greet (RFC 5321 section 4.5.3.2 allows 5 minutes);
# a probe waits this long for each reply, within the run's time budget.
PROBE_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Outbound:
    """Who this host is to the providers: its sending IP and HELO name."""

    ip: str | None
    helo: str | None
    notes: tuple[str, ...] = ()


def route_address() -> str | None:
    """The address this host uses to reach the internet (no packet is sent)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((_ROUTE_PROBE, 9))
            address = str(sock.getsockname()[0])
    except OSError:
        return None
    return None if address == "0.0.0.0" else address  # noqa: S104 (no route: no address)


def outbound(
    ip: str | None,
    public_ip: str | None,
    helo: str | None,
    helo_from_postfix: Callable[[], str | None],
    route: Callable[[], str | None] = route_address,
) -> Outbound:
    """The sending IP (--ip, [diagnose] public_ip, the route's) and HELO (--helo, Postfix)."""
    notes = []
    if ip is None and public_ip is not None:
        ip = public_ip
    if ip is None:
        ip = route()
        if ip is None:
            notes.append("no sending IP: give --ip or [diagnose] public_ip")
        else:
            notes.append(
                f"sending IP {ip} is the address this host reaches the internet from; "
                "behind NAT the providers see another one (give --ip or [diagnose] public_ip)"
            )
        if ip is not None and not ipaddress.ip_address(ip).is_global:
            notes.append(f"{ip} is not a public address: ptr, fcrdns and dnsbl say little")
    if helo is None:
        helo = helo_from_postfix()
        notes.append(
            f"HELO name {helo} is Postfix's smtp_helo_name"
            if helo
            else "no HELO name: give --helo NAME"
        )
    return Outbound(ip, helo, tuple(notes))


def domain_results(name: str, dns: Lookup, out: Outbound, sender: str = "") -> list[Result]:
    """Every check of one sender domain; only sender-domain when it does not resolve."""
    first = domain.sender_domain(name, dns)
    if not domain.exists(dns.get(name, "MX")):
        return [first]
    zone = domain.zone_of(name, dns)
    return [
        first,
        domain.null_mx(name, dns),
        domain.mx_cname(name, dns),
        domain.mx_address(name, dns),
        domain.ns(name, dns),
        spfcheck.spf(name, dns),
        spfcheck.spf_ip(name, dns, out.ip, out.helo or "", sender),
        dmarc.dmarc(name, dns, zone),
    ]


def identity_results(out: Outbound, dns: Lookup, zones: Sequence[str]) -> list[Result]:
    results = [
        identity.ptr(out.ip, dns),
        identity.fcrdns(out.ip, dns),
        identity.helo(out.helo, out.ip, dns),
    ]
    return results + [dnsbl.dnsbl(out.ip, zone, dns) for zone in zones]


def smarthost_addresses(hosts: Sequence[SmarthostConfig], dns: Lookup) -> list[tuple[str, str]]:
    """(smarthost name, address) for each address of each smarthost ("" when none)."""
    pairs = []
    for host in hosts:
        try:
            pairs.append((host.name, str(ipaddress.ip_address(host.host))))
            continue
        except ValueError:
            pass
        found = [a for t in ("A", "AAAA") for a in dns.get(host.host, t).records]
        pairs += [(host.name, a) for a in found] or [(host.name, "")]
    return pairs


def srs_results(
    srs_domain: str, hosts: Sequence[SmarthostConfig], dns: Lookup, out: Outbound
) -> list[Result]:
    addresses = smarthost_addresses(hosts, dns)
    return [
        domain.srs_mx(srs_domain, dns),
        spfcheck.srs_spf(srs_domain, dns, addresses, out.helo or ""),
    ]


@dataclass(frozen=True, slots=True)
class Plan:
    domains: tuple[str, ...]  # sender domains, most stuck first
    senders: dict[str, str]  # a stuck sender address per domain, for SPF macros
    outbound: Outbound
    srs_domain: str | None  # None: no [srs] configured yet, nothing to check there
    smarthosts: tuple[SmarthostConfig, ...]
    dnsbl: tuple[str, ...]


def run_checks(plan: Plan, dns: Lookup, workers: int) -> list[Result]:
    """All DNS checks, sender domains in parallel; results in the plan's order."""
    out = plan.outbound
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        jobs = [
            pool.submit(domain_results, d, dns, out, plan.senders.get(d, "")) for d in plan.domains
        ]
        jobs.append(pool.submit(identity_results, out, dns, plan.dnsbl))
        if plan.srs_domain is not None:
            jobs.append(pool.submit(srs_results, plan.srs_domain, plan.smarthosts, dns, out))
        return [result for job in jobs for result in job.result()]


def probe_targets(groups: Sequence[StuckGroup]) -> list[ProbeTarget]:
    """One target per provider with stuck mail (per peer host when no provider is known)."""
    targets: dict[str, ProbeTarget] = {}
    for group in groups:
        if group.peer is None or not group.peer[1]:
            continue
        host, address = group.peer
        name = host if group.provider == UNKNOWN else group.provider
        if name not in targets:
            targets[name] = ProbeTarget(name, host, address, group.sender, group.recipient)
    return list(targets.values())


async def run_probes(
    targets: Sequence[ProbeTarget], *, port: int, helo: str, timeout: float
) -> list[Result]:
    jobs = [probe(t, port=port, helo=helo, timeout=timeout) for t in targets]
    return list(await asyncio.gather(*jobs))
