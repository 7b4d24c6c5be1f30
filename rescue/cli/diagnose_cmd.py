"""`queue-rescue diagnose`: why providers refuse the mail, and what to fix in DNS."""

from __future__ import annotations

import ipaddress
import sys
from typing import TYPE_CHECKING

import click

from rescue.cli.common import load_config, run_async
from rescue.config import Config
from rescue.errors import PostfixError
from rescue.exitcodes import ExitCode
from rescue.postfix.commands import Postfix

if TYPE_CHECKING:
    from rescue.classify.shape import Item
    from rescue.diagnose.stuck import StuckGroup


def _helo_from(postfix: Postfix) -> str | None:
    try:
        return postfix.postconf("smtp_helo_name", expand=True) or None
    except PostfixError:
        return None


def _ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        raise click.BadParameter(f"not an IP address: {value!r}", param_hint="--ip") from None


def _domain(value: str) -> str:
    name = value.strip().lower().rstrip(".")
    if "@" in name:
        name = name.rpartition("@")[2]
    if not name or " " in name:
        raise click.BadParameter(f"not a domain: {value!r}", param_hint="--sender-domain")
    return name


@click.command()
@click.option(
    "--sender-domain",
    "domains",
    multiple=True,
    metavar="DOMAIN",
    help="Check this sender domain (repeatable) instead of those of the deferred mail.",
)
@click.option("--ip", metavar="IP", help="The sending IP [default: [diagnose] public_ip].")
@click.option("--helo", metavar="NAME", help="The HELO name [default: Postfix's smtp_helo_name].")
@click.option(
    "--probe",
    is_flag=True,
    help="Ask each provider with stuck mail live: MAIL FROM and RCPT TO, never DATA.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per result, then a summary.")
@click.pass_context
def diagnose(
    ctx: click.Context,
    domains: tuple[str, ...],
    ip: str | None,
    helo: str | None,
    probe: bool,
    as_json: bool,
) -> None:
    """Tell why providers refuse the deferred mail, and what to fix in DNS.

    Checks the envelope sender domains of the deferred mail (most stuck first):
    that they exist, their MX (not a CNAME, with addresses), name servers, SPF and
    DMARC; the sending IP's PTR and block listings, the HELO name; the SRS
    domain. Each reply a provider keeps giving is tied to the findings that
    explain it. Exit status 0 when no check failed, 1 when one did, 2 for bad
    usage or configuration.
    """
    cfg = load_config(ctx)
    chosen = tuple(dict.fromkeys(_domain(d) for d in domains))
    failed = _diagnose(cfg, chosen, _ip(ip), helo, probe=probe, as_json=as_json)
    if failed:
        ctx.exit(int(ExitCode.PARTIAL))


def _stuck(
    cfg: Config, domains: tuple[str, ...], notes: list[str]
) -> tuple[list[Item], list[StuckGroup]]:
    """The deferred recipients and their (provider, reason) groups; none when the queue
    cannot be read and the sender domains were given."""
    from rescue.classify.shape import items  # noqa: PLC0415
    from rescue.cli.queueview import inventory_of  # noqa: PLC0415
    from rescue.diagnose.stuck import stuck_groups  # noqa: PLC0415

    try:
        view = inventory_of(cfg)
    except PostfixError as exc:
        if not domains:
            raise
        notes.append(f"the queue could not be read ({exc}): no stuck mail to explain")
        return [], []
    entries = list(items(view.inventory.messages, view.inventory.classes))
    return entries, stuck_groups(entries, view.catalog)


def _diagnose(
    cfg: Config,
    domains: tuple[str, ...],
    ip: str | None,
    helo: str | None,
    *,
    probe: bool,
    as_json: bool,
) -> bool:
    """Run every check and print the report; True when a check failed."""
    from rescue.cli.output import console  # noqa: PLC0415  (rich: after the queue listing)
    from rescue.diagnose import report  # noqa: PLC0415
    from rescue.diagnose.explain import explain  # noqa: PLC0415
    from rescue.diagnose.lookup import DnsLookup  # noqa: PLC0415
    from rescue.diagnose.result import Status  # noqa: PLC0415
    from rescue.diagnose.run import (  # noqa: PLC0415
        PROBE_TIMEOUT,
        Plan,
        outbound,
        probe_targets,
        run_checks,
        run_probes,
    )
    from rescue.diagnose.stuck import sender_domains  # noqa: PLC0415

    notes: list[str] = []
    entries, groups = _stuck(cfg, domains, notes)
    subjects = domains or tuple(sender_domains(entries))
    if not subjects:
        notes.append("no deferred mail with a sender domain: give --sender-domain DOMAIN")
    senders: dict[str, str] = {}
    for item in entries:
        sender = item.message.sender
        senders.setdefault(sender.rpartition("@")[2].lower(), sender)
    postfix = Postfix(cfg.postfix)
    out = outbound(ip, cfg.diagnose.public_ip, helo, lambda: _helo_from(postfix))
    notes += out.notes
    # The budget bounds the diagnosis (DNS and probes); reading the queue is not part of it.
    dns = DnsLookup(cfg.dns, budget=cfg.diagnose.budget, server_port=cfg.diagnose.ns_port)
    plan = Plan(
        domains=subjects,
        senders=senders,
        outbound=out,
        srs_domain=cfg.srs.domain if cfg.srs is not None else None,
        smarthosts=cfg.smarthosts,
        dnsbl=cfg.diagnose.dnsbl,
    )
    results = run_checks(plan, dns, workers=min(cfg.dns.concurrency, 8))
    if cfg.srs is None:
        notes.append("no [srs] configured: the SRS domain's checks are skipped")
    if probe:
        targets = probe_targets(groups)
        if not targets:
            notes.append("--probe: no stuck mail names the host Postfix talked to")
        timeout = max(min(PROBE_TIMEOUT, dns.remaining()), 1.0)
        results += run_async(
            run_probes(targets, port=cfg.diagnose.probe_port, helo=out.helo or "", timeout=timeout)
        )
    explanations = explain(groups, results)
    if as_json:
        for note in notes:
            click.echo(f"queue-rescue: note: {note}", err=True)
        report.show_json(sys.stdout, results, explanations)
    else:
        report.show_text(console(), results, explanations, notes)
    return any(r.status is Status.FAIL for r in results)
