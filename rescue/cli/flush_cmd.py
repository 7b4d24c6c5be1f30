"""`queue-rescue flush`: reroute the selected deferred mail through the smarthost.

From live Postfix, from a copy of a queue directory (`--spool DIR`), or from an
export (`--from DIR`). A copy and an export keep their own journal and lock in
DIR/queue-rescue/: recovery after a crash then only ever acts on the place the
crashed run worked on, never on another source's messages.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import click

from rescue.classify.inventory import Inventory
from rescue.classify.select import Selectors, choose
from rescue.cli.asking import confirmed_keys
from rescue.cli.boundary import end_at_once
from rescue.cli.common import (
    is_terminal,
    load_config,
    run_async,
)
from rescue.cli.flush_report import FlushReporter
from rescue.cli.output import json_line
from rescue.cli.queueview import QueueReader
from rescue.cli.selectors import selector_options
from rescue.cli.waiting import queue_lock, wait_option
from rescue.config import Config, JournalConfig, SmarthostConfig, sending
from rescue.exitcodes import ExitCode
from rescue.flush.core import Flush
from rescue.flush.parallel import SPLIT_FROM, ParallelFlush
from rescue.flush.plan import EnvelopeReader, Outcome, Summary
from rescue.flush.plan import dry_run as preview
from rescue.journal.recovery import RecoveryReport, recover
from rescue.journal.store import Journal
from rescue.model import Classification, QueuedMessage, Selected
from rescue.postfix.commands import Postfix
from rescue.postfix.queue import MailQueue
from rescue.postfix.reader import HeldMessageReader
from rescue.smarthost.pool import Dispatcher
from rescue.sources.export import ExportError, ExportQueue
from rescue.sources.spool import SpoolError, SpoolQueue, settle_strays
from rescue.srs.rewriter import SrsRewriter

# A place other than live Postfix that mail is rescued from.
Copy = SpoolQueue | ExportQueue

log = logging.getLogger(__name__)

# A flush reads the queue's listing this many entries at a time: it holds and sends
# them while it reads on, so memory holds a few parts, not the queue.
LISTING_PART = 500
# A flush splits over at most this many processes (see rescue.flush.parallel).
MAX_WORKERS = 4


def whole(message: QueuedMessage, classes: Sequence[Classification]) -> Selected | None:
    """`flush --from` without selectors: every pending pair, whatever its provider."""
    if message.queue_name != "deferred" or not message.recipients:
        return None
    known = [c for c in classes if c.provider is not None] or [Classification(provider=None)]
    return Selected(message, known[0].provider or "-", known[0].reason_matched, tuple(classes))


class Chooser:
    """Which listed messages a flush takes: by the selectors, or all of an export."""

    def __init__(
        self,
        reader: QueueReader,
        selectors: Selectors,
        *,
        everything: bool,
        only: frozenset[str] | None = None,
    ) -> None:
        """`only`: the keys (QueuedMessage.key) of the messages that may be taken at all,
        those the admin confirmed; None: no such limit."""
        unknown = selectors.providers - set(reader.catalog.by_name)
        if unknown:
            names = ", ".join(sorted(reader.catalog.by_name))
            raise click.BadParameter(
                f"unknown provider {', '.join(sorted(unknown))} (known: {names})",
                param_hint="--provider",
            )
        self.reader = reader
        self.selectors = selectors
        self.everything = everything
        self.only = only
        self.now = time.time()

    def chosen(self, part: Inventory) -> list[Selected]:
        """The messages of one part of the listing to take, oldest first."""
        out = []
        for message in part.messages:
            if self.only is not None and message.key not in self.only:
                continue
            classes = part.classes[message.queue_id]
            if self.everything:
                selected = whole(message, classes)
            else:
                selected = choose(message, classes, self.selectors, self.now)
            if selected is not None:
                out.append(selected)
        out.sort(key=_arrival)
        return out

    async def batches(self) -> AsyncIterator[list[Selected]]:
        """The selection as the listing is read, LISTING_PART entries at a time.

        Oldest first within each part; with --limit N, the N oldest of the whole
        queue (the listing is read to its end first, keeping N).
        """
        limit = self.selectors.limit
        if limit is not None:
            yield await self._oldest(limit)
            return
        async for part in self.reader.parts(LISTING_PART):
            chosen = self.chosen(part)
            if chosen:
                yield chosen

    async def _oldest(self, limit: int) -> list[Selected]:
        kept: dict[str, Selected] = {}
        async for part in self.reader.parts(LISTING_PART):
            for selected in self.chosen(part):
                kept.setdefault(selected.message.queue_id, selected)  # listed twice: once
            kept = {
                s.message.queue_id: s for s in heapq.nsmallest(limit, kept.values(), key=_arrival)
            }
        return list(kept.values())

    async def all(self) -> list[Selected]:
        """The whole selection, oldest first, each message once."""
        chosen: dict[str, Selected] = {}
        async for batch in self.batches():
            for selected in batch:
                chosen.setdefault(selected.message.queue_id, selected)
        return sorted(chosen.values(), key=_arrival)


def _arrival(selected: Selected) -> int:
    return selected.message.arrival_time


def select(
    cfg: Config,
    selectors: Selectors,
    source: MailQueue | None = None,
    *,
    everything: bool = False,
    only: frozenset[str] | None = None,
) -> list[Selected]:
    """The messages to take, oldest first; `everything` ignores providers (an export);
    `only`: as Chooser's."""
    reader = QueueReader(cfg, source=source, use_dns=not everything)
    return run_async(Chooser(reader, selectors, everything=everything, only=only).all())


