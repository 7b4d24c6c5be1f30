"""The program's entry point: a plain `scan` runs without loading the command line's libraries.

Most of a scan's time is start-up (a small queue) or reading the queue (a large
one). For a plain `[GLOBAL OPTIONS] scan [OPTIONS]` this first finds Postfix's
folders in the configuration file and starts a helper process reading the
deferred queue's files (rescue.postfix.files_listing), before importing
anything else; then it loads the configuration as the command line does and
imports the classifier while the helper reads, all without click (and, piped,
without rich): the same output, errors and exit codes as the command line's
scan, which runs for anything not recognised here (help, --spool, an option
with `=`, a bad value).
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rescue.cli.scan_run import ScanOptions
    from rescue.postfix.files_listing import FilesListing

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
# rescue.cli.scan_run.BY_CHOICES, and two values of rescue.config (tests/unit/test_start.py
# holds them equal): importing those modules is most of what this one saves.
BY_CHOICES = ("provider", "domain", "reason", "sender-domain")
CONFIG_ENV = "QUEUE_RESCUE_CONFIG"
DEFAULT_CONFIG_PATH = "/etc/queue-rescue/config.toml"
# [postfix] keys and their defaults (rescue.config.tables.read_postfix).
_POSTFIX_DIRS = (("config_dir", "/etc/postfix"), ("command_dir", "/usr/sbin"))


class PlainScan:
    """A plain live scan's command line, parsed (a plain class: no dataclasses at start)."""

    def __init__(self) -> None:
        self.config: str | None = None  # --config (or $QUEUE_RESCUE_CONFIG, as the group reads it)
        self.verbose = 0
        self.log_format = "text"
        self.flags: dict[str, bool] = {}
        self.by: str | None = None

    @property
    def deferred_only(self) -> bool:
        """As ScanOptions.deferred_only: all but the --json listing show the deferred queue."""
        flag = self.flags.get
        return not flag("as_json") or bool(flag("show_reasons") or flag("show_unknown_mx"))

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
    # As the group reads --config: the option, else the environment, else the default
    # (which alone may be missing: then the defaults).
    # An empty --config is still given (and names no file), as click sees it.
    explicit = plain.config if plain.config is not None else os.environ.get(CONFIG_ENV) or None
    early = start_listing(explicit) if plain.deferred_only else None
    from rescue.cli.boundary import fail_for, setup_logging  # noqa: PLC0415
    from rescue.config import config_path, load_config  # noqa: PLC0415

    setup_logging(plain.verbose, plain.log_format)
    try:
        cfg = load_config(config_path(explicit), missing_ok=explicit is None)
        from rescue.cli.scan_run import run_scan  # noqa: PLC0415

        run_scan(cfg, plain.options(), early=early)
    except (Exception, KeyboardInterrupt) as exc:
        if early is not None:
            early.cancel()
        fail_for(exc)


def start_listing(explicit: str | None) -> FilesListing | None:
    """The helper reading the deferred queue's files of the Postfix the configuration file
    names, started now; None when that is not plain to see (run_scan then starts it after
    loading the configuration, and it is used only if the folders are the same)."""
    dirs = postfix_dirs(explicit or DEFAULT_CONFIG_PATH, missing_ok=explicit is None)
    if dirs is None:
        return None
    from rescue.postfix.files_listing import FilesListing  # noqa: PLC0415

    try:
        return FilesListing(dirs)
    except OSError:
        return None


def postfix_dirs(path: str, *, missing_ok: bool) -> tuple[str, str, str | None] | None:
    """[postfix] config_dir, command_dir and queue_directory as rescue.config reads them
    (relative to the file's folder), or None if the file does not say them plainly."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        if not missing_ok:
            return None
        text = ""
    except (OSError, UnicodeDecodeError):
        return None
    import tomllib  # noqa: PLC0415

    try:
        table = tomllib.loads(text).get("postfix", {})
    except tomllib.TOMLDecodeError:
        return None
    if not isinstance(table, dict):
        return None
    found: list[str | None] = []
    for key, default in (*_POSTFIX_DIRS, ("queue_directory", None)):
        value = table.get(key, default)
        if value is not None and not isinstance(value, str):
            return None
        if value is not None and not os.path.isabs(value):
            value = os.path.join(os.path.dirname(path), value)
        found.append(value)
    config_dir, command_dir, queue_directory = found
    if config_dir is None or command_dir is None:
        return None
    return config_dir, command_dir, queue_directory


def leave_now(code: int = 0) -> None:
    """End a finished command at once with `code`: its output is all written, nothing is
    held or open, and tearing down the interpreter (tens of thousands of objects) only
    costs time. Returns, for the normal exit, if writing fails or a thread other than
    this one still runs; ends as rescue.cli.boundary.stop_writing says once the output's
    reader has gone."""
    threading = sys.modules.get("threading")
    if threading is not None and any(
        t.is_alive() and not t.daemon and t is not threading.current_thread()
        for t in threading.enumerate()
    ):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.shutdown()
    except BrokenPipeError:
        from rescue.cli.boundary import output_closed, stop_writing  # noqa: PLC0415

        if output_closed():
            stop_writing()
        return
    except (OSError, ValueError):
        return
    os._exit(code)


def main() -> None:
    plain = plain_scan(sys.argv[1:])
    if plain is not None:
        # A plain scan is a short run that keeps all it reads until it prints; the
        # garbage collector, woken every few hundred new objects, would only walk the
        # imported modules and the listing again and again (a sixth of a scan's time).
        # The few cycles made meanwhile go with the process.
        gc.disable()
        run_plain_scan(plain)
        leave_now()
        return
    from rescue.cli.group import main as cli_main  # noqa: PLC0415

    try:
        cli_main()
    except SystemExit as exc:
        from rescue.cli.boundary import ends_at_once  # noqa: PLC0415

        if ends_at_once() and (exc.code is None or isinstance(exc.code, int)):
            leave_now(exc.code or 0)
        raise
