"""`queue-rescue scan`: what is deferred, where it wants to go, since when, and why.

The listing starts first (for a plain live scan already in rescue.start, before
the command line is parsed); the table's modules load while Postfix's showq
reads the queue (most of a large scan's time).
"""

from __future__ import annotations

from pathlib import Path

import click

from rescue.cli.common import load_config
from rescue.postfix.commands import Postfix
from rescue.start import take_listing

# rescue.classify.shape.By's values, spelled out so that starting a scan does not import the shape.
BY_CHOICES = ("provider", "domain", "reason", "sender-domain")


@click.command()
@click.option(
    "--by",
    "by",
    type=click.Choice(BY_CHOICES),
    default=BY_CHOICES[0],
    show_default=True,
    help="What the rows of the table are.",
)
@click.option(
    "--reasons",
    "show_reasons",
    is_flag=True,
    help="List each distinct reason with its provider and the catalog's advice.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per queued message (with --reasons: per distinct reason).",
)
@click.option(
    "--unknown-mx",
    "show_unknown_mx",
    is_flag=True,
    help="Only list the MX hosts no provider matched, by registered domain, with counts.",
)
@click.option("--no-dns", is_flag=True, help="Do not look up MX records.")
@click.option(
    "--spool",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    metavar="DIR",
    help="Scan a copy of a Postfix queue directory instead of live Postfix.",
)
@click.pass_context
def scan(
    ctx: click.Context,
    by: str,
    show_reasons: bool,
    as_json: bool,
    show_unknown_mx: bool,
    no_dns: bool,
    spool: Path | None,
) -> None:
    """Show the deferred queue like qshape, by provider and age.

    Rows count pending recipients per age bucket (minutes; a bucket holds ages
    below its limit, 1280+ the rest) and the messages they belong to. Recipients
    no provider could be named for are listed below the table with the reason
    (a DNS error, MX hosts of several providers), and then the MX hosts no
    provider matched, grouped by registered domain with recipient counts.
    Output is a table on a terminal and tab-separated when piped.
    """
    cfg = load_config(ctx)
    if spool is None:
        source = None
        # Started before the command line was parsed (rescue.start), or now.
        listing = take_listing(cfg.postfix) or Postfix(cfg.postfix).listing()
    else:
        from rescue.sources.spool import SpoolQueue  # noqa: PLC0415

        source = SpoolQueue(spool)
        listing = source.listing()
    from rescue.cli import scan_view  # noqa: PLC0415  (rich and the classifier: imported meanwhile)
    from rescue.cli.queueview import inventory_of  # noqa: PLC0415

    view = inventory_of(cfg, use_dns=not no_dns, source=source, listing=listing)
    scan_view.show(
        view,
        by=by,
        show_reasons=show_reasons,
        as_json=as_json,
        no_dns=no_dns,
        show_unknown_mx=show_unknown_mx,
    )
