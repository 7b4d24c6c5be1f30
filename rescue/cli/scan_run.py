"""What `scan` does once its options are known; shared by the click command and rescue.start.

Imports neither click nor rich: a plain scan piped to another program runs without them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue.config import Config
from rescue.model import QueuedMessage
from rescue.postfix.commands import Postfix
from rescue.postfix.listing import BadLine

# rescue.classify.shape.By's values, spelled out so that starting a scan does not import the shape.
BY_CHOICES = ("provider", "domain", "reason", "sender-domain")


@dataclass(frozen=True)
class ScanOptions:
    by: str = BY_CHOICES[0]
    show_reasons: bool = False
    as_json: bool = False
    show_unknown_mx: bool = False
    no_dns: bool = False
    spool: Path | None = None


def run_scan(
    cfg: Config,
    options: ScanOptions,
    listing: Iterator[QueuedMessage | BadLine] | None = None,
) -> None:
    """Print the scan; `listing` is live Postfix's listing if it was started already."""
    if options.spool is None:
        source = None
        listing = listing or Postfix(cfg.postfix).listing()  # showq starts now, if not yet
    else:
        from rescue.sources.spool import SpoolQueue  # noqa: PLC0415

        source = SpoolQueue(options.spool)
        listing = source.listing()
    from rescue.cli import scan_view  # noqa: PLC0415  (the classifier: imported meanwhile)
    from rescue.cli.queueview import inventory_of  # noqa: PLC0415

    view = inventory_of(cfg, use_dns=not options.no_dns, source=source, listing=listing)
    scan_view.show(
        view,
        by=options.by,
        show_reasons=options.show_reasons,
        as_json=options.as_json,
        no_dns=options.no_dns,
        show_unknown_mx=options.show_unknown_mx,
    )
