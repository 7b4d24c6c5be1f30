"""`queue-rescue flush`: reroute the selected deferred mail through the smarthost."""

from __future__ import annotations

import logging
import os
import re
import sys
import time

import click

from rescue.cli.common import (
    fail,
    inventory_of,
    is_terminal,
    load_config,
    parse_duration,
    run_async,
)
from rescue.cli.output import FlushReporter
from rescue.config import Config
from rescue.dispatch import Dispatcher
from rescue.exitcodes import ExitCode
from rescue.flush import Flush, Summary
from rescue.flush import dry_run as preview
from rescue.journal import Journal
from rescue.lock import InstanceLock
from rescue.model import Selected
from rescue.postfix.commands import Postfix
from rescue.postfix.reader import HeldMessageReader
from rescue.recovery import RecoveryReport, recover
from rescue.select import Selectors, choose
from rescue.srs import SrsRewriter

log = logging.getLogger(__name__)


def selectors_from(
    provider: tuple[str, ...],
    queue_id: tuple[str, ...],
    domain: tuple[str, ...],
    older_than: str | None,
    reason: str | None,
    limit: int | None,
    select_all: bool,
) -> Selectors:
    try:
        reason_re = re.compile(reason, re.IGNORECASE) if reason else None
    except re.error as exc:
        raise click.BadParameter(f"not a valid regex: {exc}", param_hint="--reason") from None
    return Selectors(
        providers=frozenset(p.lower() for p in provider),
        queue_ids=frozenset(queue_id),
        domains=frozenset(d.lower().lstrip("@") for d in domain),
        older_than=parse_duration(older_than) if older_than else None,
        reason=reason_re,
        limit=limit,
        all=select_all,
    )


def select(cfg: Config, selectors: Selectors) -> tuple[list[Selected], Postfix]:
    view = inventory_of(cfg)
    unknown = selectors.providers - set(view.catalog.by_name)
    if unknown:
        names = ", ".join(sorted(view.catalog.by_name))
        raise click.BadParameter(
            f"unknown provider {', '.join(sorted(unknown))} (known: {names})",
            param_hint="--provider",
        )
    now = time.time()
    chosen = []
    for message in view.inventory.messages:
        selected = choose(message, view.inventory.classes[message.queue_id], selectors, now)
        if selected is not None:
            chosen.append(selected)
    chosen.sort(key=lambda s: s.message.arrival_time)  # oldest mail first
    if selectors.limit is not None:
        chosen = chosen[: selectors.limit]
    return chosen, view.postfix


def report_recovery(report: RecoveryReport) -> None:
    if report.empty:
        return
    click.echo(
        f"queue-rescue: recovered from an interrupted run: {len(report.deleted)} accepted "
        f"message(s) deleted, {len(report.released)} released to Postfix",
        err=True,
    )


def confirm(selection: list[Selected], cfg: Config) -> bool:
    recipients = sum(len(s.message.recipients) for s in selection)
    providers = sorted({s.provider for s in selection})
    return click.confirm(
        f"Reroute {len(selection)} messages ({recipients} recipients; "
        f"{', '.join(providers)}) through {cfg.smarthosts[0].name}?",
        default=False,
        err=True,
    )


def execute(
    cfg: Config,
    selection: list[Selected],
    postfix: Postfix,
    journal: Journal,
    reporter: FlushReporter,
) -> Summary:
    flush = Flush(
        queue=postfix,
        journal=journal,
        srs=SrsRewriter.from_config(cfg.srs),
        dispatcher=Dispatcher(cfg.smarthosts, cfg.retry),
        read_envelope=HeldMessageReader(postfix),
        report=reporter,
        primary=cfg.smarthosts[0].name,
    )
    try:
        return run_async(flush.run(selection))
    except KeyboardInterrupt:
        reporter.finish(flush.summary)
        raise


@click.command()
@click.option(
    "--provider",
    "-p",
    multiple=True,
    metavar="NAME",
    help="Messages with a recipient at this provider (repeatable).",
)
@click.option(
    "--queue-id",
    "-q",
    multiple=True,
    metavar="ID",
    help="This queue id, whatever its provider (repeatable).",
)
@click.option(
    "--domain",
    "-d",
    multiple=True,
    metavar="DOMAIN",
    help="Messages with a recipient in this domain (repeatable).",
)
@click.option("--older-than", metavar="AGE", help="Only mail queued longer than AGE (30m, 2h, 1d).")
@click.option("--reason", metavar="REGEX", help="Only recipients whose delay reason matches.")
@click.option(
    "--limit", type=click.IntRange(min=1), metavar="N", help="At most N messages, oldest first."
)
@click.option(
    "--all",
    "select_all",
    is_flag=True,
    help="Every deferred message a provider's reasons say to reroute.",
)
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be rerouted; change nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per message, then a summary."
)
@click.pass_context
def flush(
    ctx: click.Context,
    provider: tuple[str, ...],
    queue_id: tuple[str, ...],
    domain: tuple[str, ...],
    older_than: str | None,
    reason: str | None,
    limit: int | None,
    select_all: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Reroute deferred mail through the smarthost, with SRS senders.

    Selected messages are put on hold, sent to the first [[smarthost]] that
    takes them (the envelope sender rewritten with SRS), deleted from Postfix
    once accepted, and released back to Postfix's deferred queue otherwise.
    A selector is required (or --all).

    \b
    Examples:
      queue-rescue flush --provider ionos --dry-run
      queue-rescue flush --provider ionos --older-than 30m --yes
      queue-rescue flush --queue-id 4F2A81C0D3 --json
    """
    selectors = selectors_from(provider, queue_id, domain, older_than, reason, limit, select_all)
    if selectors.empty:
        raise click.UsageError(
            "say which mail to reroute: --provider, --queue-id, --domain, --older-than, "
            "--reason, or --all"
        )
    cfg = load_config(ctx)
    if dry_run:
        selection, postfix = select(cfg, selectors)
        reporter = FlushReporter(
            as_json=as_json, total=len(selection), interactive=False, dry_run=True
        )
        srs = SrsRewriter.from_config(cfg.srs)
        reporter.finish(preview(selection, srs, cfg.smarthosts[0].name, reporter))
        return

    with InstanceLock(cfg.journal.lock_path, "flush"):
        journal = Journal(cfg.journal.path)
        try:
            journal.begin_run("flush", os.getpid())
            postfix = Postfix(cfg.postfix)
            report_recovery(recover(journal, postfix))
            selection, postfix = select(cfg, selectors)
            if not selection:
                click.echo("Nothing to reroute: no deferred message matches.", err=True)
            interactive = is_terminal(sys.stdin) and is_terminal(sys.stderr)
            if selection and not yes and interactive and not confirm(selection, cfg):
                fail(ExitCode.USAGE, "not confirmed; nothing was changed")
            reporter = FlushReporter(
                as_json=as_json, total=len(selection), interactive=interactive, dry_run=False
            )
            summary = execute(cfg, selection, postfix, journal, reporter)
            journal.end_run({k: int(v) for k, v in summary.counts.items()})
        finally:
            journal.close()
    reporter.finish(summary)
    ctx.exit(int(ExitCode.OK if summary.complete else ExitCode.PARTIAL))
