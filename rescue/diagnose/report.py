"""What `diagnose` prints: the stuck mail and what explains it, then each subject's results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from rescue.classify.shape import UNKNOWN
from rescue.diagnose.explain import Explanation, explains
from rescue.diagnose.result import CHECKS, Result, Status, summary
from rescue.diagnose.stuck import StuckGroup

STYLES = {
    Status.OK: "green",
    Status.WARN: "yellow",
    Status.FAIL: "bold red",
    Status.ERROR: "magenta",
}
LABELS = {Status.OK: "ok", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.ERROR: "ERROR"}


def _mails(n: int) -> str:
    return f"{n} mail{'s' if n != 1 else ''}"


def headline(group: StuckGroup) -> str:
    """ "ionos: 70 mails, `421 invalid sender domain, possibly misconfigured`"."""
    name = group.label if group.provider == UNKNOWN else group.provider
    return f"{name}: {_mails(group.mails)}, `{group.reason}`"


def explanation_lines(item: Explanation) -> list[str]:
    """The stuck group and each finding that explains it with its fix."""
    lines = [headline(item.group)]
    senders = ", ".join(f"{d} ({_mails(n)})" for d, n in item.group.sender_domains)
    if senders:
        lines.append(f"  from {senders}")
    for finding in item.findings:
        lines.append(f"  explained by {finding.check} on {finding.subject}: {finding.detail}")
        if finding.fix:
            lines.append(f"    fix: {finding.fix}")
    if not item.findings:
        checks = ", ".join(item.group.checks)
        if checks:
            lines.append(f"  no finding of {checks} explains it")
        else:
            lines.append("  no check of diagnose can explain this reply")
        if item.group.known is not None and item.group.known.fix:
            lines.append(f"    the catalog's advice: {item.group.known.fix}")
    return lines


def ordered(results: Sequence[Result]) -> list[tuple[str, list[Result]]]:
    """Results grouped by subject: subjects with findings first, findings first in each."""
    subjects: dict[str, list[Result]] = {}
    for result in results:
        subjects.setdefault(result.subject, []).append(result)
    groups = [
        (subject, sorted(found, key=lambda r: (r.rank, CHECKS.index(r.check))))
        for subject, found in subjects.items()
    ]
    return sorted(groups, key=lambda g: min(r.rank for r in g[1]))


def show_text(
    out: Console,
    results: Sequence[Result],
    explanations: Sequence[Explanation],
    notes: Sequence[str],
) -> None:
    for note in notes:
        out.print(Text(f"note: {note}", style="dim"))
    if explanations:
        out.print(Text("Why mail is stuck", style="bold"))
        for item in explanations:
            for line in explanation_lines(item):
                out.print(Text("  " + line))
        out.print()
    for subject, found in ordered(results):
        out.print(Text(subject, style="bold"))
        for result in found:
            row = Text("  ")
            row.append(f"{LABELS[result.status]:<5}", style=STYLES[result.status])
            row.append(f" {result.check:<13} {result.detail}")
            out.print(row)
            if result.fix and result.finding:
                out.print(Text(f"        fix: {result.fix}"))
    counts = summary(results)
    out.print(Text(", ".join(f"{n} {status}" for status, n in counts.items()), style="bold"))


def result_json(result: Result, explanations: Sequence[Explanation]) -> dict[str, Any]:
    return {
        "check": result.check,
        "subject": result.subject,
        "status": result.status.value,
        "detail": result.detail,
        "fix": result.fix,
        "explains": [
            {"provider": e.group.provider, "reason": e.group.reason, "mails": e.group.mails}
            for e in explanations
            if explains(result, e.group)
        ],
    }


def show_json(
    stream: TextIO, results: Sequence[Result], explanations: Sequence[Explanation]
) -> None:
    """One JSON object per result, then {"summary": {...}}."""
    for result in results:
        stream.write(json.dumps(result_json(result, explanations), ensure_ascii=False) + "\n")
    stream.write(json.dumps({"summary": summary(results)}) + "\n")
    stream.flush()
