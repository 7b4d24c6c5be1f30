"""The command line's error boundary and logging set-up, without click.

Known errors print one line and exit with their code; anything else is a bug
and says so. The click group (rescue.cli.group) and a plain scan run without
click (rescue.start) both end here.
"""

from __future__ import annotations

import json
import logging
import os
import select
import sys
from typing import NoReturn

from rescue.errors import ConfigError, JournalError, LockedError, PostfixError, RescueError
from rescue.exitcodes import ExitCode

log = logging.getLogger("rescue")


class _Ending:
    at_once = False


def end_at_once() -> None:
    """Say that the command has closed all it opened (journal, lock, threads, helper
    processes) and written all it had to say: its process may end without tearing down
    the interpreter (rescue.start.leave_now), which for a large flush takes a tenth of a
    second of freeing what it read. Only the program's entry point acts on it."""
    _Ending.at_once = True


def ends_at_once() -> bool:
    return _Ending.at_once


def fail(code: ExitCode, message: str) -> NoReturn:
    sys.stderr.write(f"queue-rescue: error: {message}\n")
    sys.stderr.flush()
    sys.exit(int(code))


def output_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (`queue-rescue scan | head`)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def stop_writing() -> NoReturn:
    """End quietly once the output's reader has gone, as SIGPIPE ends a C program: no
    error, and Python's own last flush of the output must not complain either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(int(ExitCode.CLOSED_OUTPUT))


def fail_for(exc: BaseException) -> NoReturn:
    """Exit as the command line does for an error that ended a command."""
    if isinstance(exc, BrokenPipeError) and output_closed():
        # Writing failed while an error was being reported (Ctrl-C kills `| jq` too):
        # that error is what ended the command, and stderr still says so.
        if isinstance(exc.__context__, RescueError | KeyboardInterrupt):
            fail_for(exc.__context__)
        stop_writing()
    if isinstance(exc, ConfigError):
        fail(ExitCode.USAGE, str(exc))
    if isinstance(exc, LockedError):
        fail(ExitCode.LOCKED, f"another queue-rescue is running: {exc}")
    if isinstance(exc, PostfixError):
        fail(ExitCode.POSTFIX, str(exc))
    if isinstance(exc, JournalError):
        fail(ExitCode.SOFTWARE, str(exc))
    if isinstance(exc, RescueError):
        fail(ExitCode.PARTIAL, str(exc))
    if isinstance(exc, KeyboardInterrupt):
        fail(
            ExitCode.INTERRUPTED,
            "interrupted; every message this run held was released "
            "(any that could not be is named above)",
        )
    log.debug("unexpected error", exc_info=exc)
    fail(
        ExitCode.SOFTWARE,
        f"unexpected error (a bug, please report it): {exc!r}; "
        "held messages were released; run with -vv for the traceback",
    )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            },
            ensure_ascii=False,
        )


def setup_logging(verbose: int, log_format: str) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("queue-rescue: %(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Library chatter (aiosmtplib, asyncio) only when asked for.
    for name in ("asyncio", "aiosmtplib"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
