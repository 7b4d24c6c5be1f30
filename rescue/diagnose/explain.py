"""Tie findings to stuck mail (pure): which finding explains which provider's reply."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rescue.diagnose.result import IDENTITY_CHECKS, Result
from rescue.diagnose.stuck import StuckGroup


@dataclass(frozen=True, slots=True)
class Explanation:
    group: StuckGroup
    findings: tuple[Result, ...]  # the findings the catalog says can cause the reply


def explains(result: Result, group: StuckGroup) -> bool:
    """A finding explains a reply when the catalog names its check for the reply, and it
    is about the mail's sender domain or about the outbound identity all mail shares."""
    if not result.finding or result.check not in group.checks:
        return False
    if result.check in IDENTITY_CHECKS:
        return True
    return any(result.subject == domain for domain, _ in group.sender_domains)


def explain(groups: Sequence[StuckGroup], results: Sequence[Result]) -> list[Explanation]:
    """Each stuck group with the findings that explain it, the most severe first."""
    out = []
    for group in groups:
        found = sorted((r for r in results if explains(r, group)), key=lambda r: r.rank)
        out.append(Explanation(group, tuple(found)))
    return out
