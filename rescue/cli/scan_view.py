"""What `scan` prints: the qshape-style table, the reason table, JSON lines.

rich is loaded only for a terminal: piped, the tables are tab-separated plain
text, and a scan's start-up is the larger part of a small queue's scan.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

from rescue.classify.catalog import Catalog, KnownReason
from rescue.classify.classifier import mixed_providers
from rescue.classify.shape import (
    BUCKET_LABELS,
    SHOWN_NAMES,
    UNKNOWN,
    By,
    Item,
    ReasonSummary,
    Row,
    Shape,
    Unclassified,
    UnknownMx,
    items,
    reasons,
    shape,
    unclassified,
    unknown_mx,
)
from rescue.classify.suffix import registered_domain
from rescue.cli.output import Piped, age, json_line, print_table, table_output
from rescue.cli.queueview import QueueView
from rescue.model import Classification, QueuedMessage

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

Out: TypeAlias = "Console | Piped"
Cell: TypeAlias = "str | Text"
# How many providers a row of another grouping names before "+N".
SHOWN_PROVIDERS = 3
REASON_COLUMNS = ("recipients", "messages", "provider", "reroute_helps", "reason", "meaning", "fix")


def show(
    view: QueueView,
    *,
    by: str,
    show_reasons: bool,
    as_json: bool,
    no_dns: bool,
    show_unknown_mx: bool = False,
) -> None:
    """Print the inventory as the options ask."""
    inventory = view.inventory
    now = time.time()
    if show_unknown_mx:
        found = unknown_mx(items(inventory.messages, inventory.classes), registered_domain)
        if as_json:
            for group in found:
                json_line(unknown_mx_json(group))
        else:
            show_unknown_mx_table(table_output(), found)
        return
    if as_json and not show_reasons:
        for message in inventory.messages:
            json_line(message_json(message, inventory.classes[message.queue_id]), flush=False)
        sys.stdout.flush()
        return
    deferred = list(items(inventory.messages, inventory.classes))
    if show_reasons:
        summaries = reasons(deferred, view.catalog, now)
        if as_json:
            for summary in summaries:
                json_line(reason_json(summary, view.catalog))
        else:
            show_reason_table(table_output(), summaries)
        return
    out = table_output()
    show_shape(out, shape(deferred, By(by), now), view.catalog)
    show_unclassified(out, unclassified(deferred))
    show_unknown_mx_table(out, unknown_mx(deferred, registered_domain))
    if not isinstance(out, Piped) and out.is_terminal:
        out.print(footer(view, deferred, now, no_dns=no_dns), highlight=False)


# --- JSON ------------------------------------------------------------------------------


def message_json(message: QueuedMessage, classes: Sequence[Classification]) -> dict[str, Any]:
    return {
        "queue_id": message.queue_id,
        "queue_name": message.queue_name,
        "arrival_time": message.arrival_time,
        "size": message.size,
        "sender": message.sender,
        "recipients": [
            {
                "address": r.address,
                "provider": c.provider,
                "mx": c.mx,
                "reason": r.delay_reason,
                "classified_by": c.classified_by,
                "reason_matched": c.reason_matched,
                "note": c.note or None,
                # For a recipient at MX hosts of no known provider: their registered domain.
                "mx_domain": _unknown_mx_domain(c),
            }
            for r, c in zip(message.recipients, classes, strict=True)
        ],
    }


def _unknown_mx_domain(c: Classification) -> str | None:
    if c.provider is not None or c.mx is None or mixed_providers(c):
        return None
    return registered_domain(c.mx)


def reason_json(summary: ReasonSummary, catalog: Catalog) -> dict[str, Any]:
    known = summary.known
    provider = catalog.by_name.get(summary.provider) if summary.provider else None
    return {
        "reason": summary.reason,
        "provider": summary.provider,
        "label": provider.label if provider else None,
        "mixed": list(summary.mixed),
        "recipients": summary.recipients,
        "messages": summary.messages,
        "oldest": round(summary.oldest),
        "domains": dict(summary.domains),
        "example": summary.example,
        "known": known is not None,
        "pattern": known.pattern if known else None,
        "meaning": known.meaning if known else None,
        "reroute_helps": known.reroute_helps if known else None,
        "fix": known.fix if known else None,
        "source": known.source if known else None,
        "selected": summary.selected,
    }


def unknown_mx_json(group: UnknownMx) -> dict[str, Any]:
    return {
        "mx_domain": group.domain,
        "pattern": group.pattern,
        "recipients": group.recipients,
        "messages": group.messages,
        "hosts": list(group.hosts),
        "domains": dict(group.domains),
    }


# --- tables ----------------------------------------------------------------------------


def show_table(
    out: Out,
    title: str,
    headers: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    numbers: Collection[str],
) -> None:
    """Rich on a terminal, tab-separated when piped; the `numbers` columns right-aligned."""
    if isinstance(out, Piped) or not out.is_terminal:
        print_table(out, title, headers, [[str(cell) for cell in row] for row in rows])
        return
    from rich.console import JustifyMethod  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    table = Table(title=title, title_justify="left")
    for header in headers:
        justify: JustifyMethod = "right" if header in numbers else "left"
        table.add_column(header, justify=justify, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _style(key: str) -> str:
    if key == UNKNOWN:
        return "bold red"
    return "yellow" if key.startswith("mixed:") else ""


def _cell(text: str, style: str, terminal: bool) -> Cell:
    """A styled cell on a terminal, the plain text otherwise (rich not loaded)."""
    if not terminal:
        return text
    from rich.text import Text  # noqa: PLC0415

    return Text(text, style=style)


def _is_terminal(out: Out) -> bool:
    return not isinstance(out, Piped) and out.is_terminal


def _providers(row: Row, terminal: bool) -> Cell:
    names = row.providers[:SHOWN_PROVIDERS]
    if not terminal:
        more = len(row.providers) - SHOWN_PROVIDERS
        return ", ".join(names) + (f" +{more}" if more > 0 else "")
    from rich.text import Text  # noqa: PLC0415

    text = Text()
    for index, name in enumerate(names):
        if index:
            text.append(", ")
        text.append(name, style=_style(name))
    if len(row.providers) > SHOWN_PROVIDERS:
        text.append(f" +{len(row.providers) - SHOWN_PROVIDERS}", style="dim")
    return text


def _key(row: Row, by: By, catalog: Catalog, terminal: bool) -> Cell:
    if not terminal:
        return row.key
    from rich.text import Text  # noqa: PLC0415

    if row.key == "TOTAL":
        return Text(row.key, style="bold")
    if by is not By.PROVIDER:
        return Text(row.key)
    text = Text(row.key, style=_style(row.key))
    provider = catalog.by_name.get(row.key)
    if provider is not None and provider.label != row.key:
        text.append(f" {provider.label}", style="dim")
    return text


def _counts(row: Row, terminal: bool) -> list[Cell]:
    if not terminal:
        return [str(row.messages), str(row.recipients), *(str(n) for n in row.buckets)]
    from rich.text import Text  # noqa: PLC0415

    cells: list[Cell] = [str(row.messages), Text(str(row.recipients), style="bold")]
    cells += [Text(str(n), style="dim" if n == 0 else "") for n in row.buckets]
    return cells


def show_shape(out: Out, found: Shape, catalog: Catalog) -> None:
    by = found.by
    terminal = _is_terminal(out)
    counts = ["messages", "T", *BUCKET_LABELS]
    headers = [by.value] + (["provider"] if by is not By.PROVIDER else []) + counts
    rows: list[list[Cell]] = []
    for row in (found.total, *found.rows):
        cells: list[Cell] = [_key(row, by, catalog, terminal)]
        if by is not By.PROVIDER:
            cells.append(
                _cell("", "", terminal) if row is found.total else _providers(row, terminal)
            )
        rows.append(cells + _counts(row, terminal))
    title = f"Deferred recipients by {by.value} and age in minutes"
    show_table(out, title, headers, rows, counts)


def show_unclassified(out: Out, found: Sequence[Unclassified]) -> None:
    if not found:
        return
    terminal = _is_terminal(out)
    rows: list[list[Cell]] = [
        [
            _cell(u.domain, "", terminal),
            _cell("mixed MX: " + ", ".join(u.mixed), "yellow", terminal)
            if u.mixed
            else _cell("unknown", "bold red", terminal),
            str(u.recipients),
            str(u.messages),
            _cell(u.why, "", terminal),
        ]
        for u in found
    ]
    out.file.write("\n")
    headers = ("domain", "provider", "recipients", "messages", "why")
    title = "Recipients no provider could be named for"
    show_table(out, title, headers, rows, ("recipients", "messages"))


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" +{len(names) - SHOWN_NAMES}" if len(names) > SHOWN_NAMES else "")


def show_unknown_mx_table(out: Out, found: Sequence[UnknownMx]) -> None:
    """Recipients at MX hosts of no known provider, e.g. 37 at *.example-hoster.net."""
    if not found:
        return
    terminal = _is_terminal(out)
    rows: list[list[Cell]] = [
        [
            _cell(u.pattern, "bold", terminal),
            str(u.recipients),
            str(u.messages),
            _some(u.hosts),
            _some([domain for domain, _ in u.domains]),
        ]
        for u in found
    ]
    out.file.write("\n")
    headers = ("mx", "recipients", "messages", "hosts", "domains")
    title = "MX hosts no provider matched, by registered domain: a [[provider]] can name them"
    if terminal:  # rich reads [...] as markup
        from rich.markup import escape  # noqa: PLC0415

        title = escape(title)
    show_table(out, title, headers, rows, ("recipients", "messages"))


_HELPS_STYLE = {"yes": "green", "no": "red", "?": "dim"}


def _helps(known: KnownReason | None) -> str:
    """Whether rerouting helps, by the catalog: yes, no, or ? for a reason it does not know."""
    if known is None:
        return "?"
    return "yes" if known.reroute_helps else "no"


def show_reason_table(out: Out, summaries: Sequence[ReasonSummary]) -> None:
    if not _is_terminal(out):
        rows = [
            [
                str(s.recipients),
                str(s.messages),
                s.provider_key,
                _helps(s.known),
                s.reason,
                s.known.meaning if s.known else "",
                s.known.fix if s.known else "",
            ]
            for s in summaries
        ]
        print_table(out, "Deferral reasons", REASON_COLUMNS, rows)
        return
    from rich.table import Table  # noqa: PLC0415
    from rich.text import Text  # noqa: PLC0415

    assert not isinstance(out, Piped)
    table = Table(title="Deferral reasons", title_justify="left")
    table.add_column("recipients", justify="right")
    table.add_column("messages", justify="right")
    table.add_column("provider")
    table.add_column("reroute helps")
    table.add_column("reason, meaning and fix", overflow="fold")
    for s in summaries:
        explained = Text(s.reason, style="bold")
        if s.known is not None:
            explained.append(f"\n{s.known.meaning}")
            explained.append(f"\nfix: {s.known.fix}", style="italic")
        table.add_row(
            str(s.recipients),
            str(s.messages),
            Text(s.provider_key, style=_style(s.provider_key)),
            Text(_helps(s.known), style=_HELPS_STYLE[_helps(s.known)]),
            explained,
        )
    out.print(table)


def footer(view: QueueView, deferred: Sequence[Item], now: float, *, no_dns: bool) -> str:
    messages = len({item.message.queue_id for item in deferred})
    domains = len({item.recipient.domain for item in deferred})
    dns = "no DNS lookups (--no-dns)" if no_dns else f"{view.inventory.dns_queries} DNS queries"
    oldest = max((now - i.message.arrival_time for i in deferred), default=0.0)
    return (
        f"{messages} deferred messages, {len(deferred)} recipients at {domains} domains; "
        f"oldest {age(oldest)}; {dns}."
    )
