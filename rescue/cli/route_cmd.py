"""`queue-rescue route`: the transport table the service keeps, and manual overrides."""

from __future__ import annotations

import time
from pathlib import Path

import click

from rescue.classify.catalog import load_catalog
from rescue.cli.common import load_config
from rescue.cli.output import console, json_line, print_table
from rescue.cli.status_cmd import route_json, service_running
from rescue.config import Config, RouteConfig
from rescue.errors import ConfigError
from rescue.route.breaker import OVERRIDES, ProviderRoute, overridden
from rescue.route.control import table_of
from rescue.route.store import RouteStore


def _route_config(cfg: Config) -> RouteConfig:
    if cfg.route is None:
        raise ConfigError(cfg.path, "route", "no [route] table: routing is off")
    return cfg.route


def read_table(path: Path) -> list[dict[str, str]]:
    """The entries of the table's source file, each with the comment written above it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    entries = []
    why = ""
    for line in text.splitlines():
        if line.startswith("# "):
            why = line[2:]
        elif line.strip():
            domain, _, transport = line.partition("\t")
            entries.append({"domain": domain, "transport": transport.strip(), "why": why})
            why = ""
    return entries


def _states(cfg: Config) -> dict[str, ProviderRoute]:
    if not cfg.journal.path.exists():
        return {}
    store = RouteStore(cfg.journal.path)
    try:
        return store.routes()
    finally:
        store.close()


@click.group()
def route() -> None:
    """The transport table that routes new mail around a provider in trouble.

    The service lists the recipient domains of each provider it reroutes in
    [route] map, pointing at its relay endpoint; main.cf names that table first
    in transport_maps.
    """


@route.command()
@click.option("--empty", is_flag=True, help="Also empty a table that has entries.")
@click.pass_context
def init(ctx: click.Context, empty: bool) -> None:
    """Create the table empty unless it exists (run before the service starts).

    Postfix fails every lookup in transport_maps while a table it names is
    missing; this makes sure it is there. An existing table is left as it is,
    unless --empty (the unit runs that after the service stopped, also after a
    crash: Postfix then routes as before until the service is back).
    Without a [route] table in the configuration there is nothing to do.
    """
    cfg = load_config(ctx)
    if cfg.route is None:
        click.echo("no [route] table in the configuration: nothing to do")
        return
    table = table_of(cfg)
    if empty:
        table.write({})
        click.echo(f"{table.spec}: empty")
        return
    created = table.ensure()
    click.echo(f"{table.spec}: {'created, empty' if created else 'exists'}")


@route.command()
@click.option("--json", "as_json", is_flag=True, help="JSON lines: each entry, then the states.")
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """The table's entries (domain -> transport, and why) and each provider's state."""
    cfg = load_config(ctx)
    _route_config(cfg)
    table = table_of(cfg)
    entries = read_table(table.path)
    states = _states(cfg)
    if as_json:
        for entry in entries:
            json_line(entry)
        json_line({"providers": [route_json(r) for _, r in sorted(states.items())]})
        return
    out = console()
    out.print(f"Table {table.spec}: {len(entries)} entries")
    if entries:
        rows = [(e["domain"], e["transport"], e["why"]) for e in entries]
        print_table(out, "Entries", ("domain", "transport", "why"), rows)
    if states:
        state_rows = [
            (r.provider, r.describe(), r.reason or "-", _when(r.changed_at))
            for _, r in sorted(states.items())
        ]
        headers = ("provider", "state", "reason", "since")
        print_table(out, "Providers", headers, state_rows)


def _when(seconds: float) -> str:
    return "-" if not seconds else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


@route.command(name="set")
@click.argument("provider")
@click.argument("state", type=click.Choice(OVERRIDES))
@click.pass_context
def set_state(ctx: click.Context, provider: str, state: str) -> None:
    """Set PROVIDER rerouting or healthy by hand, until `auto` clears it.

    Recorded in the journal; the running service applies it at its next cycle.
    """
    cfg = load_config(ctx)
    _route_config(cfg)
    provider = provider.lower()
    if provider not in load_catalog(cfg.providers).by_name:
        raise click.BadParameter(f"no provider {provider!r} (see `queue-rescue providers`)")
    store = RouteStore(cfg.journal.path)
    try:
        old = store.routes().get(provider, ProviderRoute(provider))
        new = overridden(old, state, time.time())
        store.save(new)
    finally:
        store.close()
    when = (
        "the running service applies it at its next cycle"
        if service_running(cfg)
        else "the service applies it when it starts"
    )
    click.echo(f"{provider}: {new.describe()}; {when}")
