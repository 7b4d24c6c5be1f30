"""The service's Prometheus metrics; served only when [service] metrics_listen is set."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from rescue.config import SmarthostConfig
from rescue.errors import RescueError

log = logging.getLogger(__name__)

NO_SMARTHOST = "none"  # the label of a failure before any smarthost was tried


class Metrics:
    """Every metric in a registry of its own (no process-wide state, so tests can make many)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.deferred_messages = Gauge(
            "queue_rescue_deferred_messages",
            "Deferred messages with a recipient at the provider, at the last cycle.",
            ["provider"],
            registry=r,
        )
        self.deferred_recipients = Gauge(
            "queue_rescue_deferred_recipients",
            "Deferred recipients at the provider, at the last cycle.",
            ["provider"],
            registry=r,
        )
        self.held_back = Gauge(
            "queue_rescue_held_back_messages",
            "Messages an auto rule or a limit kept from the last cycle, by why.",
            ["provider", "limit"],
            registry=r,
        )
        self.rerouted = Counter(
            "queue_rescue_rerouted_messages",
            "Messages a smarthost accepted and that were deleted from Postfix.",
            ["provider", "smarthost"],
            registry=r,
        )
        self.failed = Counter(
            "queue_rescue_failed_messages",
            "Messages a cycle did not reroute (released to Postfix, or unreadable).",
            ["provider", "smarthost"],
            registry=r,
        )
        self.smarthost_errors = Counter(
            "queue_rescue_smarthost_errors",
            "Failed attempts at a smarthost, by the SMTP stage that failed.",
            ["smarthost", "kind"],
            registry=r,
        )
        self.last_cycle = Gauge(
            "queue_rescue_last_cycle_timestamp_seconds",
            "When the last cycle ended (Unix time).",
            registry=r,
        )
        self.last_cycle_duration = Gauge(
            "queue_rescue_last_cycle_duration_seconds",
            "How long the last cycle took.",
            registry=r,
        )
        self.smarthost_quota = Gauge(
            "queue_rescue_smarthost_quota_messages",
            "The smarthost's max_per_hour and max_per_day (absent: no limit).",
            ["smarthost", "period"],
            registry=r,
        )
        self.cycle_errors = Counter(
            "queue_rescue_cycle_errors", "Cycles that ended in an error.", registry=r
        )
        self.route_state = Gauge(
            "queue_rescue_route_state",
            "1 for the provider's route state (healthy, or rerouting to the relay), else 0.",
            ["provider", "state"],
            registry=r,
        )
        self.route_changed = Gauge(
            "queue_rescue_route_changed_timestamp_seconds",
            "When the provider's route state last changed (Unix time).",
            ["provider"],
            registry=r,
        )
        self.route_entries = Gauge(
            "queue_rescue_route_table_entries",
            "Recipient domains the route table lists.",
            registry=r,
        )
        self.relayed = Counter(
            "queue_rescue_relayed_messages",
            "New mail the relay endpoint passed to a smarthost, which accepted it.",
            ["provider", "smarthost"],
            registry=r,
        )
        self.relay_refused = Counter(
            "queue_rescue_relay_refused_messages",
            "New mail the relay endpoint answered with a 4xx (Postfix keeps it).",
            ["provider", "smarthost"],
            registry=r,
        )
        self._server: WSGIServer | None = None
        self._thread: Thread | None = None

    def serve(self, host: str, port: int) -> None:
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise RescueError(f"cannot serve metrics on {host}:{port}: {exc}") from exc
        log.info("metrics on http://%s:%d/metrics", host, port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def deferred(self, by_provider: Mapping[str, tuple[int, int]]) -> None:
        """(messages, recipients) by provider; providers gone from the queue drop out."""
        self.deferred_messages.clear()
        self.deferred_recipients.clear()
        for provider, (messages, recipients) in by_provider.items():
            self.deferred_messages.labels(provider).set(messages)
            self.deferred_recipients.labels(provider).set(recipients)

    def held(self, by_reason: Mapping[tuple[str, str], int]) -> None:
        self.held_back.clear()
        for (provider, limit), count in by_reason.items():
            self.held_back.labels(provider, limit).set(count)

    def quotas(self, smarthosts: Sequence[SmarthostConfig]) -> None:
        """The configured quotas, for alerts on how much of them is used."""
        self.smarthost_quota.clear()
        for host in smarthosts:
            for period, limit in (("hour", host.max_per_hour), ("day", host.max_per_day)):
                if limit is not None:
                    self.smarthost_quota.labels(host.name, period).set(limit)

    def errors(self, by_smarthost: Mapping[str, Mapping[str, int]]) -> None:
        """Add errors by smarthost and kind, as counted during one cycle."""
        for smarthost, kinds in by_smarthost.items():
            for kind, count in kinds.items():
                self.smarthost_errors.labels(smarthost, kind).inc(count)