def open_copy(spool: Path | None, from_dir: Path | None) -> Copy | None:
    """The spool copy or export named on the command line, checked; None: live Postfix."""
    if spool is not None and from_dir is not None:
        raise click.UsageError("--spool and --from exclude each other")
    copy: Copy
    if spool is not None:
        copy, hint = SpoolQueue(spool), "--spool"
    elif from_dir is not None:
        copy, hint = ExportQueue(from_dir), "--from"
    else:
        return None
    try:
        copy.check()
    except (SpoolError, ExportError) as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None
    return copy


def recover_copy(journal: Journal, copy: Copy) -> RecoveryReport:
    """Recovery, then whatever a lost journal left in DIR/queue-rescue/held/."""
    first = recover(journal, copy)
    strays = settle_strays(journal, copy)
    return RecoveryReport(
        deleted=first.deleted + strays.deleted,
        released=first.released + strays.released,
        gone=first.gone,
        uncertain=first.uncertain,
    )


def report_recovery(report: RecoveryReport, *, as_json: bool = False) -> None:
    """One line on stderr; each message that may now be delivered twice is named, also
    as a JSON line on stdout with --json."""
    if report.empty:
        return
    uncertain = ""
    if report.uncertain:
        names = ", ".join(u.queue_id for u in report.uncertain)
        uncertain = (
            f"; {len(report.uncertain)} of them were being sent when it stopped and may be "
            f"delivered twice: {names}"
        )
    click.echo(
        f"queue-rescue: recovered from an interrupted run: {len(report.deleted)} accepted "
        f"message(s) deleted, {len(report.released)} released to Postfix{uncertain}",
        err=True,
    )
    if as_json:
        json_line(
            {
                "recovery": {
                    "deleted": len(report.deleted),
                    "released": len(report.released),
                    "gone": len(report.gone),
                    "uncertain": [
                        {
                            "queue_id": u.queue_id,
                            "smarthost": u.smarthost,
                            "action": u.action,
                            "uncertain": True,
                        }
                        for u in report.uncertain
                    ],
                }
            }
        )


def question(selection: list[Selected], cfg: Config) -> str:
    recipients = sum(len(s.message.recipients) for s in selection)
    providers = sorted({s.provider for s in selection})
    return (
        f"Reroute {len(selection)} messages ({recipients} recipients; "
        f"{', '.join(providers)}) through {sending(cfg).primary.name}?"
    )


def worker_count(requested: int | None, smarthosts: Sequence[SmarthostConfig]) -> int:
    """How many processes send: as asked, else one per CPU (up to MAX_WORKERS); never
    more than a smarthost's max_connections, which the workers share."""
    wanted = requested if requested is not None else min(os.cpu_count() or 1, MAX_WORKERS)
    return max(1, min(wanted, *(h.max_connections for h in smarthosts)))


