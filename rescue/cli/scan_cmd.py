"""`queue-rescue scan`: what is deferred, where it wants to go, since when, and why.

The scan itself is in scan_run (a plain scan runs it without click: rescue.start).
"""

from __future__ import annotations

from pathlib import Path

import click

from rescue.cli.common import load_config
from rescue.cli.scan_run import BY_CHOICES, ScanOptions, run_scan


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
    run_scan(cfg, ScanOptions(by, show_reasons, as_json, show_unknown_mx, no_dns, spool))
