"""Terminal and JSON output helpers: JSON lines for scripts, tables for people."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from rich.console import Console


def json_line(obj: dict[str, Any], stream: TextIO | None = None, *, flush: bool = True) -> None:
    """One JSON object on its own line; flushed at once unless more follow right away."""
    out = stream or sys.stdout
    out.write(json.dumps(obj, ensure_ascii=False, default=str) + "\n")
    if flush:
        out.flush()


def age(seconds: float) -> str:
    """A short age: 45s, 12m, 3h05m, 2d04h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def show_sender(address: str) -> str:
    return address if address else "<>"


def console(stream: TextIO | None = None) -> Console:
    # Colour and boxes on a terminal; plain text when piped (rich decides from the stream).
    from rich.console import Console  # noqa: PLC0415  (rich: 20 ms a start, see table_output)

    return Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)


class Piped:
    """What tab-separated output needs of a Console (`file`, `is_terminal`), without rich."""

    is_terminal = False

    def __init__(self, file: TextIO) -> None:
        self.file = file


def surely_piped(stream: TextIO) -> bool:
    """True when rich would certainly not treat `stream` as a terminal.

    Not a terminal, and no environment variable that makes rich treat it as
    one (TTY_COMPATIBLE=1, a non-empty FORCE_COLOR); in any other case rich decides.
    """
    try:
        isatty = stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
    return (
        not isatty and os.environ.get("TTY_COMPATIBLE") != "1" and not os.environ.get("FORCE_COLOR")
    )


def table_output(stream: TextIO | None = None) -> Console | Piped:
    """Where print_table writes: without loading rich when the output is piped."""
    stream = stream or sys.stdout
    return Piped(stream) if surely_piped(stream) else console(stream)


_NUMERIC = frozenset({"messages", "recipients", "oldest", "count", "age"})


def print_table(
    out: Console | Piped, title: str, headers: Sequence[str], rows: Iterable[Sequence[str]]
) -> None:
    """A table on a terminal; tab-separated lines (header first) when piped."""
    if isinstance(out, Piped) or not out.is_terminal:
        # Written directly: rich would expand the tabs.
        out.file.write("\t".join(headers) + "\n")
        for row in rows:
            out.file.write("\t".join(cell.replace("\n", ",") for cell in row) + "\n")
        out.file.flush()
        return
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title)
    for index, header in enumerate(headers):
        numeric = header in _NUMERIC
        table.add_column(header, justify="right" if numeric and index else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)
