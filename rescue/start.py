"""The program's entry point: a plain `scan` runs without loading the command line's libraries.

Most of a scan's time is start-up (a small queue) or Postfix's showq reading the
queue (a large one). For a plain `[GLOBAL OPTIONS] scan [OPTIONS]` this reads
the configuration, starts `postqueue -j` at once, and imports the classifier
while showq works, all without click (and, piped, without rich): the same
output, errors and exit codes as the command line's scan, which runs for
anything not recognised here (help, --spool, an option with `=`, a bad value).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rescue.cli.scan_run import ScanOptions

# The group's options (rescue.cli.group.cli) and scan's (rescue.cli.scan_cmd.scan).
_CONFIG = ("--config", "-c")
_LOG_FORMAT = "--log-format"
_LOG_FORMATS = ("text", "json")
_VERBOSE = {"--verbose": 1, "-v": 1, "-vv": 2, "-vvv": 3}
_SCAN_FLAGS = {
    "--reasons": "show_reasons",
    "--json": "as_json",
    "--unknown-mx": "show_unknown_mx",
    "--no-dns": "no_dns",
}
_BY = "--by"


@dataclass
class PlainScan:
    """A plain live scan's command line, parsed."""

    config: str | None = None  # --config (or $QUEUE_RESCUE_CONFIG, as the group reads it)
    verbose: int = 0
    log_format: str = "text"
    flags: dict[str, bool] = field(default_factory=dict)
    by: str | None = None

    def options(self) -> ScanOptions:
        from rescue.cli.scan_run import ScanOptions  # noqa: PLC0415

        flag = self.flags.get
        return ScanOptions(
            by=self.by or ScanOptions.by,
            show_reasons=flag("show_reasons", False),
            as_json=flag("as_json", False),
            show_unknown_mx=flag("show_unknown_mx", False),
            no_dns=flag("no_dns", False),
        )


def plain_scan(args: Sequence[str]) -> PlainScan | None:
    """The parsed arguments if they are a plain live scan; None for anything else."""
    if "scan" not in args:  # another command: no need to load the scan's modules
        return None
    from rescue.cli.scan_run import BY_CHOICES  # noqa: PLC0415

    found = PlainScan()
    index = 0
    while index < len(args) and args[index] != "scan":
        arg, value = args[index], args[index + 1] if index + 1 < len(args) else None
        if arg in _CONFIG and value is not None:
            found.config, index = value, index + 2
        elif arg == _LOG_FORMAT and value in _LOG_FORMATS:
            found.log_format, index = value, index + 2
        elif arg in _VERBOSE:
            found.verbose, index = found.verbose + _VERBOSE[arg], index + 1
        else:
            return None
    if index == len(args):
        return None
    index += 1
    while index < len(args):
        arg, value = args[index], args[index + 1] if index + 1 < len(args) else None
        if arg == _BY and value in BY_CHOICES:
            found.by, index = value, index + 2
        elif arg in _SCAN_FLAGS:
            found.flags[_SCAN_FLAGS[arg]], index = True, index + 1
        else:
            return None
    return found


def run_plain_scan(plain: PlainScan) -> None:
    """The scan, as the command line would run it (same logging, errors and exit codes)."""
    from rescue.cli.boundary import fail_for, setup_logging  # noqa: PLC0415
    from rescue.config import CONFIG_ENV, config_path, load_config  # noqa: PLC0415

    setup_logging(plain.verbose, plain.log_format)
    try:
        # As the group reads --config: the option, else the environment, else the default
        # (which alone may be missing: then the defaults).
        # An empty --config is still given (and names no file), as click sees it.
        explicit = plain.config if plain.config is not None else os.environ.get(CONFIG_ENV) or None
        cfg = load_config(config_path(explicit), missing_ok=explicit is None)
        from rescue.cli.scan_run import run_scan  # noqa: PLC0415

        run_scan(cfg, plain.options())
    except (Exception, KeyboardInterrupt) as exc:
        fail_for(exc)


def main() -> None:
    plain = plain_scan(sys.argv[1:])
    if plain is not None:
        run_plain_scan(plain)
        return
    from rescue.cli.group import main as cli_main  # noqa: PLC0415

    cli_main()
