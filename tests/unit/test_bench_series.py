"""The benchmark's verdicts: each target, and the median of several runs (bench/)."""

from __future__ import annotations

from typing import Any

from bench.series import summarize
from bench.targets import meets


def test_each_target_and_its_edge() -> None:
    assert meets("flush_vs_postfix_reroute", 3.0, 2000)
    assert not meets("flush_vs_postfix_reroute", 2.99, 2000)
    assert meets("flush_peak_rss", 149.9, 2000) and not meets("flush_peak_rss", 150.0, 2000)
    # scan: strictly faster than qshape at 2,000; 1.5x from 10,000 on.
    assert not meets("scan_vs_qshape", 1.0, 2000) and meets("scan_vs_qshape", 1.01, 2000)
    assert not meets("scan_vs_qshape", 1.4, 10000) and meets("scan_vs_qshape", 1.5, 10000)
    assert meets("relay_vs_direct", 0.8, 2000) and not meets("relay_vs_direct", 0.79, 2000)


def report(messages: int, flush: float, reroute: float) -> dict[str, Any]:
    return {
        "backlog": {"messages": messages},
        "tool": {"commit": "abc1234"},
        "machine": {"loadavg_start": [0.5, 0.4, 0.3]},
        "flush": {"seconds": flush, "messages_per_second": messages / flush, "peak_rss_mb": 50},
        "postfix_reroute": {"seconds": reroute, "messages_per_second": messages / reroute},
    }


def test_the_median_of_the_runs_decides() -> None:
    # Two of five runs below 3x: the median (3.1x) meets the target.
    runs = [report(2000, 1.0, r) for r in (2.9, 3.1, 3.2, 2.8, 3.3)]
    lines = summarize(runs)
    row = next(line for line in lines if line.startswith("| flush: queue-rescue"))
    assert row.endswith("| 3.10x | >= 3x: yes |")
    assert "2.90x | 3.10x | 3.20x | 2.80x | 3.30x" in row
    slow = summarize([report(2000, 1.0, r) for r in (2.9, 2.8, 3.2)])
    assert next(line for line in slow if "reroute messages/s" in line).endswith("NO |")
