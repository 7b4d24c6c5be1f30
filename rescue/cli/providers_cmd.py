"""`queue-rescue providers`: the provider catalog as this configuration sees it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from rescue.classify.catalog import Catalog, KnownReason, Provider, load_catalog, read_builtin
from rescue.cli.common import load_config
from rescue.cli.output import console, json_line, print_table

SUMMARY_COLUMNS = ("name", "label", "mx", "domains", "reasons", "reroute", "origin")
REASON_COLUMNS = ("provider", "reroute_helps", "pattern", "meaning", "fix", "source")


@click.command()
@click.argument("names", nargs=-1)
@click.option("--reasons", "show_reasons", is_flag=True, help="List each known reply text.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per provider.")
@click.option(
    "--builtin", is_flag=True, help="Show the catalog shipped with queue-rescue; read no config."
)
@click.pass_context
def providers(
    ctx: click.Context, names: tuple[str, ...], show_reasons: bool, as_json: bool, builtin: bool
) -> None:
    """List the provider catalog merged with the config's [[provider]] tables.

    For each provider (all, or the NAMES given): its MX host patterns, the
    domains it hosts, the reply texts it is known to send with what they mean,
    whether rerouting can help and what to fix, and the reroute policy. With
    NAMES, the table of their known reply texts follows the summary.
    """
    overrides = () if builtin else load_config(ctx).providers
    catalog = load_catalog(overrides)
    chosen = choose(catalog, names)
    origins = origin_of(catalog, {p.name for p in overrides})
    if as_json:
        for provider in chosen:
            json_line(provider_json(provider, origins[provider.name]))
        return
    out = console()
    if show_reasons:
        show_reason_table(out, chosen)
        return
    show_summary(out, chosen, origins)
    if names and any(provider.known for provider in chosen):
        # Named providers: their patterns above, and what their replies mean below.
        out.file.write("\n")
        show_reason_table(out, chosen)


def choose(catalog: Catalog, names: Sequence[str]) -> list[Provider]:
    if not names:
        return list(catalog.providers)
    unknown = [n for n in names if n.lower() not in catalog.by_name]
    if unknown:
        known = ", ".join(sorted(catalog.by_name))
        raise click.BadParameter(
            f"no provider named {', '.join(unknown)}; known: {known}", param_hint="NAMES"
        )
    return [catalog.by_name[n.lower()] for n in dict.fromkeys(names)]


def origin_of(catalog: Catalog, configured: set[str]) -> dict[str, str]:
    """Where each provider comes from: "built-in", "config" or "built-in + config"."""
    shipped = {p.name for p in read_builtin()}
    origins = {}
    for name in catalog.by_name:
        parts = [
            part for part, has in (("built-in", shipped), ("config", configured)) if name in has
        ]
        origins[name] = " + ".join(parts)
    return origins


def selection(provider: Provider) -> str:
    """Which deferrals of this provider a flush takes, in words."""
    if provider.reasons is None:
        return "known reasons where rerouting helps"
    if not provider.reasons:
        return "every deferral"
    return "matching: " + ", ".join(provider.reasons)


# --- JSON ------------------------------------------------------------------------------


def reason_json(known: KnownReason) -> dict[str, Any]:
    return {
        "pattern": known.pattern,
        "meaning": known.meaning,
        "reroute_helps": known.reroute_helps,
        "fix": known.fix,
        "source": known.source,
        "examples": list(known.examples),
        "checks": list(known.checks),
    }


def provider_json(provider: Provider, origin: str) -> dict[str, Any]:
    return {
        "name": provider.name,
        "label": provider.label,
        "origin": origin,
        "mx": list(provider.mx),
        "mx_examples": list(provider.mx_examples),
        "ns": list(provider.ns),
        "domains": list(provider.domains),
        "sources": list(provider.sources),
        "reroute": provider.reroute,
        # None: the known reasons where rerouting helps; []: every deferral.
        "reroute_reasons": None if provider.reasons is None else list(provider.reasons),
        "min_age": provider.min_age,
        "min_messages": provider.min_messages,
        "max_per_cycle": provider.max_per_cycle,
        "reasons": [reason_json(known) for known in provider.known],
    }


# --- tables ----------------------------------------------------------------------------


def _reason_count(provider: Provider) -> str:
    helps = sum(1 for known in provider.known if known.reroute_helps)
    return f"{len(provider.known)} ({helps} reroute helps)"


def show_summary(out: Console, chosen: Sequence[Provider], origins: dict[str, str]) -> None:
    rows = [
        [
            provider.name,
            provider.label,
            "\n".join(provider.mx),
            ", ".join(provider.domains),
            _reason_count(provider),
            f"{provider.reroute}: {selection(provider)}",
            origins[provider.name],
        ]
        for provider in chosen
    ]
    if not out.is_terminal:
        print_table(out, "Providers", SUMMARY_COLUMNS, rows)
        return
    table = Table(title="Providers", title_justify="left")
    for column in SUMMARY_COLUMNS:
        table.add_column(column, overflow="fold", style="bold" if column == "name" else "")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    out.print(table)


def show_reason_table(out: Console, chosen: Sequence[Provider]) -> None:
    pairs = [(provider, known) for provider in chosen for known in provider.known]
    if not out.is_terminal:
        rows = [
            [p.name, "yes" if k.reroute_helps else "no", k.pattern, k.meaning, k.fix, k.source]
            for p, k in pairs
        ]
        print_table(out, "Known reasons", REASON_COLUMNS, rows)
        return
    table = Table(title="Known reasons", title_justify="left")
    table.add_column("provider", style="bold")
    table.add_column("reroute helps")
    table.add_column("pattern, meaning and fix", overflow="fold")
    for provider, known in pairs:
        helps = Text("yes", style="green") if known.reroute_helps else Text("no", style="red")
        text = Text(known.pattern, style="bold")
        text.append(f"\n{known.meaning}")
        text.append(f"\nfix: {known.fix}", style="italic")
        if known.checks:
            text.append(f"\ndiagnose checks: {', '.join(known.checks)}")
        if known.source:
            text.append(f"\nsource: {known.source}", style="dim")
        table.add_row(provider.name, helps, text)
    out.print(table)
