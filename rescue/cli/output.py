"""Terminal and JSON output helpers: JSON lines for scripts, tables for people."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table


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
    return Console(file=stream or sys.stdout, highlight=False, soft_wrap=True)


_NUMERIC = frozenset({"messages", "recipients", "oldest", "count", "age"})


def print_table(
    out: Console, title: str, headers: Sequence[str], rows: Iterable[Sequence[str]]
) -> None:
    """A table on a terminal; tab-separated lines (header first) when piped."""
    if not out.is_terminal:
        # Written directly: rich would expand the tabs.
        out.file.write("\t".join(headers) + "\n")
        for row in rows:
            out.file.write("\t".join(cell.replace("\n", ",") for cell in row) + "\n")
        out.file.flush()
        return
    table = Table(title=title)
    for index, header in enumerate(headers):
        numeric = header in _NUMERIC
        table.add_column(header, justify="right" if numeric and index else "left", overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)
