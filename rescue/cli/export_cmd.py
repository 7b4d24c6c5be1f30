"""`queue-rescue export`: move the selected deferred mail out of Postfix into a folder.

Each message becomes a pair NAME.eml + NAME.json (rescue/sources/export.py), sent later,
here or on another host, with `flush --from DIR`. As in the flush, the journal
records each step before it is taken: messages are held, written and fsynced,
and only then deleted from Postfix (left on hold with --keep); whatever was not
written is released, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict
from pathlib import Path

import click

from rescue.classify.select import Selectors
from rescue.cli.asking import confirmed_keys, sigterm_interrupts
from rescue.cli.common import load_config
from rescue.cli.flush_cmd import FOLDER, report_recovery, select
from rescue.cli.output import age, console, json_line, print_table, show_sender
from rescue.cli.selectors import selector_options
from rescue.cli.waiting import queue_lock, wait_option
from rescue.config import JournalConfig
from rescue.errors import PostfixError
from rescue.exitcodes import ExitCode
from rescue.flush.export import (
    ACTIONS,
    EXPORTED,
    Export,
    ExportOutcome,
    ExportSummary,
    would_export,
)
from rescue.journal.lock import InstanceLock
from rescue.journal.recovery import recover
from rescue.journal.store import (
    Journal,
)
from rescue.model import Selected
from rescue.postfix.commands import Postfix
from rescue.postfix.reader import HeldMessageReader
from rescue.sources.export import ExportQueue
from rescue.sources.spool import fsync_dir

log = logging.getLogger(__name__)


class ExportReporter:
    """JSON lines, or a line per message and a summary (a table for a dry run)."""

    def __init__(self, *, as_json: bool, dry_run: bool) -> None:
        self.as_json = as_json
        self.dry_run = dry_run
        self.outcomes: list[ExportOutcome] = []

    def __call__(self, outcome: ExportOutcome) -> None:
        if self.as_json:
            json_line(asdict(outcome))
        else:
            self.outcomes.append(outcome)

    def finish(self, summary: ExportSummary) -> None:
        if self.as_json:
            json_line({"summary": summary.as_dict()})
            return
        out = console()
        now = time.time()
        if self.dry_run:
            rows = [
                (
                    o.queue_id,
                    age(now - o.arrival_time),
                    show_sender(o.sender),
                    "\n".join(o.recipients),
                    o.provider or "-",
                    o.eml or "-",
                )
                for o in self.outcomes
            ]
            headers = ("queue id", "age", "sender", "recipients", "provider", "file")
            if rows:
                print_table(out, "Dry run: would export (nothing was changed)", headers, rows)
            out.print("Dry run: nothing was changed.")
        else:
            for o in self.outcomes:
                where = f" to {o.eml}" if o.action == EXPORTED else ""
                detail = f": {o.detail}" if o.detail else ""
                out.print(f"{o.queue_id} {o.action}{where}{detail}", markup=False)
        counts = summary.as_dict()
        words = [f"{counts['selected']} selected"]
        words += [f"{n} {a}" for a in ACTIONS if (n := summary.counts[a])]
        out.print("Summary: " + ", ".join(words) + f" in {summary.elapsed:.1f}s", markup=False)


def prepare_folder(folder: Path) -> None:
    """Create the export folder (private: it holds mail) and make its entry durable."""
    try:
        if not folder.is_dir():
            folder.mkdir(mode=0o700, parents=True)
            fsync_dir(folder.parent)
    except OSError as exc:
        raise click.BadParameter(f"cannot create {folder}: {exc}", param_hint="--to") from None


def hostname_of(postfix: Postfix) -> str | None:
    try:
        return postfix.postconf("myhostname") or None
    except PostfixError:
        return None


def question(selection: list[Selected], folder: Path, keep: bool) -> str:
    recipients = sum(len(s.message.recipients) for s in selection)
    then = "leave them on hold" if keep else "delete them from Postfix"
    return f"Export {len(selection)} messages ({recipients} recipients) to {folder} and {then}?"


@click.command()
@click.option("--to", "folder", type=FOLDER, required=True, metavar="DIR", help="Export here.")
@selector_options("move")
@click.option("--keep", is_flag=True, help="Leave exported messages on hold in Postfix.")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be exported; change nothing.")
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Do not ask first (without it, and with no terminal to ask on, nothing is done).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per message, then a summary."
)
@wait_option
@click.pass_context
def export(
    ctx: click.Context,
    folder: Path,
    selectors: Selectors,
    keep: bool,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    wait: float,
) -> None:
    """Move deferred mail out of Postfix into DIR, to send it later with `flush --from DIR`.

    Selected messages are put on hold, written as DIR/QUEUEID.eml (the message
    as queued) and DIR/QUEUEID.json (its envelope), fsynced, and only then
    deleted from Postfix (--keep leaves them on hold). A message that cannot be
    written is released to Postfix's deferred queue. Selectors as for flush.

    \b
    Examples:
      queue-rescue export --to /srv/rescued-mail --provider ionos --dry-run
      queue-rescue export --to /srv/rescued-mail --provider ionos --yes --json
    """
    if selectors.empty:
        raise click.UsageError(
            "say which mail to export: --provider, --queue-id, --domain, --older-than, "
            "--reason, or --all"
        )
    cfg = load_config(ctx)
    folder = folder.absolute()
    if dry_run:
        reporter = ExportReporter(as_json=as_json, dry_run=True)
        summary = ExportSummary()
        for selected in select(cfg, selectors):
            outcome = would_export(selected, folder)
            summary.add(outcome)
            reporter(outcome)
        summary.elapsed = time.monotonic() - summary.started
        reporter.finish(summary)
        return

    only = confirmed_keys(
        yes,
        "export",
        lambda: select(cfg, selectors),
        lambda asked: question(asked, folder, keep),
    )
    prepare_folder(folder)
    # The folder's own lock keeps a `flush --from` on it out while we write into it.
    folder_lock = JournalConfig(ExportQueue(folder).journal_path).lock_path
    with (
        queue_lock(cfg.journal.lock_path, "export", wait),
        InstanceLock(folder_lock, "export"),
    ):
        journal = Journal(cfg.journal.path)
        try:
            journal.begin_run("export", os.getpid(), keep=cfg.journal.keep)
            postfix = Postfix(cfg.postfix)
            report_recovery(recover(journal, postfix), as_json=as_json)
            selection = select(cfg, selectors, only=only)
            if not selection:
                click.echo("Nothing to export: no deferred message matches.", err=True)
            reporter = ExportReporter(as_json=as_json, dry_run=False)
            run = Export(
                queue=postfix,
                read_envelope=HeldMessageReader(postfix),
                journal=journal,
                folder=folder,
                keep=keep,
                hostname=hostname_of(postfix),
                report=reporter,
            )
            try:
                with sigterm_interrupts():
                    summary = run.run(selection)
            except KeyboardInterrupt:
                reporter.finish(run.summary)
                raise
            journal.end_run(dict(summary.counts))
        finally:
            journal.close()
    reporter.finish(summary)
    ctx.exit(int(ExitCode.OK if summary.complete else ExitCode.PARTIAL))
