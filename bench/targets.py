"""Issue 20's targets, each measured ratio against its target (pure: from a report's figures).

- flush: at least 3x Postfix's own reroute (messages/s), at 2,000 and 10,000 messages;
- flush peak RSS under 150 MB;
- scan: faster than qshape at 2,000 messages, at least 1.5x faster at 10,000 (and above);
- the routing relay: Postfix through it at least 80% of Postfix delivering directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FLUSH_VS_REROUTE = 3.0
FLUSH_PEAK_RSS_MB = 150.0
# qshape time / scan time: above 1 at any size, at least 1.5 from this many messages on.
SCAN_VS_QSHAPE = 1.0
SCAN_VS_QSHAPE_LARGE = 1.5
SCAN_LARGE_QUEUE = 10_000
RELAY_VS_DIRECT = 0.8


@dataclass(frozen=True)
class Target:
    key: str  # stable name, for the JSON report
    label: str  # what is compared
    value: float | None  # the measured ratio (None: not measured)
    shown: str  # the value as printed, e.g. "1.85x"
    goal: str  # the target as printed, e.g. ">= 3x"
    met: bool | None  # None: not measured

    def line(self) -> str:
        verdict = "not measured" if self.met is None else "yes" if self.met else "NO"
        return f"{self.label} = {self.shown}   (target {self.goal}: {verdict})"

    def as_json(self) -> dict[str, Any]:
        return {"ratio": self.value, "target": self.goal, "met": self.met}


def meets(key: str, value: float, messages: int) -> bool:
    """Whether this ratio (or figure) meets its target, for a backlog of this size."""
    if key == "flush_vs_postfix_reroute":
        return value >= FLUSH_VS_REROUTE
    if key == "flush_peak_rss":
        return value < FLUSH_PEAK_RSS_MB
    if key == "scan_vs_qshape":
        goal = scan_goal(messages)
        return value > goal if goal == SCAN_VS_QSHAPE else value >= goal
    if key == "relay_vs_direct":
        return value >= RELAY_VS_DIRECT
    raise ValueError(f"no target {key!r}")


def scan_goal(messages: int) -> float:
    """qshape time / scan time that a queue of this size must reach (strictly above 1.0)."""
    return SCAN_VS_QSHAPE_LARGE if messages >= SCAN_LARGE_QUEUE else SCAN_VS_QSHAPE


def targets(report: dict[str, Any]) -> list[Target]:
    """Every target, each as not measured when the report has no figures for it."""
    out: list[Target] = []
    flush, reroute, scan = report.get("flush"), report.get("postfix_reroute"), report.get("scan")
    if flush and reroute and reroute["messages_per_second"]:
        ratio = flush["messages_per_second"] / reroute["messages_per_second"]
        out.append(
            Target(
                "flush_vs_postfix_reroute",
                "flush: queue-rescue / Postfix reroute messages/s",
                round(ratio, 2),
                f"{ratio:.2f}x",
                f">= {FLUSH_VS_REROUTE:g}x",
                meets("flush_vs_postfix_reroute", ratio, 0),
            )
        )
    if flush:
        rss = flush["peak_rss_mb"]
        out.append(
            Target(
                "flush_peak_rss",
                "flush peak RSS",
                rss,
                f"{rss:.1f} MB",
                f"< {FLUSH_PEAK_RSS_MB:g} MB",
                meets("flush_peak_rss", rss, 0),
            )
        )
    if scan and scan["scan"]["seconds"]:
        messages = report["backlog"]["messages"]
        ratio = scan["qshape"]["seconds"] / scan["scan"]["seconds"]
        goal = scan_goal(messages)
        out.append(
            Target(
                "scan_vs_qshape",
                "scan: qshape time / scan time",
                round(ratio, 2),
                f"{ratio:.2f}x",
                f"> {goal:g}x" if goal == SCAN_VS_QSHAPE else f">= {goal:g}x",
                meets("scan_vs_qshape", ratio, messages),
            )
        )
    relay = report.get("relay")
    if relay:
        share = relay["share_of_direct"]
        out.append(
            Target(
                "relay_vs_direct",
                "relay: Postfix through queue-rescue's relay / directly, messages/s",
                share,
                f"{share:.0%}",
                f">= {RELAY_VS_DIRECT:.0%}",
                meets("relay_vs_direct", share, 0),
            )
        )
    else:
        out.append(
            Target(
                "relay_vs_direct",
                "relay: Postfix through queue-rescue's relay / directly, messages/s",
                None,
                "-",
                f">= {RELAY_VS_DIRECT:.0%}",
                None,
            )
        )
    return out
