"""The service's routing: provider states from its cycles and probes, the table, the relay.

Every state lives in the journal's file (store.py), so a restart, or a crash, picks up
where the last run was: the table is rebuilt from there before the relay listens. The
table lists domains only while this process serves the relay; stopping empties it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rescue.classify.catalog import Catalog
from rescue.classify.reasons import reason_host
from rescue.config import DEFAULT_JOURNAL_KEEP, Config, RetryConfig, RouteConfig, SmarthostConfig
from rescue.diagnose.probe import ProbeTarget
from rescue.diagnose.result import Result, Status
from rescue.errors import ConfigError, PostfixError, RescueError
from rescue.model import Classification, QueuedMessage
from rescue.postfix.lookuptable import LookupTable
from rescue.route.breaker import (
    HEALTHY,
    REROUTING,
    ProviderRoute,
    needs_probe,
    probed,
    tripped,
)
from rescue.route.entries import STUCK, TableEntry, table_entries
from rescue.route.relay import Relay, RelayOutcome
from rescue.route.relayserver import MAX_SIZE, RelayServer
from rescue.route.store import RouteStore
from rescue.smarthost.pool import Dispatcher
from rescue.srs.rewriter import SrsRewriter

log = logging.getLogger(__name__)

# Postfix retries on its own: the relay path tries each smarthost once per transaction, so
# that Postfix hears an answer well within its smtp_data_done_timeout (600s).
RELAY_RETRY = RetryConfig(attempts=1, max_wait=0.0, initial_wait=0.0)
# Relayed mail is forgotten after [journal] keep, looked at this often.
PRUNE_EVERY = 3600.0
RELAY_HOSTNAME = "queue-rescue.relay"  # never Postfix's myhostname: it would see a loop

Probe = Callable[[ProbeTarget], Awaitable[Result]]


@dataclass(frozen=True, slots=True)
class Trip:
    """A provider the auto rules act on in this cycle, and why."""

    provider: str
    why: str


@dataclass
class RouteView:
    """What status lines and metrics show: states and the table's entries."""

    routes: dict[str, ProviderRoute] = field(default_factory=dict)
    entries: list[TableEntry] = field(default_factory=list)
    paused: str | None = None

    def status(self) -> str:
        rerouting = [r.provider for r in self.routes.values() if r.rerouting]
        if not rerouting:
            return "route: all healthy"
        text = f"route: {', '.join(sorted(rerouting))} rerouting, {len(self.entries)} domains"
        return text + (f" (paused: {self.paused})" if self.paused else "")


def trips(
    deferred: Mapping[str, int], held_back: Mapping[tuple[str, str], int], min_messages: str
) -> dict[str, int]:
    """Providers whose auto rules matched enough mail this cycle: provider -> messages.

    `deferred`: messages selected per provider; `held_back`: what waits and why. Mail held
    back only for want of `min_messages` does not trip the breaker; any other reason
    (min_age, backoff, quotas) means the rules did match it.
    """
    out: dict[str, int] = dict(deferred)
    for (provider, why), count in held_back.items():
        if why != min_messages:
            out[provider] = out.get(provider, 0) + count
    return {p: n for p, n in out.items() if n > 0}


def newest_matching(
    messages: Sequence[QueuedMessage], classes: Mapping[str, Sequence[Classification]]
) -> dict[str, int]:
    """provider -> arrival time of its newest deferred message that matches its reasons."""
    newest: dict[str, int] = {}
    for message in messages:
        if message.queue_name != "deferred":
            continue
        for cls in classes[message.queue_id]:
            if cls.provider is not None and cls.reason_matched is not None:
                newest[cls.provider] = max(newest.get(cls.provider, 0), message.arrival_time)
    return newest


def stale_trip(route: ProviderRoute, newest: int | None) -> bool:
    """Whether only mail older than the provider's recovery matches its reasons.

    Such mail keeps the delay reason of its last try, from before the recovery, until
    Postfix tries it again: no sign of new trouble, and tripping on it would send the
    provider straight back to rerouting. That backlog is still flushed as before.
    """
    return (
        route.state == HEALTHY
        and route.changed_at > 0
        and newest is not None
        and newest <= route.changed_at
    )


def stuck_domains(
    messages: Sequence[QueuedMessage],
    classes: Mapping[str, Sequence[Classification]],
    providers: Iterable[str],
) -> dict[str, dict[str, str]]:
    """provider -> {domain: why} of its deferred recipients."""
    wanted = set(providers)
    out: dict[str, dict[str, str]] = {}
    for message in messages:
        if message.queue_name != "deferred":
            continue
        for recipient, cls in zip(message.recipients, classes[message.queue_id], strict=False):
            if cls.provider in wanted and recipient.domain:
                out.setdefault(cls.provider, {})[recipient.domain] = STUCK
    return out


