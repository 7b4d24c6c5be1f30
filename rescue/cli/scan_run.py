"""What `scan` does once its options are known; shared by the click command and rescue.start.

Imports neither click nor rich: a plain scan piped to another program runs without them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rescue.config import Config
from rescue.model import QueuedMessage
from rescue.postfix.commands import Postfix
from rescue.postfix.files_listing import FilesListing, dirs_of
from rescue.postfix.listing import BadLine

if TYPE_CHECKING:
    from rescue.postfix.files_listing import PostfixDirs

log = logging.getLogger(__name__)

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

    @property
    def deferred_only(self) -> bool:
        """True when the output shows the deferred queue only (all but the --json listing)."""
        return not self.as_json or self.show_reasons or self.show_unknown_mx


def _files_listing(cfg: Config, early: FilesListing | None) -> FilesListing | None:
    """The helper reading the deferred queue's files: `early` if it reads the configured
    Postfix's (rescue.start starts it before the config is loaded), else a new one."""
    dirs = dirs_of(cfg.postfix)
    if early is not None:
        if _same_dirs(early.dirs, dirs):
            return early
        early.cancel()
    try:
        return FilesListing(dirs)
    except OSError as exc:
        log.debug("asking showq: %s", exc)
        return None


def _same_dirs(a: PostfixDirs, b: PostfixDirs) -> bool:
    return all(
        (x is None and y is None) or (x is not None and y is not None and Path(x) == Path(y))
        for x, y in zip(a, b, strict=True)
    )


def run_scan(
    cfg: Config,
    options: ScanOptions,
    listing: Iterator[QueuedMessage | BadLine] | None = None,
    early: FilesListing | None = None,
) -> None:
    """Print the scan; `listing` is live Postfix's listing if it was started already,
    `early` a helper reading the deferred queue's files (see rescue.start).

    A scan that shows the deferred queue only reads its files, as showq would
    (rescue.postfix.deferred_files), when it can; else it asks showq.
    """
    source = None
    relayhost = None
    files = None
    try:
        if options.spool is not None:
            from rescue.sources.spool import SpoolQueue  # noqa: PLC0415

            source = SpoolQueue(options.spool)
            listing = source.listing()
        elif listing is None and options.deferred_only:
            files = _files_listing(cfg, early)
        if files is not early and early is not None:
            early.cancel()
        if files is None:
            listing = listing or Postfix(cfg.postfix).listing()  # showq starts now, if not yet
        from rescue.cli import scan_view  # noqa: PLC0415  (the classifier: imported meanwhile)
        from rescue.cli.queueview import inventory_of  # noqa: PLC0415

        if files is not None:
            messages = files.messages()
            if messages is None:
                log.debug("asking showq: %s", files.problem)
            relayhost = files.relayhost
            listing = iter(messages) if messages is not None else Postfix(cfg.postfix).listing()
    finally:
        if files is not None:
            files.cancel()
    view = inventory_of(
        cfg, use_dns=not options.no_dns, source=source, listing=listing, relayhost=relayhost
    )
    scan_view.show(
        view,
        by=options.by,
        show_reasons=options.show_reasons,
        as_json=options.as_json,
        no_dns=options.no_dns,
        show_unknown_mx=options.show_unknown_mx,
    )
