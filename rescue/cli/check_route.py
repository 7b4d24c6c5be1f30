"""`check`'s look at routing: Postfix reads our table first, it answers, the relay listens."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

from rescue.config import Config, RouteConfig
from rescue.errors import PostfixError
from rescue.postfix.commands import Postfix
from rescue.route.control import table_of

CONNECT_TIMEOUT = 5.0
# A key no table lists: the lookup must come back "not found", not fail.
ABSENT_KEY = "queue-rescue-check.invalid"


def checks(cfg: Config, service_running: Callable[[], bool]) -> list[tuple[str, Callable[[], str]]]:
    route = cfg.route
    if route is None:
        return []
    return [
        ("route table", lambda: _table(cfg)),
        ("transport_maps", lambda: _transport_maps(cfg, route)),
        ("relay endpoint", lambda: _relay(cfg, route, service_running)),
    ]


def _table(cfg: Config) -> str:
    table = table_of(cfg)
    if not table.exists():
        raise PostfixError(
            f"{table.database} is missing: Postfix fails every lookup in transport_maps "
            "until it exists; run `queue-rescue route init`"
        )
    found = table.query(ABSENT_KEY)
    if found is not None:
        raise PostfixError(f"postmap -q {ABSENT_KEY} {table.spec} found {found!r}")
    return f"postmap -q answers from {table.spec}"


def map_list(value: str) -> list[str]:
    """A Postfix list of maps, split as Postfix splits it: at blanks and commas, except
    inside `{ }` (an `inline:{ a=b, c=d }` map is one item)."""
    maps: list[str] = []
    item, depth = "", 0
    for char in value:
        if depth == 0 and (char.isspace() or char == ","):
            if item:
                maps.append(item)
            item = ""
            continue
        depth += {"{": 1, "}": -1}.get(char, 0)
        item += char
    if item:
        maps.append(item)
    return maps


def _transport_maps(cfg: Config, route: RouteConfig) -> str:
    value = Postfix(cfg.postfix).postconf("transport_maps")
    maps = map_list(value)
    if not maps or maps[0] != route.map:
        raise PostfixError(
            f"transport_maps = {value or '(empty)'}: name {route.map} first, "
            f"e.g. transport_maps = {', '.join([route.map, *(m for m in maps if m != route.map)])}"
        )
    return f"{route.map} comes first"


def _relay(cfg: Config, route: RouteConfig, service_running: Callable[[], bool]) -> str:
    kind, where, _port = route.relay_listen
    chroot_note = ""
    if kind == "unix":
        chroot_note = _chroot(cfg, Path(where))
    try:
        greeting = _greeting(route.relay_listen)
    except OSError as exc:
        if service_running():
            raise PostfixError(f"{_name(route)}: {exc}") from exc
        return f"{_name(route)} not listening yet: `queue-rescue run` serves it{chroot_note}"
    if not greeting.startswith("220"):
        raise PostfixError(f"{_name(route)} greets with {greeting!r}")
    return f"{_name(route)} answers: {greeting}{chroot_note}"


def _name(route: RouteConfig) -> str:
    kind, where, port = route.relay_listen
    return f"unix:{where}" if kind == "unix" else f"{where}:{port}"


def _greeting(listen: tuple[str, str, int]) -> str:
    kind, where, port = listen
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        target: str | tuple[str, int] = where
    else:
        sock = socket.socket(socket.AF_INET6 if ":" in where else socket.AF_INET)
        target = (where, port)
    with sock:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(target)
        line = sock.makefile("rb").readline(512).decode("utf-8", "replace").strip()
        sock.sendall(b"QUIT\r\n")
    return line


def _chroot(cfg: Config, path: Path) -> str:
    """A chrooted lmtp client sees only the queue directory: the socket must be in it."""
    postfix = Postfix(cfg.postfix)
    chrooted = postfix.postconf_service("lmtp/unix/chroot") in ("y", "yes")
    queue_dir = postfix.queue_directory()
    if chrooted and not path.is_relative_to(queue_dir):
        raise PostfixError(
            f"Postfix's lmtp client runs chrooted in {queue_dir}, where {path} cannot be "
            f"seen: put the socket inside it, e.g. unix:{queue_dir}/private/queue-rescue"
        )
    return "; lmtp client chrooted, socket inside the queue directory" if chrooted else ""
