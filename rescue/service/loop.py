"""`queue-rescue run`: every interval, reroute what the providers' auto rules pick.

The loop feeds the queue to the pure rules (autorules.py) and runs the same Flush
as the `flush` command, under the same lock and journal.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from rescue.classify.catalog import Catalog, load_catalog
from rescue.classify.dns import MxResolver
from rescue.classify.inventory import take_inventory
from rescue.config import Config, SmarthostConfig, load_config, sending
from rescue.errors import JournalError, RescueError
from rescue.flush.core import Flush
from rescue.flush.plan import FAILED, RELEASED_ACTION, REROUTED, Outcome
from rescue.journal.lock import CycleLock
from rescue.journal.recovery import recover
from rescue.journal.store import Journal
from rescue.model import Classification, QueuedMessage, Selected
from rescue.postfix.commands import Postfix
from rescue.postfix.listing import BadLine
from rescue.postfix.reader import HeldMessageReader
from rescue.route.control import RouteControl, trips
from rescue.service.autorules import (
    DAY,
    HOUR,
    LIMITS,
    MIN_MESSAGES,
    RELEASE_BACKOFF,
    UNKNOWN_PROVIDER,
    Choice,
    Quota,
    choose_auto,
    smarthost_quota,
    within_budget,
)
from rescue.service.cycle import Cycle, log_outcome, new_errors
from rescue.service.metrics import NO_SMARTHOST, Metrics
from rescue.service.routing import accepted_since, build_route, show_route
from rescue.service.sdnotify import Notifier
from rescue.smarthost.pool import Dispatcher
from rescue.srs.rewriter import SrsRewriter

log = logging.getLogger(__name__)
# Seconds the relay endpoint waits for transactions in flight when the service stops.
RELAY_GRACE = 10.0

# How often a long-running service forgets settled messages older than [journal] keep.
PRUNE_EVERY = 3600.0


class _Parts:
    """What a configuration builds once and every cycle shares, until a reload."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.catalog: Catalog = load_catalog(cfg.providers)
        self.srs = SrsRewriter.from_config(sending(cfg).srs)
        # One resolver for the config's life: its cache spares DNS a lookup per cycle.
        self.resolver = MxResolver(cfg.dns) if cfg.dns.enabled else None
        self.reader: HeldMessageReader | None = None
        # One dispatcher per set of smarthosts, kept across cycles so that a smarthost's
        # cool-down after failures outlasts the cycle it began in.
        self._dispatchers: dict[tuple[str, ...], Dispatcher] = {}

    def dispatcher(self, hosts: Sequence[SmarthostConfig]) -> Dispatcher:
        names = tuple(h.name for h in hosts)
        if names not in self._dispatchers:
            self._dispatchers[names] = Dispatcher(hosts, self.cfg.retry)
        return self._dispatchers[names]


def _listing(postfix: Postfix) -> list[QueuedMessage | BadLine]:
    return list(postfix.listing())


