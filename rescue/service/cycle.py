"""One service cycle as the service reports it: its status line, log lines, error counts."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from rescue.flush.plan import FAILED, RELEASED_ACTION, REROUTED, Outcome, Summary

log = logging.getLogger(__name__)


def _rcpts(outcome: Outcome) -> str:
    return ",".join(outcome.recipients) or "-"


def log_outcome(outcome: Outcome) -> None:
    """One line per message the service acted on: id, provider, recipients, smarthost, reply."""
    o = outcome
    if o.action == REROUTED:
        log.info(
            "%s: rerouted: provider %s, to %s via %s: %s",
            o.queue_id,
            o.provider,
            _rcpts(o),
            o.smarthost,
            o.reply,
        )
    else:
        log.log(
            logging.WARNING if o.action == FAILED else logging.INFO,
            "%s: %s: provider %s, to %s, via %s: %s",
            o.queue_id,
            o.action,
            o.provider,
            _rcpts(o),
            o.smarthost or "-",
            o.detail,
        )


@dataclass
class Cycle:
    """What one cycle did, for the status line, the metrics and the run's totals."""

    deferred: int = 0
    summary: Summary = field(default_factory=Summary)
    held_back: int = 0
    error: str | None = None
    # Who had the queue when this cycle was due (a flush by hand): the cycle was skipped.
    skipped_for: str | None = None
    route: str = ""  # the route states in words, when [route] is set

    def summary_line(self) -> str:
        c = self.summary.counts
        return (
            f"{self.deferred} deferred, {c[REROUTED]} rerouted, {c[RELEASED_ACTION]} released, "
            f"{c[FAILED]} failed, {self.held_back} held back"
        )

    def status(self) -> str:
        route = f"; {self.route}" if self.route else ""
        if self.skipped_for is not None:
            return (
                f"cycle {time.strftime('%H:%M:%S')} skipped: the queue is {self.skipped_for}{route}"
            )
        if self.error is not None:
            return f"last cycle failed: {self.error}{route}"
        return f"last cycle {time.strftime('%H:%M:%S')}: {self.summary_line()}{route}"


def new_errors(
    before: Mapping[str, Mapping[str, int]], after: Mapping[str, Mapping[str, int]]
) -> dict[str, dict[str, int]]:
    return {
        host: {kind: n - before.get(host, {}).get(kind, 0) for kind, n in kinds.items()}
        for host, kinds in after.items()
    }
