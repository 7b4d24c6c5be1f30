"""`queue-rescue run`: the service; reroutes what the auto rules pick, every interval."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from rescue.cli.common import load_config
from rescue.cli.queueview import own_relays
from rescue.config import sending
from rescue.journal.lock import CycleLock, InstanceLock, service_path
from rescue.service.loop import Service
from rescue.service.metrics import Metrics
from rescue.service.sdnotify import Notifier


def service_logging() -> None:
    """INFO by default: a service's log is its record of what it did to each message."""
    root = logging.getLogger()
    if root.level > logging.INFO:
        root.setLevel(logging.INFO)
    if root.level > logging.DEBUG:
        # The service logs each outcome itself, with its provider; the flush's own lines
        # would say the same again (its warnings and errors still show).
        logging.getLogger("rescue.flush").setLevel(logging.WARNING)


@click.command()
@click.pass_context
def run(ctx: click.Context) -> None:
    """Run as a service: reroute deferred mail by the providers' auto rules.

    Every [service] interval the queue is listed and classified; mail that a
    provider with reroute = "auto" deferred with one of its reasons is flushed
    through the smarthost as `flush` would (min_age, min_messages and
    max_per_cycle per provider; max_per_hour and max_per_day per smarthost).
    Mail to every other destination stays with Postfix.

    \b
    Signals:
      SIGTERM, SIGINT  stop taking messages, give those in flight back to Postfix, exit 0
      SIGHUP           read the configuration again (a bad one is logged, the old one kept)

    Holds the queue lock during each cycle only: a `flush` or `export` by hand
    waits for the cycle under way to end, and no cycle starts while it runs.
    Under systemd (Type=notify) it reports READY, STATUS and WATCHDOG.
    """
    # Until the loop handles it: a reload asked for while starting must not end us.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    service_logging()
    cfg = load_config(ctx)
    sending(cfg)  # the service sends: [srs] and [[smarthost]] before it starts
    metrics = Metrics()
    # One service per journal; the queue lock it takes for each cycle only.
    with InstanceLock(service_path(cfg.journal.lock_path), "run"):
        if cfg.service.metrics_listen is not None:
            metrics.serve(*cfg.service.metrics_listen)
        try:
            service = Service(
                cfg,
                notifier=Notifier(),
                metrics=metrics,
                relays=own_relays,
                lock=CycleLock(cfg.journal.lock_path),
            )
            asyncio.run(service.run())
        finally:
            metrics.close()
