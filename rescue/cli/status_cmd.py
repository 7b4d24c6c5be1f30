"""`queue-rescue status`: what was rerouted and released lately, read from the journal."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from rescue.cli.common import load_config, parse_duration
from rescue.cli.output import age, console, json_line, print_table
from rescue.config import Config
from rescue.journal.lock import alive, holder_of, turn_path
from rescue.journal.rows import Event, Run
from rescue.journal.store import ACCEPTED, RELEASED, Journal
from rescue.route.breaker import ProviderRoute
from rescue.route.store import RELAYED, UNCERTAIN, RouteStore

# Journal states as `status` names them: "rerouted" is when the smarthost accepted it.
ACTIONS = {ACCEPTED: "rerouted", RELEASED: "released"}
HEADERS = ("time", "queue_id", "action", "by", "provider", "recipients", "smarthost", "reply")


def service_state(run: Run | None) -> dict[str, Any]:
    if run is None:
        return {"running": False, "pid": None, "started": None, "ended": None}
    return {
        "running": run.ended is None and alive(run.pid),
        "pid": run.pid,
        "started": run.started,
        "ended": run.ended,
    }


def service_running(cfg: Config) -> bool:
    """Whether the journal says a `queue-rescue run` is running now."""
    if not cfg.journal.path.exists():
        return False
    journal = Journal(cfg.journal.path)
    try:
        return bool(service_state(journal.last_run("run"))["running"])
    finally:
        journal.close()


def event_json(event: Event) -> dict[str, Any]:
    rerouted = event.state == ACCEPTED
    return {
        "time": round(event.at, 3),
        "queue_id": event.queue_id,
        "action": ACTIONS[event.state],
        "by": event.command,
        "provider": event.provider,
        "sender": event.sender,
        "recipients": list(event.recipients),
        "smarthost": event.smarthost,
        "reply": event.reply if rerouted else None,
        "reason": None if rerouted else event.detail,
    }


def route_json(route: ProviderRoute) -> dict[str, Any]:
    return {
        "provider": route.provider,
        "state": route.effective,
        "auto_state": route.state,
        "override": route.override,
        "reason": route.reason,
        "changed_at": round(route.changed_at, 3),
        "probes_ok": route.probes_ok,
    }


def routing(cfg: Config, since: float) -> dict[str, Any] | None:
    """Provider states and what the relay endpoint did since `since`; None without [route]."""
    if cfg.route is None:
        return None
    if not cfg.journal.path.exists():
        return {"providers": [], "relayed": 0, "relay_uncertain": 0}
    store = RouteStore(cfg.journal.path)
    try:
        routes = store.routes()
        relays = store.recent_relays(since)
    finally:
        store.close()
    return {
        "providers": [route_json(r) for _, r in sorted(routes.items())],
        "relayed": sum(1 for r in relays if r.state == RELAYED),
        "relay_uncertain": sum(1 for r in relays if r.state == UNCERTAIN),
    }


def route_lines(route: dict[str, Any] | None) -> list[str]:
    if route is None:
        return []
    lines = [
        f"Route: {p['provider']} {p['state']}"
        + (" (set by hand)" if p["override"] else "")
        + f" since {_when(p['changed_at'])}: {p['reason'] or '-'}"
        for p in route["providers"]
    ]
    relayed = f"Relay endpoint: {route['relayed']} relayed"
    if route["relay_uncertain"]:
        relayed += f", {route['relay_uncertain']} cut off (may be delivered twice)"
    return [*lines, relayed]


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def service_line(state: dict[str, Any], now: float) -> str:
    if state["pid"] is None:
        return "Service: has not run (no `queue-rescue run` in the journal)"
    if state["running"]:
        return f"Service: running, pid {state['pid']}, for {age(now - state['started'])}"
    if state["ended"] is None:
        return f"Service: not running (pid {state['pid']} stopped without ending its run)"
    return f"Service: not running (last run ended {_when(state['ended'])})"


def lock_state(lock_path: Path) -> dict[str, str | None]:
    """Who holds the queue lock, and who waits for it next (as their lock files say)."""
    return {"holder": holder_of(lock_path), "waiting": holder_of(turn_path(lock_path))}


def lock_line(state: dict[str, str | None]) -> str:
    line = f"Lock: held by {state['holder']}" if state["holder"] else "Lock: free"
    if state["waiting"] and state["waiting"] != state["holder"]:
        line += f"; next: {state['waiting']}"
    return line


@click.command()
@click.option(
    "--since",
    default="1h",
    show_default=True,
    metavar="AGE",
    help="How far back to look (30m, 2h, 1d).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per action, then a summary.")
@click.pass_context
def status(ctx: click.Context, since: str, as_json: bool) -> None:
    """Show what the service (and `flush`) did lately, from the journal.

    Rerouted messages with the smarthost's reply, released ones (given back to
    Postfix) with the reason, oldest first, whether the service runs, and who
    holds the lock (the service holds it only during a cycle). Reads the
    journal and the lock files only: it works while another command runs.
    """
    window = parse_duration(since, "--since")
    cfg = load_config(ctx)
    now = time.time()
    if cfg.journal.path.exists():
        journal = Journal(cfg.journal.path)
        try:
            events = journal.history(now - window, ACTIONS)
            state = service_state(journal.last_run("run"))
        finally:
            journal.close()
    else:
        events, state = [], service_state(None)
    lock = lock_state(cfg.journal.lock_path)
    route = routing(cfg, now - window)
    counts = {action: 0 for action in ACTIONS.values()}
    for event in events:
        counts[ACTIONS[event.state]] += 1
    if as_json:
        for event in events:
            json_line(event_json(event))
        summary = {"since": round(now - window, 3), **counts, "service": state, "lock": lock}
        if route is not None:
            summary["route"] = route
        json_line({"summary": summary})
        return
    out = console()
    out.print(service_line(state, now))
    out.print(lock_line(lock))
    for line in route_lines(route):
        out.print(line)
    out.print(
        f"Since {_when(now - window)}: {counts['rerouted']} rerouted, {counts['released']} released"
    )
    if events:
        print_table(out, "Recent actions", HEADERS, [row(e) for e in events])


def row(event: Event) -> tuple[str, ...]:
    data = event_json(event)
    return (
        _when(event.at),
        event.queue_id,
        data["action"],
        event.command or "-",
        event.provider or "-",
        "\n".join(event.recipients) or "-",
        event.smarthost or "-",
        (data["reply"] or data["reason"] or "-").strip(),
    )