def probe_targets(
    messages: Sequence[QueuedMessage],
    classes: Mapping[str, Sequence[Classification]],
    providers: Iterable[str],
) -> dict[str, dict[str, str]]:
    """provider -> the newest deferred sender and recipient with the host that refused it.

    Only deferrals that match the provider's reasons count: mail the relay endpoint
    answered with a 4xx names this host, which is no place to probe the provider at.
    """
    wanted = set(providers)
    best: dict[str, tuple[int, dict[str, str]]] = {}
    for message in messages:
        if message.queue_name != "deferred":
            continue
        for recipient, cls in zip(message.recipients, classes[message.queue_id], strict=False):
            peer = reason_host(recipient.delay_reason) if recipient.delay_reason else None
            if cls.provider not in wanted or cls.reason_matched is None:
                continue
            if peer is None or not peer[1]:
                continue
            seen = best.get(cls.provider)
            if seen is None or message.arrival_time >= seen[0]:
                target = {
                    "host": peer[0],
                    "address": peer[1],
                    "sender": message.sender,
                    "recipient": recipient.address,
                }
                best[cls.provider] = (message.arrival_time, target)
    return {p: t for p, (_, t) in best.items()}


def table_of(cfg: Config) -> LookupTable:
    """The [route] map of a configuration that has one, with its Postfix's postmap."""
    if cfg.route is None:
        raise ConfigError(cfg.path, "route", "no [route] table: routing is off")
    return LookupTable(
        cfg.route.map_type,
        cfg.route.map_path,
        command_dir=cfg.postfix.command_dir,
        config_dir=cfg.postfix.config_dir,
    )