class Service:
    """The loop of `queue-rescue run`; run() returns once SIGTERM or SIGINT stopped it."""

    def __init__(
        self,
        cfg: Config,
        *,
        notifier: Notifier,
        metrics: Metrics,
        relays: Callable[[Config, Postfix], tuple[str, ...]],
        load: Callable[[Path], Config] = load_config,
        lock: CycleLock | None = None,
    ) -> None:
        """`relays` names Postfix's own relays (the CLI's own_relays: config and relayhost).

        `lock`: the queue lock, taken for each cycle and given back between cycles, so
        that a flush by hand gets the queue in between (the CLI's; None in tests).
        """
        self._lock = lock
        self._cfg = cfg
        self._relays = relays
        self._notifier = notifier
        self._metrics = metrics
        self._load = load
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload_asked = False
        self._parts = _Parts(cfg)
        metrics.quotas(cfg.smarthosts)
        self._route: RouteControl | None = None
        self._probes: asyncio.Task[None] | None = None
        self.totals: collections.Counter[str] = collections.Counter()

    # --- signals ----------------------------------------------------------------------------

    def stop(self) -> None:
        if not self._stop.is_set():
            log.info("stopping: no new messages; those in flight go back to Postfix")
            self._notifier.stopping("stopping")
        self._stop.set()

    def reload(self) -> None:
        log.info("reloading %s", self._cfg.path)
        self._reload_asked = True
        self._wake.set()

    def _apply_reload(self) -> None:
        self._reload_asked = False
        old = self._cfg
        try:
            new = self._load(old.path)
            if new.journal != old.journal:
                log.warning("reload: a new [journal] takes a restart; keeping %s", old.journal)
                new = replace(new, journal=old.journal)
            if new.service.metrics_listen != old.service.metrics_listen:
                log.warning("reload: a new [service] metrics_listen takes a restart")
            parts = _Parts(new)
        except RescueError as exc:
            log.error("reload failed, keeping the configuration in use: %s", exc)
            return
        self._cfg, self._parts = new, parts
        self._metrics.quotas(new.smarthosts)
        self._reload_route(old, new)
        log.info("reloaded %s", new.path)

    # --- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        every = self._notifier.watchdog_interval
        watchdog = asyncio.create_task(self._watchdog(every)) if every else None
        journal = Journal(self._cfg.journal.path)
        try:
            journal.begin_run("run", os.getpid(), keep=self._cfg.journal.keep)
            self._log_start()
            await self._start_route(journal)
            await self._loop(journal)
            journal.end_run(dict(self.totals))
        finally:
            await self._stop_route()
            journal.close()
            if watchdog is not None:
                watchdog.cancel()
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            log.info("stopped")

    def _log_start(self) -> None:
        cfg = self._cfg
        autos = [p.name for p in self._parts.catalog.providers if p.reroute == "auto"]
        log.info(
            "started: every %gs, reroute = auto for %s, through %s",
            cfg.service.interval,
            ", ".join(autos) or 'no provider (set reroute = "auto" in a [[provider]])',
            ", ".join(h.name for h in cfg.smarthosts),
        )

    async def _watchdog(self, every: float) -> None:
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(every)

    async def _loop(self, journal: Journal) -> None:
        ready = False
        pruned = time.monotonic()
        while not self._stop.is_set():
            started = time.monotonic()
            holder = self._lock.take() if self._lock is not None else None
            if holder is not None:
                # The holder of the queue, or a flush waiting its turn ("waiting since").
                log.info("a flush by hand has or waits for the queue (%s): cycle skipped", holder)
                cycle = Cycle(skipped_for=f"held or awaited by {holder}")
            else:
                try:
                    if started - pruned >= PRUNE_EVERY:
                        self._prune(journal)
                        pruned = started
                    cycle = await self._guarded(journal)
                finally:
                    if self._lock is not None:
                        self._lock.give_back()
            if self._stop.is_set():
                break
            if ready:
                self._notifier.status(cycle.status())
            else:
                self._notifier.ready(cycle.status())
                ready = True
            await self._sleep(started + self._cfg.service.interval - time.monotonic())
            if self._reload_asked:
                self._apply_reload()

    def _prune(self, journal: Journal) -> None:
        """Forget settled messages older than [journal] keep (also done at start)."""
        try:
            forgotten = journal.prune(time.time() - self._cfg.journal.keep)
        except JournalError as exc:
            log.error("journal: %s; pruning it again in an hour", exc)
            return
        if forgotten:
            log.info("journal: forgot %d settled messages older than the keep time", forgotten)

    async def _sleep(self, seconds: float) -> None:
        """Until the next cycle is due, or a signal says otherwise."""
        waiters = {asyncio.create_task(self._stop.wait()), asyncio.create_task(self._wake.wait())}
        try:
            await asyncio.wait(
                waiters, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()

    async def _guarded(self, journal: Journal) -> Cycle:
        """One cycle; its errors are logged and it is tried again next interval.

        SIGTERM cancels it: the flush then gives what it holds back to Postfix.
        Without the journal nothing is safe, so a JournalError ends the service.
        """
        cycle = Cycle()
        task = asyncio.create_task(self._cycle(journal, cycle))
        stopped = asyncio.create_task(self._stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if not task.done():
            # The flush gives back what it holds: at once what it never started, within
            # half of stop_timeout what awaits an answer to its final dot.
            task.cancel()
            deadline = self._cfg.service.stop_timeout
            await asyncio.wait({task}, timeout=deadline)
            if not task.done():
                # Never close the journal under a running flush: it still settles.
                log.error("the abandoned cycle did not end within %gs; still waiting", deadline)
                await asyncio.wait({task})
            return cycle
        if task.cancelled() or (exc := task.exception()) is None:
            return cycle
        if isinstance(exc, JournalError):
            raise exc
        self._metrics.cycle_errors.inc()
        cycle.error = str(exc)
        if isinstance(exc, RescueError):
            log.error("cycle failed: %s; trying again in %gs", exc, self._cfg.service.interval)
        else:
            log.error("cycle failed with an unexpected error (a bug)", exc_info=exc)
            cycle.error = f"unexpected error: {exc!r}"
        return cycle

    async def _cycle(self, journal: Journal, cycle: Cycle) -> None:
        cfg, parts = self._cfg, self._parts
        started = time.monotonic()
        postfix = Postfix(cfg.postfix)
        # Every cycle, not only the first: a release that failed in the last one (postsuper
        # down) is repaired here. Without open journal entries it costs one query.
        report = recover(journal, postfix)
        if not report.empty:
            log.info(
                "recovered: %d accepted earlier deleted from hold, %d released to Postfix",
                len(report.deleted),
                len(report.released),
            )
        listing = await asyncio.to_thread(_listing, postfix)
        relays = await asyncio.to_thread(self._relays, cfg, postfix)
        inventory = await take_inventory(listing, parts.catalog, parts.resolver, relays)
        for bad in inventory.bad:
            log.warning("%s: unreadable queue listing line: %s", bad.queue_id or "?", bad.problem)
        now = time.time()
        choice = choose_auto(
            inventory.messages,
            inventory.classes,
            parts.catalog.providers,
            now,
            backoff=journal.released_since(now - RELEASE_BACKOFF),
        )
        quota = smarthost_quota(
            cfg.smarthosts,
            self._accepted_since(journal, now - HOUR),
            self._accepted_since(journal, now - DAY),
            len(choice.selection),
        )
        choice = within_budget(choice, quota.budget)
        self._report_held(choice, quota)
        self._route_cycle(inventory.messages, inventory.classes, choice, cycle)
        cycle.deferred = sum(1 for m in inventory.messages if m.queue_name == "deferred")
        cycle.held_back = sum(choice.held_back.values())
        self._metrics.deferred(choice.deferred)
        self._metrics.held(choice.held_back)
        if choice.selection:
            await self._flush(journal, postfix, choice.selection, quota.smarthosts, cycle)
            log.info("cycle: %s", cycle.summary_line())
        self.totals.update(cycle.summary.counts)
        self._metrics.last_cycle.set(time.time())
        self._metrics.last_cycle_duration.set(time.monotonic() - started)

    # --- routing (issue 16): new mail around a provider in trouble -------------------------

    async def _start_route(self, journal: Journal) -> None:
        """With [route]: rebuild the table from the journal, listen, start probing."""
        self._route = build_route(
            self._cfg,
            journal=journal,
            catalog=self._parts.catalog,
            srs=self._parts.srs,
            metrics=self._metrics,
            clock=time.time,
        )
        if self._route is not None:
            await self._route.start()
            show_route(self._route.view, self._metrics)
            self._probes = asyncio.create_task(self._probe_loop(self._route))

    async def _probe_loop(self, route: RouteControl) -> None:
        while not self._stop.is_set():
            try:
                await route.probe_once()
            except RescueError as exc:
                log.error("route: %s; probing again in %gs", exc, route.cfg.probe_interval)
            except Exception:
                log.exception("route: unexpected error while probing (a bug); probing goes on")
            show_route(route.view, self._metrics)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), route.cfg.probe_interval)

    async def _stop_route(self) -> None:
        """Empty the table (Postfix routes as before), then close the relay endpoint."""
        if self._probes is not None:
            self._probes.cancel()
            await asyncio.wait({self._probes})
        if self._route is not None:
            # Transactions in flight get what is left of the unit's TimeoutStopSec (60s)
            # after a cycle's stop_timeout (at most 45s): Postfix keeps any it cuts.
            await self._route.stop(grace=min(self._cfg.service.stop_timeout / 2, RELAY_GRACE))
            self._route.store.close()

    def _reload_route(self, old: Config, new: Config) -> None:
        """The providers' domains follow a reload; the relay's setup takes a restart."""
        changed = (new.route, new.smarthosts, new.srs) != (old.route, old.smarthosts, old.srs)
        if changed and (self._route is not None or new.route is not None):
            log.warning("reload: routing keeps its [route], smarthosts and SRS until a restart")
        if self._route is not None:
            self._route.catalog = self._parts.catalog

    def _route_cycle(
        self,
        messages: Sequence[QueuedMessage],
        classes: Mapping[str, Sequence[Classification]],
        choice: Choice,
        cycle: Cycle,
    ) -> None:
        if self._route is None:
            return
        selected = collections.Counter(s.provider for s in choice.selection)
        try:
            self._route.after_cycle(
                messages, classes, trips(selected, choice.held_back, MIN_MESSAGES)
            )
        except RescueError as exc:
            log.error("route: %s", exc)
        cycle.route = self._route.view.status()
        show_route(self._route.view, self._metrics)

    def _accepted_since(self, journal: Journal, since: float) -> dict[str, int]:
        """Flushed and relayed mail: the smarthosts' quotas count both."""
        return accepted_since(journal, self._route.store if self._route else None, since)

    def _report_held(self, choice: Choice, quota: Quota) -> None:
        for text in quota.full:
            log.info("smarthost quota reached: %s", text)
        for (provider, why), count in sorted(choice.held_back.items()):
            level = logging.INFO if why in LIMITS else logging.DEBUG
            log.log(level, "%s: %d messages wait for a later cycle (%s)", provider, count, why)

    async def _flush(
        self,
        journal: Journal,
        postfix: Postfix,
        selection: Sequence[Selected],
        smarthosts: Sequence[SmarthostConfig],
        cycle: Cycle,
    ) -> None:
        parts = self._parts
        if parts.reader is None:
            parts.reader = await asyncio.to_thread(HeldMessageReader, postfix)
        dispatcher = parts.dispatcher(smarthosts)
        errors_before = dispatcher.error_counts()

        def report(outcome: Outcome) -> None:
            log_outcome(outcome)
            labels = (outcome.provider or UNKNOWN_PROVIDER, outcome.smarthost or NO_SMARTHOST)
            if outcome.action == REROUTED:
                self._metrics.rerouted.labels(*labels).inc()
            elif outcome.action in (RELEASED_ACTION, FAILED):
                self._metrics.failed.labels(*labels).inc()

        flush = Flush(
            queue=postfix,
            journal=journal,
            srs=parts.srs,
            dispatcher=dispatcher,
            read_envelope=parts.reader,
            report=report,
            primary=smarthosts[0].name,
            read_in_thread=not parts.reader.direct,
            stop_grace=self._cfg.service.stop_timeout / 2,
        )
        cycle.summary = flush.summary
        try:
            await flush.run(selection)
        finally:
            self._metrics.errors(new_errors(errors_before, dispatcher.error_counts()))