def execute(
    cfg: Config,
    selection: list[Selected] | AsyncIterator[list[Selected]],
    queue: MailQueue,
    read_envelope: EnvelopeReader,
    journal: Journal,
    reporter: FlushReporter,
    *,
    read_in_thread: bool,
    prefetch_from: str | None = None,
    workers: int = 1,
    split_from: int = SPLIT_FROM,
    repair: Callable[[], None] | None = None,
) -> Summary:
    """Flush the selection: in this process, or (`workers` > 1, and `repair` to run the
    journal's recovery should a worker die) split over worker processes when its first
    part has at least `split_from` messages."""
    send = sending(cfg)
    srs = SrsRewriter.from_config(send.srs)

    def build(
        own: Journal,
        hosts: Sequence[SmarthostConfig],
        report: Callable[[Outcome], None],
        prefetch: str | None = None,
    ) -> Flush:
        return Flush(
            queue=queue,
            journal=own,
            srs=srs,
            dispatcher=Dispatcher(hosts, cfg.retry),
            read_envelope=read_envelope,
            report=report,
            primary=send.primary.name,
            read_in_thread=read_in_thread,
            prefetch_from=prefetch,
        )

    def single() -> Flush:
        return build(journal, send.smarthosts, reporter, prefetch_from)

    def worker(index: int, report: Callable[[Outcome], None]) -> Flush:
        """In worker `index`: its own journal connection and its share of the sessions."""
        own = Journal(journal.path, worker=index)
        own.run_id = journal.run_id
        hosts = [replace(h, max_connections=h.max_connections // workers) for h in send.smarthosts]
        return build(own, hosts, report)

    flush: Flush | ParallelFlush
    if workers > 1 and repair is not None:
        flush = ParallelFlush(
            workers=workers,
            factory=worker,
            single=single,
            report=reporter,
            repair=repair,
            split_from=split_from,
            around_fork=journal.closed_for_fork,
        )
    else:
        flush = single()
    try:
        return run_async(flush.run(selection))
    except KeyboardInterrupt:
        # The output's reader may have gone too (Ctrl-C reaches `| jq` as well).
        with contextlib.suppress(OSError):
            reporter.finish(flush.summary)
        if flush.left_on_hold:
            click.echo(
                f"queue-rescue: {len(flush.left_on_hold)} message(s) could not be given back "
                f"and stay on hold until the next run: {', '.join(flush.left_on_hold)}",
                err=True,
            )
        raise


def show_dry_run(cfg: Config, selection: list[Selected], *, as_json: bool) -> None:
    reporter = FlushReporter(as_json=as_json, total=len(selection), interactive=False, dry_run=True)
    send = sending(cfg)
    srs = SrsRewriter.from_config(send.srs)
    reporter.finish(preview(selection, srs, send.primary.name, reporter))


FOLDER = click.Path(file_okay=False, path_type=Path)


@click.command()
@selector_options("reroute")
@click.option("--dry-run", "-n", is_flag=True, help="Show what would be rerouted; change nothing.")
@click.option(
    "--yes",
    "-y",
    is_flag=True,
    help="Do not ask first (without it, and with no terminal to ask on, nothing is done).",
)
@click.option(
    "--json", "as_json", is_flag=True, help="One JSON object per message, then a summary."
)
@click.option(
    "--spool",
    type=FOLDER,
    metavar="DIR",
    help="Work on a copy of a Postfix queue directory (no Postfix may run on it).",
)
@click.option(
    "--from",
    "from_dir",
    type=FOLDER,
    metavar="DIR",
    help="Send an export (queue-rescue export): all of it unless selectors narrow it.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 16),
    metavar="N",
    help="Processes that hold and send, sharing the smarthosts' max_connections "
    f"(default: one per CPU, at most {MAX_WORKERS}, from {SPLIT_FROM} messages on; "
    "1: one process). Live Postfix only.",
)
@wait_option
@click.pass_context
def flush(
    ctx: click.Context,
    selectors: Selectors,
    dry_run: bool,
    yes: bool,
    as_json: bool,
    spool: Path | None,
    from_dir: Path | None,
    workers: int | None,
    wait: float,
) -> None:
    """Reroute deferred mail through the smarthost, with SRS senders.

    Selected messages are put on hold, sent to the first [[smarthost]] that
    takes them (the envelope sender rewritten with SRS), deleted from Postfix
    once accepted, and released back to Postfix's deferred queue otherwise.
    A selector is required (or --all), except with --from.

    With --spool DIR or --from DIR the messages come from a copy of a queue
    directory or from an export instead: what is being sent moves to
    DIR/queue-rescue/held/, what was sent to DIR/queue-rescue/done/; nothing
    is deleted. That folder also holds the journal of these runs.

    While the service (`queue-rescue run`) or another flush has the queue, a
    flush waits for it (--wait); the service starts no cycle meanwhile.

    \b
    Examples:
      queue-rescue flush --provider ionos --dry-run
      queue-rescue flush --provider ionos --older-than 30m --yes
      queue-rescue flush --queue-id 4F2A81C0D3 --yes --json
      queue-rescue flush --spool /mnt/oldhost/var/spool/postfix --provider ionos
      queue-rescue flush --from /srv/rescued-mail --yes
    """
    everything = from_dir is not None and selectors.empty
    if selectors.empty and not everything:
        raise click.UsageError(
            "say which mail to reroute: --provider, --queue-id, --domain, --older-than, "
            "--reason, or --all"
        )
    copy = open_copy(spool, from_dir)
    cfg = load_config(ctx)
    sending(cfg)  # a flush sends: [srs] and [[smarthost]] before anything else
    if dry_run:
        show_dry_run(cfg, select(cfg, selectors, copy, everything=everything), as_json=as_json)
        return
    only = confirmed_keys(
        yes,
        "flush",
        lambda: select(cfg, selectors, copy, everything=everything),
        lambda asked: question(asked, cfg),
    )

    journal_cfg = cfg.journal if copy is None else JournalConfig(copy.journal_path)
    with queue_lock(journal_cfg.lock_path, "flush", wait):
        journal = Journal(journal_cfg.path)
        try:
            journal.begin_run("flush", os.getpid(), keep=journal_cfg.keep)
            queue: MailQueue
            read_envelope: EnvelopeReader
            read_in_thread = False  # files of a copy or an export: read in place
            prefetch_from: str | None = None
            repair: Callable[[], None] | None = None
            if copy is None:
                postfix = Postfix(cfg.postfix)

                def repair() -> None:
                    report = recover(journal, postfix)
                    try:
                        report_recovery(report, as_json=as_json)
                    except OSError as exc:  # the output's reader has gone; recovery is done
                        log.error("cannot report the recovery (%r)", exc)

                repair()
                reader = HeldMessageReader(postfix)
                queue, read_envelope, read_in_thread = postfix, reader, not reader.direct
                if reader.queue_dir is not None:
                    prefetch_from = str(reader.queue_dir)
            else:
                report_recovery(recover_copy(journal, copy), as_json=as_json)
                queue, read_envelope = copy, copy.read_envelope
            chooser = Chooser(
                QueueReader(cfg, source=copy, use_dns=not everything),
                selectors,
                everything=everything,
                only=only,
            )
            interactive = is_terminal(sys.stdin) and is_terminal(sys.stderr)
            reporter = FlushReporter(
                as_json=as_json,
                total=len(only) if only is not None else None,
                interactive=interactive,
                dry_run=False,
            )
            summary = execute(
                cfg,
                chooser.batches(),
                queue,
                read_envelope,
                journal,
                reporter,
                read_in_thread=read_in_thread,
                prefetch_from=prefetch_from,
                workers=worker_count(workers, sending(cfg).smarthosts),
                split_from=SPLIT_FROM if workers is None else 1,  # asked for: always
                repair=repair,
            )
            if not summary.selected:
                click.echo("Nothing to reroute: no deferred message matches.", err=True)
            journal.end_run({k: int(v) for k, v in summary.counts.items()})
        finally:
            journal.close()
    reporter.finish(summary)
    end_at_once()  # the journal, the lock and every helper are closed
    ctx.exit(int(ExitCode.OK if summary.complete else ExitCode.PARTIAL))
