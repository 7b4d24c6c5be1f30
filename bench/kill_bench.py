"""Benchmark: SIGKILL at random moments of flushes against a slow smarthost.

Builds the test lab's world (a private Postfix whose provider defers the backlog like
1&1, a lab DNS), a smarthost that waits `--reply-delay` before each reply and, at the
end of the data, stores the message and answers at once; then kills `--kills` flushes
at random moments (tests/integration/kill_runs.py says how), runs one flush to the end,
and reports: messages lost, left on hold, sent twice (per 100 kills), and whether each
one sent twice was named as maybe sent twice. It also reports the window: from the
moment the smarthost stored a message to the moment queue-rescue had its 250 on disk
(the journal's `accepted` event), over the messages that have both.

Run as root from the repository root: `python -m bench.kill_bench [--kills 45]`.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/kill_bench.py` puts bench/ first
    sys.path.insert(0, str(REPO))

from tests.integration.kill_runs import KillReport, kill_runs, submit_backlog  # noqa: E402
from tests.integration.rescue_cli import smarthost_entry  # noqa: E402
from tests.integration.world import build_world  # noqa: E402
from tests.lab.faults import Received  # noqa: E402
from tests.lab.postfix import new_lab_root, remove_lab_root  # noqa: E402
from tests.lab.smtpd import RecordingSmarthost  # noqa: E402


def window_ms(journal: Path, received: Sequence[Received], ids: dict[str, str]) -> dict[str, Any]:
    """Milliseconds from the smarthost storing a message to its `accepted` in the journal
    (messages it stored once)."""
    with sqlite3.connect(journal) as db:
        accepted: dict[str, float] = {}
        for qid, at in db.execute(
            "SELECT queue_id, at FROM events WHERE state = 'accepted' ORDER BY id"
        ):
            accepted.setdefault(str(qid), float(at))
    stored: dict[str, list[float]] = {}
    for r in received:
        stored.setdefault(ids[r.rcpt_tos[0]], []).append(r.at)
    # A message stored twice was sent again after a kill: its `accepted` is the second's.
    gaps = sorted(
        (accepted[q] - ats[0]) * 1000
        for q, ats in stored.items()
        if q in accepted and len(ats) == 1
    )
    if not gaps:
        return {"messages": 0}
    return {
        "messages": len(gaps),
        "median": round(statistics.median(gaps), 2),
        "p90": round(gaps[int(len(gaps) * 0.9)], 2),
        "p99": round(gaps[int(len(gaps) * 0.99)], 2),
        "max": round(gaps[-1], 2),
    }


def causes(report: KillReport, received: Sequence[Received], ids: dict[str, str]) -> dict[str, Any]:
    """Why each message sent twice was: the smarthost stored it the first time after the
    nearest kill (the final dot had left, its answer never came back: SMTP's own window,
    as long as the smarthost takes to answer the dot), or before it (its 250 was on the
    way, not yet journaled: queue-rescue's window). Milliseconds from the kill."""
    first: dict[str, float] = {}
    for r in received:
        first.setdefault(ids[r.rcpt_tos[0]], r.at)
    after_kill, before_kill = [], []
    for qid in report.duplicates:
        if not report.kill_times:
            continue
        nearest = min(report.kill_times, key=lambda k: abs(k - first[qid]))
        gap = round((first[qid] - nearest) * 1000, 2)
        (after_kill if gap >= 0 else before_kill).append(abs(gap))
    return {
        "stored_after_the_kill": len(after_kill),
        "stored_after_the_kill_ms": sorted(after_kill),
        "stored_before_the_kill": len(before_kill),
        "stored_before_the_kill_ms": sorted(before_kill),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    root = new_lab_root("kill-bench-")
    try:
        world = build_world(root)
        try:
            with RecordingSmarthost(reply_delay=args.reply_delay) as slow:
                ids = submit_backlog(world.lab, args.messages)
                rescue = world.rescue(
                    "kill-bench",
                    smarthosts=[
                        smarthost_entry(
                            "relay1", slow.port, max_connections=args.sessions, timeout="30s"
                        )
                    ],
                )
                report = kill_runs(
                    world.lab,
                    slow,
                    rescue,
                    ids,
                    kills=args.kills,
                    rng=random.Random(args.seed),
                    progress=not args.json,
                )
                window = window_ms(rescue.journal_path, slow.received, ids)
                why = causes(report, slow.received, ids)
        finally:
            world.stop()
    finally:
        remove_lab_root(root)
    return {
        **report.as_dict(),
        "unannounced": report.unannounced,
        "duplicate_ids": report.duplicates,
        "window_ms": window,
        "duplicates_by_cause": why,
        "settings": {
            "sessions": args.sessions,
            "reply_delay_s": args.reply_delay,
            "seed": args.seed,
        },
        "loadavg": os.getloadavg(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.kill_bench",
        description="SIGKILL flushes at random moments against a slow smarthost; count what "
        "was lost, left on hold or sent twice (run as root from the repo root).",
    )
    parser.add_argument("--messages", "-n", type=int, default=606)
    parser.add_argument("--kills", type=int, default=45)
    parser.add_argument("--sessions", type=int, default=4, help="max_connections")
    parser.add_argument("--reply-delay", type=float, default=0.03, help="seconds per reply")
    parser.add_argument("--seed", type=int, default=1, help="of the random kill moments")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--output", type=Path, help="also write the JSON object to FILE")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("kill_bench: run as root (a private Postfix needs it)", file=sys.stderr)
        return 2
    result = run(args)
    text = json.dumps(result, indent=2)
    if args.output is not None:
        args.output.write_text(text + "\n")
    if args.json:
        print(text)
    else:
        print(
            f"{result['kills']} kills, {result['messages']} messages, "
            f"{args.sessions} sessions, {args.reply_delay * 1000:g} ms per reply: "
            f"{result['lost']} lost, {result['left_on_hold']} left on hold, "
            f"{result['orphans']} helper processes outlived a killed flush, "
            f"{result['duplicates']} sent twice ({result['duplicates_per_100_kills']} per 100 "
            f"kills), {result['unannounced_duplicates']} of them not named as maybe sent twice; "
            f"window (ms) {result['window_ms']}; by cause {result['duplicates_by_cause']}; "
            f"{result['seconds']} s"
        )
    bad = (
        result["lost"]
        or result["left_on_hold"]
        or result["unannounced_duplicates"]
        or result["orphans"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
