"""Several benchmark runs in a row, and issue 20's targets over them (the median of each).

Run from the repository root, as root:

    .venv/bin/python -m bench.series --runs 5 --messages 2000 --messages 10000 --out DIR

runs `bench.flush_bench` `--runs` times for each size, one after the other, writing each
run's JSON report to DIR, then prints one table: for each size and target, every run's
ratio, their median, and whether the median meets the target. `--show DIR` prints the
table of the reports already in DIR. Other arguments after `--` go to every run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.targets import meets, targets  # noqa: E402

# The figures shown beside the targets: (label, path in the report, format).
FIGURES = (
    ("flush", ("flush", "seconds"), "{:.3f} s"),
    ("Postfix reroute", ("postfix_reroute", "seconds"), "{:.3f} s"),
    ("scan", ("scan", "scan", "seconds"), "{:.3f} s"),
    ("qshape", ("scan", "qshape", "seconds"), "{:.3f} s"),
    ("through the relay", ("relay", "through_relay", "messages_per_second"), "{:,.0f} msg/s"),
    ("direct", ("relay", "direct", "messages_per_second"), "{:,.0f} msg/s"),
    ("load average at start", ("machine", "loadavg_start", 0), "{:.1f}"),
)


def figure(report: dict[str, Any], path: Sequence[str | int]) -> float | None:
    value: Any = report
    for step in path:
        try:
            value = value[step]
        except (KeyError, IndexError, TypeError):
            return None
    return float(value) if isinstance(value, int | float) else None


def summarize(reports: list[dict[str, Any]]) -> list[str]:
    """Markdown lines: per size, each target's ratio in every run, the median, the verdict."""
    lines = []
    sizes = sorted({r["backlog"]["messages"] for r in reports})
    for size in sizes:
        runs = [r for r in reports if r["backlog"]["messages"] == size]
        commits = sorted({r["tool"].get("commit", "?") for r in runs})
        lines += [
            f"{size:,} messages, {len(runs)} runs, commit {', '.join(commits)}",
            "",
            "| | " + " | ".join(f"run {i + 1}" for i in range(len(runs))) + " | median | target |",
            "|---|" + "---|" * len(runs) + "---|---|",
        ]
        by_key: dict[str, list[Any]] = {}
        for report in runs:
            for target in targets(report):
                by_key.setdefault(target.key, []).append(target)
        for key, measured in by_key.items():
            values = [t.value for t in measured if t.value is not None]
            if not values:
                continue
            median = statistics.median(values)
            goal = measured[0].goal
            met = meets(key, median, size)
            cells = " | ".join(t.shown for t in measured)
            shown = _shown(measured[0].shown, median)
            lines.append(
                f"| {measured[0].label} | {cells} | {shown} | {goal}: {'yes' if met else 'NO'} |"
            )
        for label, path, form in FIGURES:
            values = [figure(r, path) for r in runs]
            known = [v for v in values if v is not None]
            if not known:
                continue
            cells = " | ".join("-" if v is None else form.format(v) for v in values)
            lines.append(f"| {label} | {cells} | {form.format(statistics.median(known))} | |")
        lines.append("")
    return lines


def _shown(example: str, value: float) -> str:
    if example.endswith("%"):
        return f"{value:.0%}"
    if example.endswith(" MB"):
        return f"{value:.1f} MB"
    return f"{value:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.series",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--messages", type=int, action="append", help="repeatable")
    parser.add_argument("--out", type=Path, help="folder for the runs' JSON reports")
    parser.add_argument("--show", type=Path, help="summarize the reports in this folder")
    parser.add_argument("rest", nargs="*", help="after --: options for every run")
    args = parser.parse_args(argv)
    if args.show is not None:
        reports = [json.loads(p.read_text()) for p in sorted(args.show.glob("*.json"))]
        print("\n".join(summarize(reports)))
        return 0
    if args.out is None:
        parser.error("--out DIR is needed to run (or --show DIR)")
    args.out.mkdir(parents=True, exist_ok=True)
    for size in args.messages or [2000]:
        for run in range(1, args.runs + 1):
            output = args.out / f"{size:05d}-{run}.json"
            print(f"series: {size} messages, run {run} of {args.runs}", file=sys.stderr)
            command = [sys.executable, "-m", "bench.flush_bench", "--messages", str(size)]
            done = subprocess.run(
                [*command, "--output", str(output), *args.rest],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                check=False,
            )
            if done.returncode != 0:
                print(f"series: run failed (exit {done.returncode})", file=sys.stderr)
                return 1
    reports = [json.loads(p.read_text()) for p in sorted(args.out.glob("*.json"))]
    print("\n".join(summarize(reports)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
