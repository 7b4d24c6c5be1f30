"""How `flush` reports: a JSON line a message, or a progress bar, a list and a summary."""

from __future__ import annotations

import time
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from rescue.cli.output import age, console, json_line, print_table, show_sender
from rescue.flush.plan import Outcome, Summary

if TYPE_CHECKING:  # rich takes tens of milliseconds to import; flush --json never needs it
    from rich.console import Console
    from rich.progress import Progress


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    # Field by field: dataclasses.asdict deep-copies, a cost per message that adds up.
    return {name: getattr(outcome, name) for name in OUTCOME_FIELDS}


OUTCOME_FIELDS = tuple(f.name for f in fields(Outcome))

# Past this many messages the closing list shows only those not rerouted.
LIST_LIMIT = 100


class FlushReporter:
    """Reports each message as it settles: JSON lines, or a progress bar with log lines."""

    def __init__(
        self, *, as_json: bool, total: int | None, interactive: bool, dry_run: bool
    ) -> None:
        """`total` is the number of messages selected; None when the flush streams."""
        self.as_json = as_json
        self.dry_run = dry_run
        self.now = time.time()
        # What the closing list shows: every outcome of a dry run or of a short flush;
        # past LIST_LIMIT only those that need attention (a large flush keeps no list).
        self.outcomes: list[Outcome] = []
        self._seen = 0
        self._progress: Progress | None = None
        self._task: Any = None
        if interactive and not as_json and not dry_run and total != 0:
            from rich.console import Console  # noqa: PLC0415
            from rich.progress import (  # noqa: PLC0415
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("rerouting"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._progress.add_task("flush", total=total)
        self._started = False  # its refresh thread starts with the first outcome

    def __call__(self, outcome: Outcome) -> None:
        self._seen += 1
        if self.as_json:
            json_line(outcome_json(outcome))
        elif self.dry_run or outcome.action != "rerouted" or self._seen <= LIST_LIMIT + 1:
            self.outcomes.append(outcome)
        if self._progress is not None:
            if not self._started:
                # Not earlier: the flush forks its read-ahead helper before any thread runs.
                self._progress.start()
                self._started = True
            self._progress.advance(self._task)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def finish(self, summary: Summary) -> None:
        self.close()
        if self.as_json:
            json_line({"summary": summary.as_dict()})
            return
        out = console()
        if self.dry_run:
            self._dry_run_table(out)
        else:
            self._result_lines(out)
        counts = summary.as_dict()
        words = [f"{counts['selected']} selected"]
        for key in ("would_reroute", "rerouted", "released", "failed", "skipped"):
            if counts[key]:
                words.append(f"{counts[key]} {key.replace('_', '-')}")
        if counts["uncertain"]:
            words.append(f"{counts['uncertain']} may have been sent more than once")
        if not self.dry_run and counts["rerouted"]:
            words.append(f"{counts['messages_per_second']} msg/s")
        out.print("Summary: " + ", ".join(words) + f" in {summary.elapsed:.1f}s")

    def _dry_run_table(self, out: Console) -> None:
        rows = [
            (
                o.queue_id,
                age(self.now - o.arrival_time),
                f"{show_sender(o.sender)} -> {show_sender(o.envelope_sender or '')}",
                "\n".join(o.recipients),
                o.provider or "-",
                o.reason or "-",
                o.smarthost or "-",
            )
            for o in self.outcomes
        ]
        headers = (
            "queue id",
            "age",
            "sender -> envelope sender",
            "recipients",
            "provider",
            "reason matched",
            "smarthost",
        )
        if rows:
            print_table(out, "Dry run: would reroute (nothing was changed)", headers, rows)
        out.print("Dry run: nothing was changed.")

    def _result_lines(self, out: Console) -> None:
        """One line a message; past LIST_LIMIT only those that need attention."""
        many = self._seen > LIST_LIMIT
        for o in self.outcomes:
            if o.action == "rerouted" and not many:
                out.print(f"{o.queue_id} rerouted via {o.smarthost}: {o.reply}", markup=False)
            elif o.action != "rerouted":
                out.print(f"{o.queue_id} {o.action}: {o.detail}", markup=False)
        if many:
            out.print(
                f"({self._seen} messages: rerouted ones are not listed; --json or -v shows each)"
            )
