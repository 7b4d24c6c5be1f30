"""The service's side of routing: builds the RouteControl from the config, shares quotas.

Kept apart from loop.py so that the loop only starts, feeds and stops it.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from rescue.classify.catalog import Catalog
from rescue.config import Config, SmarthostConfig
from rescue.diagnose.probe import ProbeTarget, probe
from rescue.diagnose.result import Result
from rescue.errors import PostfixError
from rescue.journal.store import Journal
from rescue.postfix.commands import Postfix
from rescue.route.control import RouteControl, RouteView, table_of
from rescue.route.entries import relay_transport
from rescue.route.relay import RelayOutcome
from rescue.route.relayserver import MAX_SIZE
from rescue.route.store import RouteStore
from rescue.service.autorules import DAY, HOUR, smarthost_quota
from rescue.service.metrics import NO_SMARTHOST, Metrics
from rescue.srs.rewriter import SrsRewriter

DEFAULT_QUEUE_DIRECTORY = "/var/spool/postfix"  # Postfix's default queue_directory


def accepted_since(journal: Journal, store: RouteStore | None, since: float) -> dict[str, int]:
    """What each smarthost accepted from `since` on: flushed and relayed mail together."""
    counts = dict(journal.accepted_since(since))
    if store is not None:
        for host, n in store.relayed_since(since).items():
            counts[host] = counts.get(host, 0) + n
    return counts


def _room(
    smarthosts: Sequence[SmarthostConfig],
    counts: Callable[[float], Mapping[str, int]],
    clock: Callable[[], float],
) -> tuple[Sequence[SmarthostConfig], str | None]:
    if all(h.max_per_hour is None and h.max_per_day is None for h in smarthosts):
        return smarthosts, None  # nothing to count: spares two queries per relayed message
    now = clock()
    quota = smarthost_quota(smarthosts, counts(now - HOUR), counts(now - DAY), 1)
    return quota.smarthosts, "; ".join(quota.full) or None


def build_route(
    cfg: Config,
    *,
    journal: Journal,
    catalog: Catalog,
    srs: SrsRewriter,
    metrics: Metrics,
    clock: Callable[[], float],
) -> RouteControl | None:
    """The service's RouteControl, or None without a [route] table."""
    route = cfg.route
    if route is None:
        return None
    store = RouteStore(cfg.journal.path, clock=clock)
    postfix = Postfix(cfg.postfix)
    helo = route.probe_helo or _myhostname(postfix)

    async def run_probe(target: ProbeTarget) -> Result:
        return await probe(target, port=route.probe_port, helo=helo, timeout=route.probe_timeout)

    def report(outcome: RelayOutcome) -> None:
        labels = (outcome.provider or "(unknown)", outcome.smarthost or NO_SMARTHOST)
        (metrics.relayed if outcome.accepted else metrics.relay_refused).labels(*labels).inc()

    queue_dir = str(_queue_directory(postfix))
    return RouteControl(
        route,
        table=table_of(cfg),
        store=store,
        catalog=catalog,
        srs=srs,
        smarthosts=partial(_room, cfg.smarthosts, partial(accepted_since, journal, store), clock),
        probe=run_probe,
        clock=clock,
        transport=relay_transport(route.relay_listen, queue_dir),
        report=report,
        keep=cfg.journal.keep,
        max_size=_size_limit(postfix),
    )


def _queue_directory(postfix: Postfix) -> str:
    """Where a unix socket's path is taken relative to in the lmtp transport."""
    try:
        return str(postfix.queue_directory())
    except PostfixError:
        return DEFAULT_QUEUE_DIRECTORY


# With message_size_limit = 0 (no limit) the relay still holds each message in memory.
UNLIMITED_SIZE = 1 << 30


def _size_limit(postfix: Postfix) -> int:
    """Postfix's message_size_limit: the relay takes whatever Postfix took."""
    try:
        value = postfix.postconf("message_size_limit")
    except PostfixError:
        return MAX_SIZE
    if not value.isdigit():
        return MAX_SIZE
    return int(value) or UNLIMITED_SIZE


def _myhostname(postfix: Postfix) -> str:
    """The HELO name Postfix's own deliveries use, so the probe looks like them."""
    try:
        return postfix.postconf("myhostname") or socket.getfqdn()
    except PostfixError:
        return socket.getfqdn()


def show_route(view: RouteView, metrics: Metrics) -> None:
    """Put the route states and the table's size into the metrics."""
    metrics.route_state.clear()
    for route in view.routes.values():
        for state in ("healthy", "rerouting"):
            metrics.route_state.labels(route.provider, state).set(
                1 if route.effective == state else 0
            )
        metrics.route_changed.labels(route.provider).set(route.changed_at)
    metrics.route_entries.set(len(view.entries))
