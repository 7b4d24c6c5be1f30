"""The program's entry point: a live `scan` starts its queue listing before anything else.

Most of a large scan's time is Postfix's showq reading the queue. Starting
`postqueue -j` as soon as the configuration is read, before the command line's
libraries (click, rich, the classifier) are imported, lets showq work while
they load. Everything else (parsing the command line, errors, help) is still
the command line's: this only recognises a plain `[GLOBAL OPTIONS] scan
[OPTIONS]` and, for anything it does not recognise, starts nothing.

Kept light: only the configuration and the Postfix edge are imported here.
"""

from __future__ import annotations

import atexit
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rescue.config import PostfixConfig
    from rescue.model import QueuedMessage
    from rescue.postfix.listing import BadLine

    Listing = Iterator[QueuedMessage | BadLine]

# Global options that take a value, and those that take none (rescue.cli.cli).
_GLOBAL_VALUE = ("--config", "-c", "--log-format")
_GLOBAL_FLAGS = ("--verbose", "-v", "-vv", "-vvv")
# scan options that take a value, and the flags under which a scan reads live Postfix.
_SCAN_VALUE = ("--by",)
_SCAN_FLAGS = ("--reasons", "--json", "--unknown-mx", "--no-dns")

_early: tuple[PostfixConfig, Listing] | None = None


def live_scan_config(args: Sequence[str]) -> tuple[bool, str | None]:
    """Whether `args` are a plain live scan, and the --config value they give, if any.

    Anything unexpected (help, --spool, an unknown option, a value glued on
    with `=`) is not a plain live scan: the command line deals with it.
    """
    config: str | None = None
    index = 0
    while index < len(args) and args[index] != "scan":
        arg = args[index]
        if arg in _GLOBAL_VALUE and index + 1 < len(args):
            if arg in ("--config", "-c"):
                config = args[index + 1]
            index += 2
        elif arg in _GLOBAL_FLAGS:
            index += 1
        else:
            return False, None
    if index == len(args):
        return False, None
    rest = args[index + 1 :]
    index = 0
    while index < len(rest):
        arg = rest[index]
        if arg in _SCAN_VALUE and index + 1 < len(rest):
            index += 2
        elif arg in _SCAN_FLAGS:
            index += 1
        else:
            return False, None
    return True, config


def start_listing(args: Sequence[str]) -> None:
    """For a plain live scan: read the configuration and start Postfix's listing now.

    A configuration that cannot be read starts nothing; the command reports it.
    """
    global _early  # noqa: PLW0603  (one listing per process, taken once)
    plain, option = live_scan_config(args)
    if not plain:
        return
    from rescue.config import config_path, load_config  # noqa: PLC0415
    from rescue.errors import RescueError  # noqa: PLC0415
    from rescue.postfix.commands import Postfix  # noqa: PLC0415

    try:
        cfg = load_config(config_path(option), missing_ok=option is None)
        listing = Postfix(cfg.postfix).listing()
    except (RescueError, OSError, ValueError):
        return
    _early = (cfg.postfix, listing)
    atexit.register(_drop)


def take_listing(postfix: PostfixConfig) -> Listing | None:
    """The listing started early, if it was started for this Postfix; once."""
    global _early
    early, _early = _early, None
    if early is None:
        return None
    if early[0] != postfix:
        _close(early[1])
        return None
    return early[1]


def _drop() -> None:
    """At exit: stop a listing nobody took (the command line refused the arguments)."""
    global _early  # noqa: PLW0603
    if _early is not None:
        _close(_early[1])
        _early = None


def _close(listing: Listing) -> None:
    close = getattr(listing, "close", None)
    if close is not None:
        close()


def main() -> None:
    start_listing(sys.argv[1:])
    from rescue.cli import main as cli_main  # noqa: PLC0415

    cli_main()