class RouteControl:
    """Provider states, the transport table and the relay endpoint of one service."""

    def __init__(
        self,
        cfg: RouteConfig,
        *,
        table: LookupTable,
        store: RouteStore,
        catalog: Catalog,
        srs: SrsRewriter,
        smarthosts: Callable[[], tuple[Sequence[SmarthostConfig], str | None]],
        probe: Probe,
        clock: Callable[[], float],
        transport: str,
        report: Callable[[RelayOutcome], None] = lambda _o: None,
        keep: float = DEFAULT_JOURNAL_KEEP,
        max_size: int = MAX_SIZE,
    ) -> None:
        """`smarthosts()` gives the smarthosts with room in their quotas (and why none)."""
        self.cfg = cfg
        self.table = table
        self.store = store
        self.catalog = catalog
        self._smarthosts = smarthosts
        self._probe = probe
        self._clock = clock
        self._transport = transport
        self._report = report
        self._keep = keep
        self._dispatchers: dict[tuple[str, ...], Dispatcher] = {}
        self.view = RouteView()
        self._written: list[TableEntry] | None = None
        self._started = False
        self._pruned = float("-inf")
        self._domain_owner: dict[str, str] = {}
        self.relay = Relay(
            srs=srs,
            store=store,
            smarthosts=self._relay_smarthosts,
            dispatcher=self._dispatcher,
            provider_of=self._provider_of,
            report=self._relayed,
        )
        self.server = RelayServer(self.relay, hostname=RELAY_HOSTNAME, max_size=max_size)

    # --- life -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Count unanswered relays of a crash, rebuild the table, then listen."""
        for row in self.store.unanswered():
            log.warning(
                "%s: relay to %s was cut off before Postfix heard the answer: "
                "Postfix sends it again, so it may be delivered twice",
                row.queue_id,
                ",".join(row.recipients),
            )
        try:
            await self.server.start(self.cfg.relay_listen)
        except OSError as exc:
            kind, where, port = self.cfg.relay_listen
            name = f"unix:{where}" if kind == "unix" else f"{where}:{port}"
            raise RescueError(f"[route] relay_listen: cannot listen on {name}: {exc}") from exc
        log.info("relay endpoint listening on %s; table %s", self.server.address, self.table.spec)
        self.refresh()

    async def stop(self, grace: float) -> None:
        """Empty the table (mail goes the usual way again), then close the relay."""
        try:
            await asyncio.to_thread(self.table.write, {})
            log.info("route table %s emptied", self.table.spec)
        except PostfixError as exc:
            log.error("could not empty the route table: %s", exc)
        await self.server.close(grace)
        for dispatcher in self._dispatchers.values():
            await dispatcher.close()

    # --- the cycle's part ---------------------------------------------------------------

    def after_cycle(
        self,
        messages: Sequence[QueuedMessage],
        classes: Mapping[str, Sequence[Classification]],
        tripping: Mapping[str, int],
    ) -> None:
        """Trip the breakers the auto rules matched; remember the rerouted domains."""
        now = self._clock()
        if now - self._pruned >= PRUNE_EVERY:
            self.store.prune(now - self._keep)
            self._pruned = now
        routes = self.store.routes()
        newest = newest_matching(messages, classes)
        for provider, count in sorted(tripping.items()):
            old = routes.get(provider, ProviderRoute(provider))
            if stale_trip(old, newest.get(provider)):
                log.debug("provider %s: only mail from before its recovery matches", provider)
                continue
            why = f"{count} deferred messages match its reroute reasons"
            self._save(old, tripped(old, why, now))
        routes = self.store.routes()
        rerouting = [p for p, r in routes.items() if r.rerouting]
        for provider, domains in stuck_domains(messages, classes, rerouting).items():
            self.store.add_domains(provider, domains)
        for provider, target in probe_targets(messages, classes, rerouting).items():
            self.store.save_target(provider, target)
        self.refresh()

    def refresh(self) -> None:
        """Write the table when what it should list changed (state, domains, quota)."""
        routes = self.store.routes()
        hosts, full = self._smarthosts()
        paused = full if not hosts else None
        if paused != self.view.paused:
            if paused:
                log.warning("smarthost quota reached (%s): rerouted domains leave the table", full)
            else:
                log.info("smarthost quota has room again: rerouted domains return to the table")
        configured = {p.name: p.domains for p in self.catalog.providers}
        entries = table_entries(
            routes.values(), self.store.domains(), configured, self._transport, paused=paused
        )
        self._log_changes(self.view.routes, routes)
        self.view = RouteView(routes, entries, paused)
        self._domain_owner = {e.domain: e.provider for e in entries}
        if entries != self._written:
            self.table.write(
                {e.domain: e.transport for e in entries}, {e.domain: e.why for e in entries}
            )
            self._written = entries
            log.info("route table %s: %d domains", self.table.spec, len(entries))

    def _save(self, old: ProviderRoute, new: ProviderRoute) -> None:
        if new == old:
            return
        self.store.save(new)
        if new.effective not in (old.effective, REROUTING):
            self.store.forget_domains(new.provider)

    def _log_changes(
        self, before: Mapping[str, ProviderRoute], after: Mapping[str, ProviderRoute]
    ) -> None:
        """Each change of a provider's route once, whoever made it (the service, or
        `route set` in another process); at start, the providers rerouted already."""
        for name, new in sorted(after.items()):
            old = before.get(name)
            if old is None and not self._started and new.rerouting:
                log.warning(
                    "provider %s: %s (from the journal): %s", name, new.describe(), new.reason
                )
            elif old is not None and old.effective != new.effective:
                log.warning(
                    "provider %s: %s -> %s: %s", name, old.effective, new.describe(), new.reason
                )
            elif old is None and new.rerouting:
                log.warning("provider %s: healthy -> %s: %s", name, new.describe(), new.reason)
        self._started = True

    # --- probes -------------------------------------------------------------------------

    async def probe_loop(self, stop: asyncio.Event) -> None:
        """Every probe_interval, probe each provider the breaker reroutes."""
        while not stop.is_set():
            await self.probe_once()
            with_timeout = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({with_timeout}, timeout=self.cfg.probe_interval)
            finally:
                with_timeout.cancel()

    async def probe_once(self) -> None:
        for provider, route in sorted(self.store.routes().items()):
            if not needs_probe(route):
                continue
            target = self.store.target(provider)
            if target is None:
                log.info("provider %s: no stuck mail seen yet to probe with", provider)
                continue
            result = await self._probe(ProbeTarget(provider=provider, **target))
            accepted = result.status is Status.OK
            log.info("provider %s: probe %s: %s", provider, result.status.value, result.detail)
            latest = self.store.routes().get(provider, route)
            new = probed(
                latest, accepted, result.detail, self._clock(), recover_after=self.cfg.recover_after
            )
            self._save(latest, new)
        self.refresh()

    # --- the relay's helpers ----------------------------------------------------------------

    def _relay_smarthosts(self) -> tuple[Sequence[SmarthostConfig], str | None]:
        hosts, full = self._smarthosts()
        if not hosts and self.view.paused is None:
            # The quota filled up between cycles: take the domains out of the table now.
            self.refresh()
        return hosts, full

    def _provider_of(self, domain: str) -> str | None:
        return self._domain_owner.get(domain)

    def _dispatcher(self, hosts: Sequence[SmarthostConfig]) -> Dispatcher:
        names = tuple(h.name for h in hosts)
        if names not in self._dispatchers:
            self._dispatchers[names] = Dispatcher(hosts, RELAY_RETRY)
        return self._dispatchers[names]

    def _relayed(self, outcome: RelayOutcome) -> None:
        o = outcome
        if o.accepted:
            log.info(
                "%s: relayed: provider %s, to %s via %s: %s",
                o.queue_id,
                o.provider or "-",
                ",".join(o.recipients),
                o.smarthost,
                o.reply,
            )
        else:
            log.warning(
                "%s: relay refused (Postfix keeps it): provider %s, to %s: %s%s",
                o.queue_id,
                o.provider or "-",
                ",".join(o.recipients),
                o.reply,
                " -- may be delivered twice" if o.uncertain else "",
            )
        self._report(outcome)
