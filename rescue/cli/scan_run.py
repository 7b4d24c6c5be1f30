"""What `scan` does once its options are known; shared by the click command and rescue.start.

Imports neither click nor rich: a plain scan piped to another program runs without them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rescue.config import Config
from rescue.model import QueuedMessage
from rescue.postfix.commands import Postfix
from rescue.postfix.deferred import NotAsShowq
from rescue.postfix.deferred_files import DeferredFiles
from rescue.postfix.listing import BadLine

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


class _FilesListing:
    """The deferred queue's files as a listing: read when first asked (see DeferredFiles)."""

    def __init__(self, files: DeferredFiles, postfix: Postfix) -> None:
        self._files = files
        self._postfix = postfix
        self._items: Iterator[QueuedMessage | BadLine] | None = None

    def __iter__(self) -> Iterator[QueuedMessage | BadLine]:
        return self

    def __next__(self) -> QueuedMessage | BadLine:
        if self._items is None:
            try:
                self._items = iter(self._files.messages())
            except NotAsShowq as exc:
                log.debug("asking showq: %s", exc)
                self._items = self._postfix.listing()
        return next(self._items)


def _deferred_files(cfg: Config) -> tuple[_FilesListing | None, str | None]:
    """The deferred queue's files, their reading started (None when showq must list
    them), and Postfix's relayhost if postconf told it meanwhile."""
    files = DeferredFiles(cfg.postfix)
    try:
        files.start()
    except NotAsShowq as exc:
        files.close()
        log.debug("asking showq: %s", exc)
        return None, files.relayhost
    except BaseException:
        files.close()
        raise
    return _FilesListing(files, Postfix(cfg.postfix)), files.relayhost


def run_scan(
    cfg: Config,
    options: ScanOptions,
    listing: Iterator[QueuedMessage | BadLine] | None = None,
) -> None:
    """Print the scan; `listing` is live Postfix's listing if it was started already.

    A scan that shows the deferred queue only reads its files, as showq would
    (rescue.postfix.deferred_files), when it can; else it asks showq.
    """
    source = None
    relayhost = None
    if options.spool is not None:
        from rescue.sources.spool import SpoolQueue  # noqa: PLC0415

        source = SpoolQueue(options.spool)
        listing = source.listing()
    elif listing is None and options.deferred_only:
        listing, relayhost = _deferred_files(cfg)
    listing = listing or Postfix(cfg.postfix).listing()  # showq starts now, if not yet
    from rescue.cli import scan_view  # noqa: PLC0415  (the classifier: imported meanwhile)
    from rescue.cli.queueview import inventory_of  # noqa: PLC0415

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
